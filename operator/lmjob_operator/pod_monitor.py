"""A Prometheus Operator PodMonitor scraping every worker's trainer metrics."""

from __future__ import annotations

from typing import Any

from lmjob_api import LargeModelJob
from lmjob_operator.naming import JOB_LABEL, ROLE_LABEL, ROLE_WORKER, owned_metadata

POD_MONITOR_GROUP = "monitoring.coreos.com"
POD_MONITOR_VERSION = "v1"
POD_MONITOR_PLURAL = "podmonitors"


def build_pod_monitor(job: LargeModelJob) -> dict[str, Any]:
    """Selects the job's worker pods and scrapes their `metrics` port. honorLabels keeps the
    trainer's own `job` label (the LargeModelJob's name, which the dashboard and the alerts
    select by) instead of renaming it `exported_job` under the scrape job's name."""
    name = job.metadata.name
    return {
        "apiVersion": f"{POD_MONITOR_GROUP}/{POD_MONITOR_VERSION}",
        "kind": "PodMonitor",
        "metadata": owned_metadata(job, name, ROLE_WORKER),
        "spec": {
            "selector": {"matchLabels": {JOB_LABEL: name, ROLE_LABEL: ROLE_WORKER}},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "honorLabels": True}],
        },
    }
