"""Names, labels and annotations of the objects a LargeModelJob owns, written down once.

Every name is derived from the job's name, so each object has exactly one possible name:
re-running a reconcile after a crash finds what it made before instead of duplicating it.
"""

from __future__ import annotations

from typing import Any

from lmjob_api import API_VERSION, KIND, LargeModelJob
from lmjob_api.kept_logs import ATTEMPT_LABEL

# The one field manager of every write the operator makes (create, apply, patch).
FIELD_MANAGER = "lmjob-operator"

JOB_LABEL = "lmjob.dev/job-name"
INDEX_LABEL = "lmjob.dev/worker-index"
ROLE_LABEL = "lmjob.dev/role"
ROLE_WORKER = "worker"
ROLE_RENDEZVOUS = "rendezvous"
# A sweep's trial jobs: the sweep's name and the trial's number (lmjob_operator.sweep_trials).
SWEEP_LABEL = "lmjob.dev/sweep"
TRIAL_LABEL = "lmjob.dev/trial"
# The rendezvous round a worker pod joins (its PET_RDZV_ID is `<job uid>-<round>`); also the
# attempt its kept log is filed under (lmjob_api.kept_logs).
ROUND_LABEL = ATTEMPT_LABEL
# The elastic bounds `min-max` a worker's torchrun was started with (PET_NNODES): agents of
# one rendezvous must agree on them, so a pod with other bounds is replaced.
BOUNDS_LABEL = "lmjob.dev/elastic-bounds"

# Where the trainer config is mounted in every worker (LMJOB_CONFIG points into it).
CONFIG_DIR = "/etc/lmjob"
# Port of the rendezvous store (the c10d TCPStore) inside its pod.
RENDEZVOUS_PORT = 29400


def bounds_value(low: int, high: int) -> str:
    return f"{low}-{high}"


def worker_name(job_name: str, index: int) -> str:
    return f"{job_name}-worker-{index}"


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def service_name(job_name: str) -> str:
    """The headless Service giving each worker `<job>-worker-<i>.<job>.<ns>.svc`."""
    return job_name


def rendezvous_name(job_name: str) -> str:
    """The rendezvous store's pod and its (headless) Service share this name."""
    return f"{job_name}-rendezvous"


def rendezvous_endpoint(job_name: str, namespace: str) -> str:
    return f"{rendezvous_name(job_name)}.{namespace}.svc:{RENDEZVOUS_PORT}"


def job_uid(job: LargeModelJob) -> str:
    """The job's uid (kept by ObjectMeta among its extra fields)."""
    return str((job.metadata.model_extra or {}).get("uid", ""))


def job_namespace(job: LargeModelJob) -> str:
    return job.metadata.namespace or "default"


def base_labels(job_name: str, role: str) -> dict[str, str]:
    return {JOB_LABEL: job_name, ROLE_LABEL: role}


def worker_selector(job_name: str) -> str:
    """Label selector of a job's worker pods (status.workers.selector, for the scale subresource)."""
    return f"{JOB_LABEL}={job_name},{ROLE_LABEL}={ROLE_WORKER}"


def owner_reference(job: LargeModelJob) -> dict[str, Any]:
    """Owner reference to the job: deleting the job garbage-collects the object."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job_uid(job),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_metadata(job: LargeModelJob, name: str, role: str) -> dict[str, Any]:
    """metadata of an object the job owns: name, namespace, labels, owner reference."""
    return {
        "name": name,
        "namespace": job_namespace(job),
        "labels": base_labels(job.metadata.name, role),
        "ownerReferences": [owner_reference(job)],
    }
