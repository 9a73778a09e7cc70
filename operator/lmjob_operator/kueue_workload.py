"""LargeModelJob as a Kueue workload: the `Workload` the operator owns for a queued job, and
what Kueue's verdict on it means for the job (docs/kueue.md).

Pure: no I/O. The caller reads the Workload, the ResourceFlavors it was admitted to and the
priority class, calls these functions, and acts on their answers. `decide` replays, for
one job, the state machine Kueue's `jobframework.ReconcileGenericJob` (v0.17.0) runs for
its built-in jobs, so a LargeModelJob behaves towards Kueue like a batch/v1 Job.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from lmjob_api import GROUP, KIND, LargeModelJob
from lmjob_operator.naming import job_namespace, job_uid, owner_reference

KUEUE_GROUP = "kueue.x-k8s.io"
WORKLOAD_API_VERSION = f"{KUEUE_GROUP}/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
POD_SET_LABEL = "kueue.x-k8s.io/podset"
RESOURCE_IN_USE_FINALIZER = "kueue.x-k8s.io/resource-in-use"
WORKERS = "workers"
RENDEZVOUS = "rendezvous"
# Kueue's name scheme: "<kind>-<owner>" cut to fit, "-", 5 hex digits of a SHA-1. 63 keeps
# the name usable as a label value (Kueue's ShortWorkloadNames length).
_NAME_MAX, _HASH_LEN = 63, 5
# Evictions after which Kueue marks a workload Requeued=True (jobframework step 6).
_REQUEUED_REASONS = frozenset({"Preempted", "NodeFailures"})
# Per-pod fields of a pod that make no sense in a pod set's template.
_PER_POD_SPEC_FIELDS = ("hostname", "nodeName")


def queue_name(job: LargeModelJob) -> str | None:
    """The LocalQueue a job waits in: Kueue's label, else `spec.scheduling.queue` (which is a
    Volcano queue, not Kueue's, when Volcano schedules the job)."""
    if job.metadata.labels.get(QUEUE_LABEL):
        return job.metadata.labels[QUEUE_LABEL]
    scheduling = job.spec.scheduling
    if scheduling.queue and scheduling.scheduler_name != "volcano":
        return scheduling.queue
    return None


def kueue_workload_name(kind: str, group: str, owner: str, uid: str) -> str:
    """Kueue's `GetWorkloadNameForOwnerWithGVK`: the Workload name Kueue gives an owner."""
    prefix = f"{kind.lower()}-{owner}"[: _NAME_MAX - 1 - _HASH_LEN]
    digest = hashlib.sha1("\n".join([kind, group, owner, uid]).encode()).hexdigest()
    return f"{prefix}-{digest[:_HASH_LEN]}"


def workload_name(job_name: str, uid: str) -> str:
    """The Workload name of a LargeModelJob, by Kueue's own scheme."""
    return kueue_workload_name(KIND, GROUP, job_name, uid)


