"""Worker pods `<job>-worker-<i>`: torchrun under lmjob's launcher, the env contract,
volumes, a restricted securityContext, and the user's template.

The env contract is api/lmjob_api/env.py; what each variable means is written there.
The command is `python -m lmjob_trainer.launch -- <torchrun args>`: the launcher
(trainer/lmjob_trainer/launch.py) checks the trainer config before torch is imported and
turns a configuration error of any worker into the container's exit code 78
(lmjob_api.exit_codes.CONFIG_ERROR), which neither torchrun nor the operator retries.
How the user's `workers.template` merges into the generated pod:
- metadata: the template's labels and annotations are kept; lmjob's own keys win.
- spec: the template's fields are kept (tolerations, nodeSelector, affinity,
  serviceAccountName, initContainers, extra volumes and sidecar containers ...), except the
  fields lmjob owns: restartPolicy (always Never: torchrun restarts processes, the operator
  restarts pods), hostname and subdomain, and schedulerName/priorityClassName when
  spec.scheduling sets them.
- securityContext (security.py): restricted by default, so the pod is admitted under the
  `restricted` Pod Security Standard — pod: runAsNonRoot, seccompProfile RuntimeDefault;
  every container (worker, sidecars, initContainers): allowPrivilegeEscalation false,
  capabilities drop ALL. The template's pod securityContext and each template container's
  securityContext win key by key over these defaults.
- the template's worker container (its only container, or the one named `worker` when it has
  several: lmjob_api.pod_template) merges into the generated container, named `worker`: its env,
  envFrom, volumeMounts and ports are appended to lmjob's, its resources are the base that
  workers.resources overrides key by key, its securityContext overrides the defaults key by
  key, and its other fields (probes, imagePullPolicy, ...) are kept. image, command and args
  are lmjob's (spec.image, spec.command).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from lmjob_api import LargeModelJob, termination
from lmjob_api.env import CONFIG_ERROR_FILE_ENV, NODE_NAME_ENV, POD_NAME_ENV
from lmjob_api.trainer_config import CONFIG_FILE_NAME
from lmjob_operator.config import OperatorConfig
from lmjob_operator.config_map import needs_config_map
from lmjob_operator.naming import (
    BOUNDS_LABEL,
    CONFIG_DIR,
    INDEX_LABEL,
    ROLE_WORKER,
    ROUND_LABEL,
    bounds_value,
    config_map_name,
    job_namespace,
    job_uid,
    owned_metadata,
    rendezvous_endpoint,
    service_name,
    worker_name,
)
from lmjob_operator.pod_group import Flavour, build_scheduling_group, build_scheduling_metadata
from lmjob_operator.security import (
    build_container_security,
    build_pod_security,
    build_secured_container,
)

WORKER_CONTAINER = "worker"
# Volumes lmjob adds to every worker; template volumes may not reuse these names.
CONFIG_VOLUME = "lmjob-config"
STORAGE_VOLUME = "lmjob-storage"
SHM_VOLUME = "lmjob-dshm"
RESERVED_VOLUMES = (CONFIG_VOLUME, STORAGE_VOLUME, SHM_VOLUME)

# torchrun's local (in-pod) restarts before its agent gives up and the pod fails.
# A lost peer and every scale-down make each surviving agent restart its processes
# once (a collective fails), so this budget absorbs membership churn; failures of the
# pods themselves are bounded by runPolicy.backoffLimit (failures.py).
TORCHRUN_MAX_RESTARTS = 10

# The launcher runs `python -m torch.distributed.run <args after -->`: `-m lmjob_trainer`
# runs the built-in trainer as a module; `--no-python` runs the user's command as given (it
# may start with `python` or not).
LAUNCHER = ("python", "-m", "lmjob_trainer.launch", "--")
# Where workers leave the configuration-error marker the launcher watches for: the pod's
# memory-backed /dev/shm volume, writable whatever the root filesystem is.
CONFIG_ERROR_FILE = "/dev/shm/lmjob-config-error"


def procs_per_worker(job: LargeModelJob) -> int:
    """torchrun --nproc-per-node: the API's one rule (WorkersSpec.num_procs), which the
    tensor-parallel admission rule checks against too."""
    return job.spec.workers.num_procs


def build_worker_command(job: LargeModelJob) -> list[str]:
    """The launcher, then torchrun's arguments: the built-in trainer or spec.command."""
    if job.spec.command:
        return [*LAUNCHER, "--no-python", *job.spec.command]
    return [*LAUNCHER, "-m", "lmjob_trainer"]


