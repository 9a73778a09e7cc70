"""The rendezvous store of a job: its own small pod and headless Service.

torchrun's c10d rendezvous needs a TCPStore. Hosting it in worker 0 (torchrun's default)
makes worker 0 a single point of failure; a store of its own (`is_host=false` on every
agent) lets any single worker, worker 0 included, die and the rest re-rendezvous.

Its securityContext is the workers' (security.py): restricted by default, with the
template's pod-level securityContext winning key by key, so a job whose workers are admitted
in a `restricted` namespace has its store admitted too.
"""

from __future__ import annotations

from typing import Any

from lmjob_api import LargeModelJob
from lmjob_operator.config import OperatorConfig
from lmjob_operator.naming import (
    RENDEZVOUS_PORT,
    ROLE_RENDEZVOUS,
    owned_metadata,
    rendezvous_name,
)
from lmjob_operator.security import build_container_security, build_pod_security
from lmjob_operator.service import headless_service

# Placement fields of the user's pod template the store pod shares, so it can run
# wherever the workers may (tainted pools, private registries, required node pools).
_SHARED_PLACEMENT = ("tolerations", "nodeSelector", "imagePullSecrets", "affinity")


def build_rendezvous_pod(job: LargeModelJob, config: OperatorConfig) -> dict[str, Any]:
    """A one-container pod running `python -m lmjob_trainer.rendezvous_store`.

    restartPolicy Never: a store that dies loses the rendezvous state, so the operator
    must see it and restart the worker group with a fresh rendezvous (failures.py).
    """
    name = rendezvous_name(job.metadata.name)
    template_spec = job.spec.workers.template.spec
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": build_pod_security(template_spec.get("securityContext")),
        "containers": [
            {
                "name": "rendezvous",
                "image": config.rendezvous_store_image,
                "command": [
                    "python",
                    "-m",
                    "lmjob_trainer.rendezvous_store",
                    "--port",
                    str(RENDEZVOUS_PORT),
                ],
                "ports": [
                    {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
                ],
                # Importing torch is most of its footprint; the store itself is tiny.
                "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
                "securityContext": build_container_security(None),
            }
        ],
    }
    for key in _SHARED_PLACEMENT:
        if key in template_spec:
            spec[key] = template_spec[key]
    if job.spec.scheduling.priority_class_name:
        spec["priorityClassName"] = job.spec.scheduling.priority_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": owned_metadata(job, name, ROLE_RENDEZVOUS),
        "spec": spec,
    }


def build_rendezvous_service(job: LargeModelJob) -> dict[str, Any]:
    """The store's stable name: `<job>-rendezvous:<port>` is every worker's endpoint."""
    return headless_service(
        job, rendezvous_name(job.metadata.name), ROLE_RENDEZVOUS, {"rendezvous": RENDEZVOUS_PORT}
    )