@dataclass(frozen=True)
class Priority:
    """A job's priority as Kueue orders workloads: a class and its value (resolved by the
    caller from the PriorityClass or Kueue WorkloadPriorityClass it names)."""

    name: str
    value: int
    kueue_class: bool = False  # a kueue.x-k8s.io WorkloadPriorityClass, not a PriorityClass

    def ref(self) -> dict[str, str]:
        if self.kueue_class:
            return {"group": KUEUE_GROUP, "kind": "WorkloadPriorityClass", "name": self.name}
        return {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": self.name}


def priority_class_name(job: LargeModelJob) -> tuple[str, bool] | None:
    """(class name, is a Kueue WorkloadPriorityClass) the job asks for, if any; Kueue's label
    wins over `scheduling.priorityClassName`, as it does for Kueue's built-in jobs."""
    if job.metadata.labels.get(PRIORITY_CLASS_LABEL):
        return job.metadata.labels[PRIORITY_CLASS_LABEL], True
    if job.spec.scheduling.priority_class_name:
        return job.spec.scheduling.priority_class_name, False
    return None


def pod_set(name: str, pod: dict[str, Any], count: int, min_count: int | None = None) -> dict:
    """A Workload pod set whose template is `pod` (as the operator would create it)."""
    meta = pod.get("metadata") or {}
    spec = {k: v for k, v in (pod.get("spec") or {}).items() if k not in _PER_POD_SPEC_FIELDS}
    template: dict[str, Any] = {"spec": copy.deepcopy(spec)}
    template_meta = {k: dict(meta[k]) for k in ("labels", "annotations") if meta.get(k)}
    if template_meta:
        template["metadata"] = template_meta
    out: dict[str, Any] = {"name": name, "count": count, "template": template}
    if min_count is not None and min_count < count:
        out["minCount"] = min_count
    return out


def build_workload(
    job: LargeModelJob,
    worker_pod: dict[str, Any],
    rendezvous_pod: dict[str, Any] | None = None,
    priority: Priority | None = None,
) -> dict[str, Any]:
    """The Workload of a queued job: its workers (count = replicas, minCount = minReplicas
    for an elastic job) and its rendezvous store, owned by the job."""
    queue = queue_name(job)
    if queue is None:
        raise ValueError(f"job {job.metadata.name} names no Kueue queue")
    uid = job_uid(job)
    min_replicas, _ = job.spec.workers.bounds
    pod_sets = [pod_set(WORKERS, worker_pod, job.spec.workers.replicas, min_replicas)]
    if rendezvous_pod is not None:
        pod_sets.append(pod_set(RENDEZVOUS, rendezvous_pod, 1))
    spec: dict[str, Any] = {"queueName": queue, "active": True, "podSets": pod_sets}
    if priority is not None:
        spec["priority"] = priority.value
        spec["priorityClassRef"] = priority.ref()
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(job.metadata.name, uid),
            "namespace": job_namespace(job),
            "labels": {JOB_UID_LABEL: uid} if uid else {},
            "finalizers": [RESOURCE_IN_USE_FINALIZER],
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


# -- reading a Workload ---------------------------------------------------------------


def condition(workload: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (workload.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def is_true(workload: Mapping[str, Any], kind: str) -> bool:
    c = condition(workload, kind)
    return c is not None and c.get("status") == "True"


def admitted_counts(workload: Mapping[str, Any]) -> dict[str, int]:
    """Pods admitted per pod set: the assignment's count (less than asked for under partial
    admission), else the pod set's own count. Empty when not admitted."""
    asked = {ps["name"]: ps.get("count", 1) for ps in workload["spec"]["podSets"]}
    admission = (workload.get("status") or {}).get("admission") or {}
    return {
        a["name"]: a.get("count", asked.get(a["name"], 1))
        for a in admission.get("podSetAssignments") or []
    }


class PlacementConflict(ValueError):
    """Two sources (flavors, admission checks) set one key to different values."""


@dataclass
class Placement:
    """What admission adds to a pod set's pods (Kueue's `podset.PodSetInfo`)."""

    count: int
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def merge(
        self,
        *,
        node_selector: Mapping[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Add another source's keys; a key set twice must agree (Kueue's PodSetInfo.Merge)."""
        for name, ours, theirs in (
            ("nodeSelector", self.node_selector, node_selector or {}),
            ("labels", self.labels, labels or {}),
            ("annotations", self.annotations, annotations or {}),
        ):
            clash = sorted(k for k in theirs if k in ours and ours[k] != theirs[k])
            if clash:
                raise PlacementConflict(f"admission sets {name} {clash} to conflicting values")
            ours.update(theirs)
        for toleration in tolerations or []:
            if toleration not in self.tolerations:
                self.tolerations.append(toleration)


def placements(
    workload: Mapping[str, Any], flavors: Mapping[str, Mapping[str, Any]]
) -> dict[str, Placement]:
    """Per pod set, the admitted count and the node labels and tolerations of the flavors it
    was assigned, plus every admission check's pod-set updates (Kueue's
    `getPodSetsInfoFromStatus`). `flavors` maps ResourceFlavor name -> object; a missing
    flavor is a KeyError (the caller re-reads and retries)."""
    status = workload.get("status") or {}
    counts = admitted_counts(workload)
    out: dict[str, Placement] = {}
    for assignment in (status.get("admission") or {}).get("podSetAssignments") or []:
        name = assignment["name"]
        placement = Placement(count=counts[name])
        for flavor_name in dict.fromkeys((assignment.get("flavors") or {}).values()):
            flavor_spec = flavors[flavor_name].get("spec") or {}
            placement.merge(
                node_selector=flavor_spec.get("nodeLabels"),
                tolerations=flavor_spec.get("tolerations"),
            )
        placement.labels[POD_SET_LABEL] = name
        for check in status.get("admissionChecks") or []:
            for update in check.get("podSetUpdates") or []:
                if update.get("name") == name:
                    placement.merge(
                        node_selector=update.get("nodeSelector"),
                        tolerations=update.get("tolerations"),
                        labels=update.get("labels"),
                        annotations=update.get("annotations"),
                    )
        out[name] = placement
    return out


def apply_placement(pod: dict[str, Any], placement: Placement) -> dict[str, Any]:
    """`pod` with an admission's placement merged in (the pod's own keys must agree)."""
    pod = copy.deepcopy(pod)
    meta, spec = pod.setdefault("metadata", {}), pod.setdefault("spec", {})
    merged = Placement(
        count=placement.count,
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=list(spec.get("tolerations") or []),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )
    merged.merge(
        node_selector=placement.node_selector,
        tolerations=placement.tolerations,
        labels=placement.labels,
        annotations=placement.annotations,
    )
    for key, value in (("nodeSelector", merged.node_selector), ("tolerations", merged.tolerations)):
        if value:
            spec[key] = value
    meta["labels"] = merged.labels
    if merged.annotations:
        meta["annotations"] = merged.annotations
    return pod


# -- Kueue's verdict -> the job's desired state ----------------------------------------------


class Action(StrEnum):
    CREATE = "Create"  # create the Workload
    WAIT = "Wait"  # no pods; wait for admission
    START = "Start"  # create the pods, placed as admitted
    RUN = "Run"  # admitted and running: nothing to do for Kueue
    STOP = "Stop"  # stop the pods gracefully (SIGTERM, checkpoint), keep the job
    REQUEUE = "Requeue"  # pods gone after an eviction: give the reservation back
    FINISH = "Finish"  # the job ended: mark the Workload Finished
    RELEASE = "Release"  # drop our finalizer: Kueue may forget the Workload


@dataclass(frozen=True)
class Decision:
    """What to do now, and how the job should look meanwhile (`queued` → phase Queued with
    `reason`/`message` in its Queued condition)."""

    action: Action
    queued: bool
    reason: str = ""
    message: str = ""


def decide(workload: Mapping[str, Any] | None, *, pods_active: bool, finished: bool) -> Decision:
    """One step towards agreeing with Kueue, given the job's Workload (None if not created
    yet), whether any of its pods still run, and whether the job itself has finished.

    Called again after each action, so each answer is a single step; the order of the
    checks is jobframework's (finished, deleted, evicted, admitted, suspended)."""
    if workload is None:
        if finished:
            return Decision(Action.RUN, queued=False)
        return Decision(Action.CREATE, queued=True, reason="WorkloadCreated",
                        message="waiting for Kueue to admit the job's Workload")  # fmt: skip
    finalizers = (workload.get("metadata") or {}).get("finalizers") or []
    holds = RESOURCE_IN_USE_FINALIZER in finalizers
    if is_true(workload, "Finished"):
        return Decision(Action.RELEASE if holds else Action.RUN, queued=False)
    if (workload.get("metadata") or {}).get("deletionTimestamp"):
        if pods_active:
            return Decision(Action.STOP, queued=True, reason="WorkloadDeleted",
                            message="the job's Workload is being deleted")  # fmt: skip
        if holds:
            return Decision(Action.RELEASE, queued=True, reason="WorkloadDeleted",
                            message="the job's Workload is being deleted")  # fmt: skip
        # Someone else's finalizer holds it: a new one can take the name once it is gone.
        return Decision(Action.WAIT, queued=True, reason="WorkloadDeleted",
                        message="the job's Workload is being deleted")  # fmt: skip
    if finished:
        return Decision(Action.FINISH, queued=False)

    evicted = condition(workload, "Evicted")
    if evicted is not None and evicted.get("status") == "True":
        reason = f"Evicted{evicted.get('reason', '')}"
        message = evicted.get("message", "")
        if pods_active:
            return Decision(Action.STOP, queued=True, reason=reason, message=message)
        if is_true(workload, "QuotaReserved"):
            return Decision(Action.REQUEUE, queued=True, reason=reason, message=message)
        return _waiting(workload)

    if is_true(workload, "Admitted"):
        return Decision(Action.RUN if pods_active else Action.START, queued=False)
    if pods_active:
        return Decision(Action.STOP, queued=True, reason="NotAdmitted",
                        message="the job's Workload lost its admission")  # fmt: skip
    return _waiting(workload)


def _waiting(workload: Mapping[str, Any]) -> Decision:
    # Kueue explains a wait in QuotaReserved (Pending: no quota; Inadmissible: no such
    # LocalQueue, or it is stopped), or, with quota reserved, in Admitted (checks pending).
    reserved = condition(workload, "QuotaReserved")
    if reserved is not None and reserved.get("status") == "True":
        admitted = condition(workload, "Admitted") or {}
        message = admitted.get("message", "quota reserved; admission checks pending")
        reason = admitted.get("reason", "QuotaReserved")
        return Decision(Action.WAIT, queued=True, reason=reason, message=message)
    if reserved is None:
        return Decision(Action.WAIT, queued=True, reason="Pending",
                        message="waiting for Kueue to consider the job's Workload")  # fmt: skip
    return Decision(Action.WAIT, queued=True, reason=reserved.get("reason", "Pending"),
                    message=reserved.get("message", ""))  # fmt: skip


def _set_condition(
    conditions: list[dict[str, Any]], new: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """metav1 SetStatusCondition: lastTransitionTime changes only with the status."""
    out, found = [], False
    for c in conditions:
        if c.get("type") == new["type"]:
            found = True
            keep_time = c.get("status") == new["status"] and c.get("lastTransitionTime")
            out.append({**new, "lastTransitionTime": keep_time or _stamp(now)})
        else:
            out.append(c)
    if not found:
        out.append({**new, "lastTransitionTime": _stamp(now)})
    return out


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def requeue_status(workload: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status merge patch of Action.REQUEUE: the reservation given back after an
    eviction, as Kueue's job reconciler writes it (QuotaReserved=False reason Pending,
    Admitted=False, Requeued, no admission)."""
    evicted = condition(workload, "Evicted") or {}
    reason, message = evicted.get("reason", ""), evicted.get("message", "")
    generation = (workload.get("metadata") or {}).get("generation")
    extra = {"observedGeneration": generation} if generation else {}
    conditions = list((workload.get("status") or {}).get("conditions") or [])
    conditions = _set_condition(
        conditions,
        {"type": "Requeued", "status": "True" if reason in _REQUEUED_REASONS else "False",
         "reason": reason, "message": message, **extra},
        now,
    )  # fmt: skip
    conditions = _set_condition(
        conditions,
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message,
         **extra},
        now,
    )  # fmt: skip
    conditions = _set_condition(
        conditions,
        {"type": "Admitted", "status": "False", "reason": "NoReservation",
         "message": "The workload has no reservation", **extra},
        now,
    )  # fmt: skip
    return {"status": {"conditions": conditions, "admission": None}}


def finish_status(
    workload: Mapping[str, Any], *, succeeded: bool, message: str, now: datetime
) -> dict[str, Any]:
    """The status merge patch of Action.FINISH (Kueue's `workload.Finish`)."""
    conditions = _set_condition(
        list((workload.get("status") or {}).get("conditions") or []),
        {"type": "Finished", "status": "True",
         "reason": "Succeeded" if succeeded else "Failed", "message": message},
        now,
    )  # fmt: skip
    return {"status": {"conditions": conditions}}


# -- elastic resizes -----------------------------------------------------------------------


class Resize(StrEnum):
    NONE = "None"  # the Workload already asks for this size
    UPDATE = "Update"  # not reserved yet: change podSets[workers].count in place
    RECLAIM = "Reclaim"  # admitted, shrinking: report the surplus as reclaimable pods
    READMIT = "Readmit"  # admitted, growing: stop gracefully, new Workload, queue again


@dataclass(frozen=True)
class ResizePlan:
    kind: Resize
    reclaimable: int = 0  # worker pods Kueue may stop counting (RECLAIM)


def plan_resize(workload: Mapping[str, Any], replicas: int) -> ResizePlan:
    """How a change of `workers.replicas` reaches the job's Workload (docs/kueue.md)."""
    workers = next(ps for ps in workload["spec"]["podSets"] if ps["name"] == WORKERS)
    if not is_true(workload, "QuotaReserved"):
        return ResizePlan(Resize.NONE if workers["count"] == replicas else Resize.UPDATE)
    running = admitted_counts(workload).get(WORKERS, workers["count"])
    if replicas > running:
        return ResizePlan(Resize.READMIT)
    if replicas < running:
        return ResizePlan(Resize.RECLAIM, reclaimable=running - replicas)
    return ResizePlan(Resize.NONE)
