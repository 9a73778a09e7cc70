"""Gang scheduling and queueing: the job's PodGroup and what ties worker pods to it.

Three PodGroup flavours (`spec.scheduling.gangApi`; by default Volcano when schedulerName is
volcano, else the first of Kubernetes' own and scheduler-plugins' the cluster serves):
- `kubernetes` → `scheduling.k8s.io/v1alpha2` PodGroup, Kubernetes 1.36+ with the
  `GenericWorkload` (API) and `GangScheduling` (kube-scheduler) feature gates: a standalone
  PodGroup with `schedulingPolicy.gang.minCount` (no Workload object: nothing reads one
  for a custom job kind), pods linked by `spec.schedulingGroup.podGroupName`;
- `volcano` → `scheduling.volcano.sh/v1beta1` PodGroup (pods annotated
  `scheduling.k8s.io/group-name`; `spec.scheduling.queue` becomes the Volcano queue);
- `scheduler-plugins` → coscheduling, `scheduling.x-k8s.io/v1alpha1` PodGroup
  (pods labelled `scheduling.x-k8s.io/pod-group`).
The gang's size (minCount / minMember) is `workers.minReplicas`: the smallest gang the job
can train with; pods beyond it (an elastic job above its minimum) join once it is placed.

Without Volcano, `spec.scheduling.queue` names a Kueue LocalQueue: the job waits as a Kueue
Workload the operator owns (kueue_sync.py, docs/kueue.md), so worker pods carry no Kueue
labels (Kueue's pod integration would queue them a second time).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Literal

from lmjob_api import LargeModelJob
from lmjob_operator.naming import ROLE_WORKER, owned_metadata

Flavour = Literal["kubernetes", "scheduler-plugins", "volcano"]
FLAVOUR_OF_API: dict[str, Flavour] = {
    "Kubernetes": "kubernetes",
    "SchedulerPlugins": "scheduler-plugins",
    "Volcano": "volcano",
}

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
    "kubernetes": PodGroupApi("scheduling.k8s.io", "v1alpha2"),
    "volcano": PodGroupApi("scheduling.volcano.sh", "v1beta1"),
    "scheduler-plugins": PodGroupApi("scheduling.x-k8s.io", "v1alpha1"),
}


def gang_candidates(job: LargeModelJob) -> tuple[Flavour, ...]:
    """The flavours a job's gang may use, preferred first; () without gang scheduling."""
    scheduling = job.spec.scheduling
    if not scheduling.gang:
        return ()
    if scheduling.gang_api is not None:
        return (FLAVOUR_OF_API[scheduling.gang_api],)
    if scheduling.scheduler_name == "volcano":
        return ("volcano",)
    # The built-in API needs no extra scheduler: preferred where the cluster serves it.
    return ("kubernetes", "scheduler-plugins")


def gang_flavour(job: LargeModelJob, served: Container[Flavour]) -> Flavour | None:
    """The flavour of the job's gang among those the cluster serves; None without gang
    scheduling or when it serves none of the job's candidates."""
    return next((f for f in gang_candidates(job) if f in served), None)


def pod_group_name(job_name: str) -> str:
    return job_name


def build_pod_group(job: LargeModelJob, flavour: Flavour) -> dict[str, Any]:
    """The job's PodGroup in the given flavour."""
    min_replicas, _ = job.spec.workers.bounds
    api = POD_GROUP_APIS[flavour]
    spec: dict[str, Any]
    if flavour == "kubernetes":
        # Immutable once created: a new minReplicas replaces the PodGroup (reconcile.py).
        spec = {"schedulingPolicy": {"gang": {"minCount": min_replicas}}}
    else:
        spec = {"minMember": min_replicas}
    if flavour == "volcano":
        if job.spec.scheduling.queue:
            spec["queue"] = job.spec.scheduling.queue
        if job.spec.scheduling.priority_class_name:
            spec["priorityClassName"] = job.spec.scheduling.priority_class_name
    elif flavour == "scheduler-plugins":
        # Coscheduling's default permit wait is short for pods pulling multi-GB images.
        spec["scheduleTimeoutSeconds"] = 600
    return {
        "apiVersion": api.api_version,
        "kind": "PodGroup",
        "metadata": owned_metadata(job, pod_group_name(job.metadata.name), ROLE_WORKER),
        "spec": spec,
    }


def build_scheduling_metadata(
    job: LargeModelJob, flavour: Flavour | None
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that put a worker pod into its gang."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    name = job.metadata.name
    if flavour == "volcano":
        annotations[VOLCANO_GROUP_ANNOTATION] = pod_group_name(name)
    elif flavour == "scheduler-plugins":
        labels[COSCHEDULING_LABEL] = pod_group_name(name)
    return labels, annotations


def build_scheduling_group(job: LargeModelJob, flavour: Flavour | None) -> dict[str, str] | None:
    """A worker pod's `spec.schedulingGroup` (immutable: set at creation), only for
    Kubernetes' own PodGroup."""
    if flavour != "kubernetes":
        return None
    return {"podGroupName": pod_group_name(job.metadata.name)}
