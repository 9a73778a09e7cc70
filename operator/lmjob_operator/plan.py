"""The pure decisions of a reconcile pass: parsing, what the pods should become, when to look again.

No I/O here: reconcile.py observes, calls these, and acts on their answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from lmjob_api import API_VERSION, KIND, JobPhase, LargeModelJob
from lmjob_api import LargeModelJobStatus as Status
from lmjob_operator.config import OperatorConfig
from lmjob_operator.failures import Action, Verdict
from lmjob_operator.naming import ROLE_RENDEZVOUS, bounds_value, rendezvous_name, worker_name
from lmjob_operator.pod_view import PodView, parse_time
from lmjob_operator.registry import JobState

# How long what this process just created/deleted overrides a pod index that has not
# caught up yet; after that the index (fed by the watch) is trusted again.
EXPECTATION_SECONDS = 30.0
IDLE_SECONDS = 3600.0


def parse_job(body: dict[str, Any]) -> LargeModelJob:
    """The API model of a job body (raises pydantic's ValidationError)."""
    meta = body.get("metadata") or {}
    return LargeModelJob.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                k: meta[k]
                for k in (
                    "name",
                    "namespace",
                    "uid",
                    "generation",
                    "creationTimestamp",
                    "labels",
                    "annotations",
                )
                if k in meta
            },
            "spec": body.get("spec") or {},
        }
    )


def parse_status(raw: dict[str, Any] | None) -> Status:
    """The previous status; tolerant of fields written by other versions."""
    if not raw:
        return Status()
    try:
        return Status.model_validate(raw)
    except ValidationError:
        known = {k: v for k, v in raw.items() if k in Status.model_fields or _alias(k)}
        try:
            return Status.model_validate(known)
        except ValidationError:
            return Status(restarts=int(raw.get("restarts") or 0))


def _alias(key: str) -> bool:
    return any(f.alias == key for f in Status.model_fields.values())


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 patch turning `old` into `new` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


@dataclass(frozen=True)
class PodPlan:
    """What one pass does to pods."""

    create_workers: tuple[int, ...] = ()
    create_rendezvous: bool = False
    delete: tuple[tuple[str, str, str], ...] = ()
    """(name, uid, why) deleted gracefully."""
    force_delete: tuple[tuple[str, str], ...] = ()
    """(name, uid) stuck Terminating past their grace period: their node is gone."""
    delete_job: bool = False


def plan_pods(
    job: LargeModelJob,
    status: Status,
    pods: Sequence[PodView],
    verdict: Verdict,
    now: datetime,
    config: OperatorConfig,
) -> PodPlan:
    """Pods to create and delete so the cluster matches `status` (pure)."""
    round_ = status.restarts
    force = tuple(
        (p.name, p.uid)
        for p in pods
        if p.deleting
        and p.deletion_timestamp is not None
        and now - p.deletion_timestamp > timedelta(seconds=config.force_delete_after_seconds)
    )
    present = [p for p in pods if not p.deleting]
    rendezvous = next((p for p in present if p.role == ROLE_RENDEZVOUS), None)
    workers = [p for p in present if p.is_worker]
    delete: list[tuple[str, str, str]] = []

    if status.phase.finished:
        policy = job.spec.run_policy.clean_pod_policy
        for p in workers:
            if policy == "All" or (policy == "Running" and not p.finished):
                delete.append((p.name, p.uid, f"job {status.phase.value}, cleanPodPolicy {policy}"))
        if rendezvous is not None:
            delete.append((rendezvous.name, rendezvous.uid, f"job {status.phase.value}"))
        ttl = job.spec.run_policy.ttl_seconds_after_finished
        done = parse_time(status.completion_time)
        expired = ttl is not None and done is not None and now >= done + timedelta(seconds=ttl)
        return PodPlan(delete=tuple(delete), force_delete=force, delete_job=expired)

    if status.phase in (JobPhase.SUSPENDED, JobPhase.QUEUED):
        # Both a stop, not a failure: the trainer checkpoints on SIGTERM and resumes later.
        why = "job suspended" if status.phase == JobPhase.SUSPENDED else "job queued by Kueue"
        delete = [(p.name, p.uid, why) for p in present]
        return PodPlan(delete=tuple(delete), force_delete=force)

    replicas = job.spec.workers.replicas
    bounds = bounds_value(*job.spec.workers.bounds)
    replace_names = set(verdict.replace)
    finishing = any(p.phase == "Succeeded" and p.rendezvous_round == round_ for p in workers)
    for p in workers:
        if p.index is None or p.index >= replicas:
            delete.append((p.name, p.uid, f"scaled to {replicas} workers"))
        elif p.rendezvous_round != round_:
            delete.append((p.name, p.uid, f"restart {round_}: joining a fresh rendezvous"))
        elif p.bounds != bounds and not p.finished:
            delete.append((p.name, p.uid, f"elastic bounds changed to {bounds}"))
        elif p.name in replace_names or p.phase == "Unknown":
            delete.append((p.name, p.uid, "replacing a disrupted worker"))
    rendezvous_gone = rendezvous is not None and (
        rendezvous.finished or rendezvous.phase == "Unknown"
    )
    if rendezvous_gone:
        delete.append((rendezvous.name, rendezvous.uid, "rendezvous store ended"))

    taken = {p.name for p in pods}
    create = ()
    if not finishing and verdict.action != Action.FAIL:
        create = tuple(i for i in range(replicas) if worker_name(job.metadata.name, i) not in taken)
    return PodPlan(
        create_workers=create,
        create_rendezvous=rendezvous_name(job.metadata.name) not in taken and not finishing,
        delete=tuple(delete),
        force_delete=force,
    )


