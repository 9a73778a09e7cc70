"""The GangScheduling condition of a job: which PodGroup API its gang went to, or why it
has none, or the scheduler's reason while it cannot place the gang (never a silent wait).

Pure: the reconcile hands in the flavour discovery found and the pods it observed.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmjob_api import LargeModelJob
from lmjob_operator.pod_group import POD_GROUP_APIS, Flavour, gang_candidates
from lmjob_operator.pod_view import PodView
from lmjob_operator.status import Problem

CONDITION = "GangScheduling"
# What to install for each flavour, in a missing-API message.
_INSTALL = {
    "kubernetes": "Kubernetes 1.36+ with the GenericWorkload feature gate (kube-apiserver "
    "--runtime-config=scheduling.k8s.io/v1alpha2=true; kube-scheduler GangScheduling)",
    "scheduler-plugins": "scheduler-plugins' coscheduling",
    "volcano": "Volcano",
}


def gang_problem(
    job: LargeModelJob, gang: Flavour | None, pods: Sequence[PodView]
) -> Problem | None:
    """The GangScheduling condition, None for a job without gang scheduling."""
    candidates = gang_candidates(job)
    if not candidates:
        return None
    if gang is None:
        wanted = " or ".join(
            f"{POD_GROUP_APIS[f].api_version} PodGroup ({_INSTALL[f]})" for f in candidates
        )
        return Problem(
            CONDITION,
            "False",
            "PodGroupAPIMissing",
            f"scheduling.gang is set but the cluster serves no {wanted}: workers are "
            "scheduled without a gang. Install one, or unset scheduling.gang",
        )
    api = POD_GROUP_APIS[gang]
    group = f"{api.api_version} PodGroup {job.metadata.name}"
    min_replicas, _ = job.spec.workers.bounds
    stuck = sorted(
        (p for p in pods if p.is_worker and p.live and not p.node_name and p.unschedulable),
        key=lambda p: p.index if p.index is not None else -1,
    )
    if stuck:
        return Problem(
            CONDITION,
            "False",
            "Unschedulable",
            f"{group}: the scheduler cannot place the gang of {min_replicas} workers "
            f"({len(stuck)} reported unschedulable): {stuck[0].name}: {stuck[0].unschedulable}"[
                :1000
            ],
        )
    return Problem(CONDITION, "True", "PodGroupCreated", group)
