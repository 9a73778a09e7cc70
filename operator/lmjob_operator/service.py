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


def build_service(job: LargeModelJob) -> dict[str, Any]:
    """Headless, and publishing not-ready pods: workers must resolve each other while starting."""
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(job, service_name(name), ROLE_WORKER),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: name, ROLE_LABEL: ROLE_WORKER},
            "ports": [
                {"name": "metrics", "port": job.spec.metrics.port, "protocol": "TCP"},
            ],
        },
    }
