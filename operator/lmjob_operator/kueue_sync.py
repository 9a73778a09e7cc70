"""The operator's side of Kueue for one queued job (docs/kueue.md): the I/O edge around the
pure kueue_workload module.

Each reconcile pass of a job that names a Kueue queue calls `sync`: it reads the job's
Workload, asks `kueue_workload.decide` what Kueue's verdict means, carries out the
Workload-side part of the answer (create the Workload, give a reservation back after an
eviction, drop our finalizer, follow runPolicy.suspend and unreserved resizes) and returns
a `Gate`: whether the job is held (phase Queued, no pods) and, once admitted, where its
pods go. The pod-side part (stopping pods, creating them placed) is the reconcile's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lmjob_api import LargeModelJob
from lmjob_operator.config import OperatorConfig
from lmjob_operator.job_log import JobLog, job_log
from lmjob_operator.kube import ApiError, Kube, ResourcePath
from lmjob_operator.kueue_workload import (
    KUEUE_GROUP,
    QUEUE_LABEL,
    RESOURCE_IN_USE_FINALIZER,
    WORKERS,
    Action,
    Decision,
    Placement,
    Priority,
    Resize,
    build_workload,
    decide,
    finish_status,
    is_true,
    placements,
    plan_resize,
    priority_class_name,
    requeue_status,
    workload_name,
)
from lmjob_operator.naming import job_namespace, job_uid
from lmjob_operator.rendezvous import build_rendezvous_pod
from lmjob_operator.status import Problem
from lmjob_operator.worker_pod import build_worker_pod

log = logging.getLogger(__name__)

WORKLOADS = ResourcePath(KUEUE_GROUP, "v1beta2", "workloads")
FLAVORS = ResourcePath(KUEUE_GROUP, "v1beta2", "resourceflavors")
WORKLOAD_PRIORITY_CLASSES = ResourcePath(KUEUE_GROUP, "v1beta2", "workloadpriorityclasses")
PRIORITY_CLASSES = ResourcePath("scheduling.k8s.io", "v1", "priorityclasses")
# The condition that carries Kueue's verdict on the job (docs/operator.md).
QUEUED = "Queued"


@dataclass(frozen=True)
class Gate:
    """Kueue's verdict on a job, as the rest of the pass needs it."""

    decision: Decision
    workload: dict[str, Any] | None = None
    placements: dict[str, Placement] = field(default_factory=dict)

    @property
    def queued(self) -> bool:
        return self.decision.queued

    @property
    def admitted_workers(self) -> int | None:
        """Workers Kueue admitted (fewer than asked under partial admission)."""
        placement = self.placements.get(WORKERS)
        return placement.count if placement is not None else None

    def condition(self) -> Problem:
        """The job's Queued condition: Kueue's reason and message while it waits."""
        d = self.decision
        if d.queued:
            return Problem(QUEUED, "True", d.reason or "Pending", d.message)
        admission = ((self.workload or {}).get("status") or {}).get("admission") or {}
        where = admission.get("clusterQueue", "")
        message = f"admitted by ClusterQueue {where}" if where else "admitted by Kueue"
        return Problem(QUEUED, "False", "Admitted", message)


def held(reason: str, message: str, workload: dict[str, Any] | None = None) -> Gate:
    return Gate(Decision(Action.WAIT, queued=True, reason=reason, message=message), workload)


async def sync(
    kube: Kube,
    job: LargeModelJob,
    config: OperatorConfig,
    *,
    pods_active: bool,
    finished: bool,
    rendezvous_round: int = 0,
) -> Gate:
    """One step towards agreeing with Kueue on this job (see the module docstring)."""
    namespace, uid = job_namespace(job), job_uid(job)
    name = workload_name(job.metadata.name, uid)
    workload = await kube.get(WORKLOADS, namespace, name)
    decision = decide(workload, pods_active=pods_active, finished=finished)

    if decision.action == Action.CREATE:
        try:
            priority = await _priority(kube, job)
        except LookupError as err:
            return held("PriorityClassNotFound", str(err))
        body = build_workload(
            job,
            build_worker_pod(job, 0, rendezvous_round, config),
            build_rendezvous_pod(job, config),
            priority,
        )
        try:
            workload = await kube.create(WORKLOADS, namespace, body)
        except ApiError as err:
            if err.status == 409:
                workload = await kube.get(WORKLOADS, namespace, name)
            elif err.status in (400, 403, 422):
                # Kueue's webhook or RBAC refused it: say so instead of waiting in silence.
                return held(
                    "WorkloadRejected",
                    f"the API server refused the job's Kueue Workload {name} ({err.status}): "
                    f"{err.message}"[:1000],
                )
            else:
                raise
        _log(job).info("created Kueue Workload %s in queue %s", name, body["spec"]["queueName"])
        decision = decide(workload, pods_active=pods_active, finished=finished)
        if decision.action == Action.WAIT and decision.reason == "Pending":
            decision = Decision(Action.WAIT, True, "WorkloadCreated", decision.message)
        return Gate(decision, workload)

    if workload is None:  # a job that finished before it had a Workload: nothing to do
        return Gate(decision)
    if decision.action == Action.REQUEUE:
        patch = requeue_status(workload, datetime.now(UTC))
        workload = await _patch(kube, workload, patch, sub="status")
        _log(job).info("gave back the Workload's reservation after %s", decision.reason)
    elif decision.action == Action.FINISH:
        pass  # the reconcile does it, with the job's final word, once its pods are gone
    elif decision.action == Action.RELEASE:
        workload = await release(kube, workload)
    elif not finished:
        workload = await _follow_spec(kube, job, workload)

    if decision.action in (Action.START, Action.RUN) and not finished:
        placed = await _placements(kube, workload)
        if placed is None and decision.action == Action.START:
            return held(
                "ResourceFlavorMissing",
                "a ResourceFlavor the job was admitted to is gone: waiting for Kueue to evict "
                "and admit it again",
                workload,
            )
        # Running already: pods created from now on go unplaced only if a flavor vanished
        # under a running job (Kueue then stops its ClusterQueue and evicts the job).
        return Gate(decision, workload, placed or {})
    return Gate(decision, workload)