def build_worker_env(
    job: LargeModelJob, rendezvous_round: int, termination_path: str = termination.DEFAULT_PATH
) -> list[dict[str, Any]]:
    """The env contract (lmjob_api.env.WORKER_ENV), then the user's workers.env."""
    name, namespace = job.metadata.name, job_namespace(job)
    low, high = job.spec.workers.bounds
    env = {
        "PET_NNODES": f"{low}:{high}",
        "PET_NPROC_PER_NODE": str(procs_per_worker(job)),
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": rendezvous_endpoint(name, namespace),
        "PET_RDZV_ID": f"{job_uid(job)}-{rendezvous_round}",
        "PET_RDZV_CONF": "is_host=false,read_timeout=300",
        "PET_MAX_RESTARTS": str(TORCHRUN_MAX_RESTARTS),
        # Restarted workers otherwise may read a dead peer's store address and hang
        # (pytorch/pytorch#135712); `lmjob run` sets the same.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    if needs_config_map(job):
        env["LMJOB_CONFIG"] = f"{CONFIG_DIR}/{CONFIG_FILE_NAME}"
    env |= {
        "LMJOB_CHECKPOINT_DIR": job.spec.storage.path,
        "LMJOB_JOB_NAME": name,
        "LMJOB_NAMESPACE": namespace,
        "LMJOB_METRICS_PORT": str(job.spec.metrics.port),
        termination.PATH_ENV: termination_path,
        CONFIG_ERROR_FILE_ENV: CONFIG_ERROR_FILE,
    }
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    out += [
        {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for var, path in ((POD_NAME_ENV, "metadata.name"), (NODE_NAME_ENV, "spec.nodeName"))
    ]
    out += [{"name": e.name, "value": e.value} for e in job.spec.workers.env]
    return out


def _resources(job: LargeModelJob, template: dict[str, Any]) -> dict[str, Any]:
    res = job.spec.workers.resources
    merged: dict[str, Any] = {}
    for kind, ours in (("limits", res.limits), ("requests", res.requests)):
        values = {**(template.get(kind) or {}), **{k: str(v) for k, v in ours.items()}}
        if values:
            merged[kind] = values
    return merged


def _worker_container(
    job: LargeModelJob, config: OperatorConfig, rendezvous_round: int, template: dict[str, Any]
) -> dict[str, Any]:
    mounts = [
        {"name": STORAGE_VOLUME, "mountPath": job.spec.storage.path},
        {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
    ]
    if needs_config_map(job):
        mounts.insert(0, {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True})
    container = {k: copy.deepcopy(v) for k, v in template.items() if k != "name"}
    # The trainer writes its stages' final results there; the kubelet copies them into
    # the pod's status, where the operator reads them (lmjob_api.termination).
    termination_path = template.get("terminationMessagePath") or termination.DEFAULT_PATH
    container |= {
        "name": WORKER_CONTAINER,
        "image": job.spec.image or config.trainer_image,
        "command": build_worker_command(job),
        "terminationMessagePath": termination_path,
        # A worker that dies before writing one leaves its last log lines instead.
        "terminationMessagePolicy": template.get("terminationMessagePolicy")
        or "FallbackToLogsOnError",
        "env": build_worker_env(job, rendezvous_round, termination_path)
        + list(template.get("env") or []),
        "volumeMounts": mounts + list(template.get("volumeMounts") or []),
        "ports": [
            {"name": "metrics", "containerPort": job.spec.metrics.port, "protocol": "TCP"},
            *list(template.get("ports") or []),
        ],
    }
    container.pop("args", None)
    container["securityContext"] = build_container_security(template.get("securityContext"))
    resources = _resources(job, template.get("resources") or {})
    if resources:
        container["resources"] = resources
    else:
        container.pop("resources", None)
    return container


def _volumes(job: LargeModelJob) -> list[dict[str, Any]]:
    storage = job.spec.storage.volume or {"emptyDir": {}}
    volumes = [
        {"name": STORAGE_VOLUME, **copy.deepcopy(storage)},
        # NCCL and dataloader workers need far more shared memory than the 64 MiB default.
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
    ]
    if needs_config_map(job):
        volumes.insert(
            0, {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(job.metadata.name)}}
        )
    return volumes


def build_worker_pod(
    job: LargeModelJob,
    index: int,
    rendezvous_round: int,
    config: OperatorConfig,
    *,
    gang: Flavour | None = None,
    save_seconds: float | None = None,
) -> dict[str, Any]:
    """The pod of worker `index`, joining rendezvous round `rendezvous_round`; in the gang
    of flavour `gang` (pod_group.gang_flavour), with a grace period that fits a checkpoint
    save of `save_seconds` (the job's longest measured save, when known)."""
    name = job.metadata.name
    template = job.spec.workers.template
    template_spec = copy.deepcopy(template.spec)
    template_spec.pop("containers", None)
    # The rule of lmjob_api.pod_template: the only container, or the one named `worker`.
    ours = copy.deepcopy(template.worker_container())
    sidecars = copy.deepcopy(template.sidecars())

    meta = owned_metadata(job, worker_name(name, index), ROLE_WORKER)
    gang_labels, gang_annotations = build_scheduling_metadata(job, gang)
    meta["labels"] = {
        **template.metadata.labels,
        **gang_labels,
        **meta["labels"],
        INDEX_LABEL: str(index),
        ROUND_LABEL: str(rendezvous_round),
        BOUNDS_LABEL: bounds_value(*job.spec.workers.bounds),
    }
    annotations = {**template.metadata.annotations, **gang_annotations}
    if annotations:
        meta["annotations"] = annotations

    spec: dict[str, Any] = {
        # Without credentials: progress reaches status through the metrics endpoint.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        **template_spec,
        "restartPolicy": "Never",
        "hostname": worker_name(name, index),
        "subdomain": service_name(name),
        "securityContext": build_pod_security(template_spec.get("securityContext")),
        "containers": [
            _worker_container(job, config, rendezvous_round, ours),
            *(build_secured_container(c) for c in sidecars),
        ],
        "volumes": _volumes(job) + list(template_spec.get("volumes") or []),
    }
    if template_spec.get("initContainers"):
        spec["initContainers"] = [
            build_secured_container(c) for c in template_spec["initContainers"]
        ]
    scheduling_group = build_scheduling_group(job, gang)
    if scheduling_group is not None:
        spec["schedulingGroup"] = scheduling_group
    grace = grace_period_seconds(job, save_seconds)
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if job.spec.scheduling.scheduler_name:
        spec["schedulerName"] = job.spec.scheduling.scheduler_name
    if job.spec.scheduling.priority_class_name:
        spec["priorityClassName"] = job.spec.scheduling.priority_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


# Kubernetes' own default, the floor of a grace period lmjob derives.
DEFAULT_GRACE_SECONDS = 30
# A save under SIGTERM competes with the other workers' saves for the same storage: a margin
# over the measured one, plus a fixed part for torchrun's shutdown and the process exit.
GRACE_FACTOR = 1.5
GRACE_MARGIN_SECONDS = 10


def grace_period_seconds(job: LargeModelJob, save_seconds: float | None) -> int | None:
    """A worker pod's terminationGracePeriodSeconds: workers.terminationGracePeriodSeconds;
    else what the template sets (None: the template's value is kept as written); else
    enough for the job's measured save (`save_seconds`), at least Kubernetes' 30 s; None
    (Kubernetes' default) before any save was measured."""
    workers = job.spec.workers
    if workers.termination_grace_period_seconds is not None:
        return workers.termination_grace_period_seconds
    if "terminationGracePeriodSeconds" in workers.template.spec or save_seconds is None:
        return None
    needed = math.ceil(save_seconds * GRACE_FACTOR + GRACE_MARGIN_SECONDS)
    return max(DEFAULT_GRACE_SECONDS, needed)
