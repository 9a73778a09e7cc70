"""Gang scheduling and queueing: the job's PodGroup and the labels that tie worker pods to it.

Two PodGroup flavours, chosen by `spec.scheduling.schedulerName`:
- `volcano` → `scheduling.volcano.sh/v1beta1` PodGroup (pods annotated
  `scheduling.k8s.io/group-name`; `spec.scheduling.queue` becomes the Volcano queue);
- anything else → scheduler-plugins coscheduling, `scheduling.x-k8s.io/v1alpha1` PodGroup
  (pods labelled `scheduling.x-k8s.io/pod-group`).
`minMember` is `workers.minReplicas`: the smallest gang the job can train with.

Without Volcano, `spec.scheduling.queue` names a Kueue LocalQueue: the job waits as a Kueue
Workload the operator owns (kueue_sync.py, docs/kueue.md), so worker pods carry no Kueue
labels (Kueue's pod integration would queue them a second time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lmjob_api import LargeModelJob
from lmjob_operator.naming import ROLE_WORKER, owned_metadata

Flavour = Literal["volcano", "scheduler-plugins"]

COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"


@dataclass(frozen=True)
class PodGroupApi:
    """Where a flavour's PodGroup lives in the API."""

    group: str
    version: str
    plural: str = "podgroups"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


POD_GROUP_APIS: dict[Flavour, PodGroupApi] = {
    "volcano": PodGroupApi("scheduling.volcano.sh", "v1beta1"),
    "scheduler-plugins": PodGroupApi("scheduling.x-k8s.io", "v1alpha1"),
}


def gang_flavour(job: LargeModelJob) -> Flavour | None:
    """The PodGroup flavour of a gang-scheduled job, None without gang scheduling."""
    if not job.spec.scheduling.gang:
        return None
    return "volcano" if job.spec.scheduling.scheduler_name == "volcano" else "scheduler-plugins"


def pod_group_name(job_name: str) -> str:
    return job_name


def build_pod_group(job: LargeModelJob, flavour: Flavour) -> dict[str, Any]:
    """The job's PodGroup in the given flavour."""
    min_replicas, _ = job.spec.workers.bounds
    api = POD_GROUP_APIS[flavour]
    spec: dict[str, Any] = {"minMember": min_replicas}
    if flavour == "volcano":
        if job.spec.scheduling.queue:
            spec["queue"] = job.spec.scheduling.queue
        if job.spec.scheduling.priority_class_name:
            spec["priorityClassName"] = job.spec.scheduling.priority_class_name
    else:
        # Coscheduling's default permit wait is short for pods pulling multi-GB images.
        spec["scheduleTimeoutSeconds"] = 600
    return {
        "apiVersion": api.api_version,
        "kind": "PodGroup",
        "metadata": owned_metadata(job, pod_group_name(job.metadata.name), ROLE_WORKER),
        "spec": spec,
    }


def build_scheduling_metadata(job: LargeModelJob) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that put a worker pod into its gang."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    name = job.metadata.name
    flavour = gang_flavour(job)
    if flavour == "volcano":
        annotations[VOLCANO_GROUP_ANNOTATION] = pod_group_name(name)
    elif flavour == "scheduler-plugins":
        labels[COSCHEDULING_LABEL] = pod_group_name(name)
    return labels, annotations