async def finish(
    kube: Kube, job: LargeModelJob, workload: dict[str, Any], *, succeeded: bool, message: str
) -> None:
    """Mark the Workload Finished (Kueue frees its quota) and let Kueue forget it. Called once
    none of the job's pods runs any more, as batch/v1 Jobs add their final condition only
    when their pods are gone: the quota is not handed on while a pod still holds it."""
    if not is_true(workload, "Finished"):
        patch = finish_status(workload, succeeded=succeeded, message=message, now=datetime.now(UTC))
        workload = await _patch(kube, workload, patch, sub="status")
        _log(job).info("marked Kueue Workload %s Finished", workload["metadata"]["name"])
    await release(kube, workload)


async def release(kube: Kube, workload: dict[str, Any]) -> dict[str, Any]:
    """Drop our finalizer (conditional on the version read: a concurrent write retries)."""
    meta = workload["metadata"]
    finalizers = meta.get("finalizers") or []
    if RESOURCE_IN_USE_FINALIZER not in finalizers:
        return workload
    keep = [f for f in finalizers if f != RESOURCE_IN_USE_FINALIZER]
    patch = {"metadata": {"finalizers": keep, "resourceVersion": meta.get("resourceVersion")}}
    return await _patch(kube, workload, patch)


async def release_deleted_job(kube: Kube, body: Mapping[str, Any]) -> None:
    """The job is being deleted: its Workload's finalizer must not outlive it (the garbage
    collector deletes the Workload, which would otherwise hang on our finalizer)."""
    meta, spec = body["metadata"], body.get("spec") or {}
    if QUEUE_LABEL not in (meta.get("labels") or {}) and not (spec.get("scheduling") or {}).get(
        "queue"
    ):
        return
    name = workload_name(meta["name"], meta.get("uid", ""))
    workload = await kube.get(WORKLOADS, meta["namespace"], name)
    if workload is not None:
        try:
            await release(kube, workload)
        except ApiError as err:
            if err.status != 404:
                raise


async def _follow_spec(kube: Kube, job: LargeModelJob, workload: dict[str, Any]) -> dict:
    """runPolicy.suspend deactivates the Workload (Kueue evicts it and frees the quota, as for
    an admin's deactivation); a resize before quota is reserved updates its pod set."""
    active = not job.spec.run_policy.suspend
    if workload["spec"].get("active", True) != active:
        workload = await _patch(kube, workload, {"spec": {"active": active}})
    replicas = job.spec.workers.replicas
    if plan_resize(workload, replicas).kind == Resize.UPDATE:
        low, _ = job.spec.workers.bounds
        pod_sets = []
        for pod_set in workload["spec"]["podSets"]:
            if pod_set["name"] == WORKERS:
                pod_set = {**pod_set, "count": replicas}
                pod_set.pop("minCount", None)
                if low < replicas:
                    pod_set["minCount"] = low
            pod_sets.append(pod_set)
        workload = await _patch(kube, workload, {"spec": {"podSets": pod_sets}})
    return workload


async def _placements(kube: Kube, workload: dict[str, Any]) -> dict[str, Placement] | None:
    """Where each admitted pod set goes; None when one of its flavors no longer exists."""
    admission = (workload.get("status") or {}).get("admission") or {}
    names = {
        flavor
        for assignment in admission.get("podSetAssignments") or []
        for flavor in (assignment.get("flavors") or {}).values()
    }
    flavors = {}
    for flavor in sorted(names):
        found = await kube.get(FLAVORS, "", flavor)
        if found is None:
            return None
        flavors[flavor] = found
    return placements(workload, flavors)


async def _priority(kube: Kube, job: LargeModelJob) -> Priority | None:
    """The job's priority class and its value; LookupError naming the field if missing."""
    wanted = priority_class_name(job)
    if wanted is None:
        return None
    name, kueue_class = wanted
    where = WORKLOAD_PRIORITY_CLASSES if kueue_class else PRIORITY_CLASSES
    found = await kube.get(where, "", name)
    if found is None:
        field_name = (
            "label kueue.x-k8s.io/priority-class (a Kueue WorkloadPriorityClass)"
            if kueue_class
            else "spec.scheduling.priorityClassName (a PriorityClass)"
        )
        raise LookupError(f"{field_name} names {name!r}, which does not exist: create it or fix")
    return Priority(name, int(found.get("value") or 0), kueue_class=kueue_class)


async def _patch(
    kube: Kube, workload: dict[str, Any], patch: dict[str, Any], sub: str = ""
) -> dict[str, Any]:
    meta = workload["metadata"]
    return await kube.merge_patch(WORKLOADS, meta["namespace"], meta["name"], patch, sub=sub)


def _log(job: LargeModelJob) -> JobLog:
    return job_log(job_namespace(job), job.metadata.name, log)