def next_wake(
    job: LargeModelJob,
    status: Status,
    pods: Sequence[PodView],
    now: datetime,
    config: OperatorConfig,
) -> float:
    """Seconds until this job needs a pass even if nothing happens (timers, scraping)."""
    waits = [IDLE_SECONDS]
    if status.phase.finished:
        ttl = job.spec.run_policy.ttl_seconds_after_finished
        done = parse_time(status.completion_time)
        if ttl is not None and done is not None:
            waits.append((done + timedelta(seconds=ttl) - now).total_seconds())
    elif status.phase != JobPhase.SUSPENDED:
        waits.append(config.resync_seconds)
        limit = job.spec.run_policy.active_deadline_seconds
        start = parse_time(status.start_time)
        if limit is not None and start is not None:
            waits.append((start + timedelta(seconds=limit) - now).total_seconds() + 0.5)
    for p in pods:
        if p.deleting and p.deletion_timestamp is not None:
            due = p.deletion_timestamp + timedelta(seconds=config.force_delete_after_seconds)
            waits.append((due - now).total_seconds() + 0.5)
    return max(0.05, min(waits))


@dataclass(frozen=True)
class Observation:
    """The job's pods as this pass sees them, and the expectations still standing after it
    (the caller stores them back in the job's state)."""

    pods: list[PodView]
    created: dict[str, tuple[PodView, float]]
    deleted: dict[str, float]


def observe(
    state: JobState, indexed: Iterable[PodView], uid: str, *, now: datetime, now_mono: float
) -> Observation:
    """The job's pods: the index, corrected by what this process created or deleted since.

    `now_mono` is `time.monotonic()` (the clock the expectations were stamped with) and
    `now` the wall clock given to pods this process deleted but the index still shows.
    """
    pods = {p.name: p for p in indexed if p.owner_uid == uid or not p.owner_uid}
    created: dict[str, tuple[PodView, float]] = {}
    for name, (view, at) in state.created.items():
        seen = pods.get(name)
        if (seen is not None and seen.uid == view.uid) or now_mono - at > EXPECTATION_SECONDS:
            continue
        created[name] = (view, at)
        if seen is None:
            pods[name] = view
    deleted: dict[str, float] = {}
    for pod_uid, at in state.deleted.items():
        seen = next((p for p in pods.values() if p.uid == pod_uid), None)
        if seen is None or seen.deleting or now_mono - at > EXPECTATION_SECONDS:
            continue
        deleted[pod_uid] = at
        pods[seen.name] = replace(seen, deletion_timestamp=now)
    return Observation(
        pods=sorted(pods.values(), key=lambda p: (p.role, p.index or 0, p.name)),
        created=created,
        deleted=deleted,
    )
