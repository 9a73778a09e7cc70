"""The headless Service `<job>`: stable DNS `<job>-worker-<i>.<job>.<ns>.svc` for every worker."""

from __future__ import annotations

from typing import Any

from lmjob_api import LargeModelJob
from lmjob_operator.naming import (
    JOB_LABEL,
    ROLE_LABEL,
    ROLE_WORKER,
    owned_metadata,
    service_name,
)


def headless_service(
    job: LargeModelJob, name: str, role: str, ports: dict[str, int]
) -> dict[str, Any]:
    """A headless Service over the job's pods of `role`: names resolve to pod IPs without
    kube-proxy, and not-ready pods are published, because peers must find each other while
    they are still starting."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(job, name, role),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job.metadata.name, ROLE_LABEL: role},
            "ports": [
                {"name": port_name, "port": port, "protocol": "TCP"}
                for port_name, port in ports.items()
            ],
        },
    }


def build_service(job: LargeModelJob) -> dict[str, Any]:
    return headless_service(
        job, service_name(job.metadata.name), ROLE_WORKER, {"metrics": job.spec.metrics.port}
    )
