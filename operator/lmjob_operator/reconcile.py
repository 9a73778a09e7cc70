"""The one reconcile: observed pods + spec + previous status → status written, pods made to match.

Each pass is: observe (kopf's pod index plus what this process just did), decide (pure:
failures.judge_failures, status.build_status, plan_pods), then act in a fixed order —
status first (so a restart is counted before any pod is deleted), then the job's other
objects, deletions, and creations. Every object has exactly one possible name, creations
that find their object already there are fine, and deletions carry the uid of what they
delete: a pass can be re-run at any point, in any process, without duplicating a pod.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from lmjob_api import API_VERSION, GROUP, KIND, PLURAL, VERSION, JobPhase, LargeModelJob
from lmjob_api import LargeModelJobStatus as Status
from lmjob_operator import metrics
from lmjob_operator.config import OperatorConfig
from lmjob_operator.config_map import build_config_map, needs_config_map
from lmjob_operator.failures import Action, Verdict, judge_failures
from lmjob_operator.kube import CONFIG_MAPS, PODS, SERVICES, ApiError, Kube, ResourcePath
from lmjob_operator.naming import ROLE_RENDEZVOUS, bounds_value, rendezvous_name, worker_name
from lmjob_operator.pod_group import POD_GROUP_APIS, build_pod_group, gang_flavour
from lmjob_operator.pod_monitor import (
    POD_MONITOR_GROUP,
    POD_MONITOR_PLURAL,
    POD_MONITOR_VERSION,
    build_pod_monitor,
)
from lmjob_operator.pod_view import PodView, parse_time, view_pod
from lmjob_operator.progress import Progress, scrape_progress
from lmjob_operator.rendezvous import build_rendezvous_pod, build_rendezvous_service
from lmjob_operator.service import build_service
from lmjob_operator.spec_checks import check_runnable
from lmjob_operator.status import Problem, build_status, stage_order, transition_events
from lmjob_operator.worker_pod import build_worker_pod

log = logging.getLogger(__name__)

JOBS = ResourcePath(GROUP, VERSION, PLURAL)
# How long what this process just created/deleted overrides a pod index that has not
# caught up yet; after that the index (fed by the watch) is trusted again.
EXPECTATION_SECONDS = 30.0
# Re-apply the ConfigMap/Services/PodGroup this often even without a spec change, so an
# object deleted by hand comes back.
ENSURE_EVERY_SECONDS = 600.0
CREATE_CONCURRENCY = 16
IDLE_SECONDS = 3600.0


# --- memory of one job in this process ---------------------------------------------------


@dataclass
class JobState:
    """What one operator process remembers about a job between passes (lost on restart,
    which is fine: everything here is either re-observed or only an optimisation)."""

    key: tuple[str, str]
    uid: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    created: dict[str, tuple[PodView, float]] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    last_status: Status | None = None
    progress: Progress | None = None
    progress_pod: str = ""
    scraped_at: float = 0.0
    ensured: tuple[int, float] = (-1, 0.0)
    rejected: str = ""
    """The API server's message when it refused a worker pod (422): the job cannot run."""


@dataclass
class Registry:
    """Every job this process handles: lets pod events wake the right job's daemon."""

    jobs: dict[tuple[str, str], JobState] = field(default_factory=dict)

    def state(self, namespace: str, name: str, uid: str) -> JobState:
        """The state of this incarnation of the job (a recreated job starts afresh)."""
        key = (namespace, name)
        if key not in self.jobs or self.jobs[key].uid != uid:
            self.jobs[key] = JobState(key, uid)
        return self.jobs[key]

    def wake(self, namespace: str, name: str) -> None:
        state = self.jobs.get((namespace, name))
        if state is not None:
            state.wake.set()

    def forget(self, namespace: str, name: str, uid: str) -> None:
        if (state := self.jobs.get((namespace, name))) is not None and state.uid == uid:
            del self.jobs[(namespace, name)]
        self.publish_phases()

    def publish_phases(self) -> None:
        metrics.set_job_phases(
            s.last_status.phase.value for s in self.jobs.values() if s.last_status is not None
        )


@dataclass
class ApiCatalog:
    """Which optional APIs (PodGroup flavours, PodMonitor) the cluster serves, cached."""

    kube: Kube
    ttl: float = 60.0
    _seen: dict[tuple[str, str, str], tuple[bool, float]] = field(default_factory=dict)

    async def has(self, group: str, version: str, plural: str) -> bool:
        key = (group, version, plural)
        known = self._seen.get(key)
        if known and time.monotonic() - known[1] < self.ttl:
            return known[0]
        found = await self.kube.has_api(group, version, plural)
        self._seen[key] = (found, time.monotonic())
        return found


@dataclass
class Context:
    """Operator-wide things every pass needs."""

    kube: Kube
    config: OperatorConfig
    registry: Registry
    catalog: ApiCatalog


# --- pure parts ---------------------------------------------------------------------------


def parse_job(body: dict[str, Any]) -> LargeModelJob:
    """The API model of a job body (raises pydantic's ValidationError)."""
    meta = body.get("metadata") or {}
    return LargeModelJob.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "generation", "labels", "annotations")
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

    if status.phase == JobPhase.SUSPENDED:
        delete = [(p.name, p.uid, "job suspended") for p in present]
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


# --- the pass -----------------------------------------------------------------------------


def observe(state: JobState, indexed: Iterable[PodView], uid: str) -> list[PodView]:
    """The job's pods: the index, corrected by what this process created or deleted since."""
    now_mono = time.monotonic()
    pods = {p.name: p for p in indexed if p.owner_uid == uid or not p.owner_uid}
    for name, (view, at) in list(state.created.items()):
        seen = pods.get(name)
        if (seen is not None and seen.uid == view.uid) or now_mono - at > EXPECTATION_SECONDS:
            del state.created[name]
        elif seen is None:
            pods[name] = view
    for pod_uid, at in list(state.deleted.items()):
        seen = next((p for p in pods.values() if p.uid == pod_uid), None)
        if seen is None or seen.deleting or now_mono - at > EXPECTATION_SECONDS:
            del state.deleted[pod_uid]
        else:
            pods[seen.name] = replace(seen, deletion_timestamp=datetime.now(UTC))
    return sorted(pods.values(), key=lambda p: (p.role, p.index or 0, p.name))


async def reconcile_job(
    ctx: Context,
    state: JobState,
    body: dict[str, Any],
    indexed: Iterable[PodView],
    post_event: Callable[[str, str, str], None],
) -> float:
    """One pass over one job; returns seconds until the next pass is due without events."""
    started = time.monotonic()
    try:
        return await _reconcile(ctx, state, body, indexed, post_event)
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


async def _reconcile(
    ctx: Context,
    state: JobState,
    body: dict[str, Any],
    indexed: Iterable[PodView],
    post_event: Callable[[str, str, str], None],
) -> float:
    meta = body.get("metadata") or {}
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    if meta.get("deletionTimestamp"):
        return IDLE_SECONDS
    previous = state.last_status or parse_status(body.get("status"))
    try:
        job = parse_job(body)
    except ValidationError as err:
        await _write_unparseable(ctx, state, body, previous, str(err), post_event)
        return IDLE_SECONDS
    now = datetime.now(UTC)
    pods = observe(state, indexed, uid)
    rendezvous = next((p for p in pods if p.role == ROLE_RENDEZVOUS and not p.deleting), None)

    problems = await _problems(ctx, job, state)
    active = not previous.phase.finished and not job.spec.run_policy.suspend
    verdict = Verdict()
    if active and not any(p.type == "Failed" for p in problems):
        verdict = judge_failures(pods, rendezvous, job.spec.run_policy, previous.restarts)
    if active and _scrape_due(ctx, state, previous):
        await _scrape(ctx, state, job, pods)
    status = build_status(job, pods, state.progress, previous, verdict, now, problems)
    await _write_status(ctx, state, job, body, previous, status, post_event)

    plan = plan_pods(job, status, pods, verdict, now, ctx.config)
    if plan.delete_job:
        _job_log(job).info("deleting job: ttlSecondsAfterFinished passed")
        try:
            await ctx.kube.delete(JOBS, namespace, name, uid=uid)
        except ApiError as err:
            if err.status not in (404, 409):
                raise
        return IDLE_SECONDS
    if not status.phase.finished and status.phase != JobPhase.SUSPENDED:
        await _ensure_objects(ctx, state, job)
    await _apply_plan(ctx, state, job, status, plan, verdict)
    return next_wake(job, status, pods, now, ctx.config)


async def _problems(ctx: Context, job: LargeModelJob, state: JobState) -> list[Problem]:
    problems: list[Problem] = []
    invalid = check_runnable(job)
    if invalid:
        problems.append(Problem("Failed", "True", "InvalidSpec", "; ".join(invalid)))
    if state.rejected:
        problems.append(Problem("Failed", "True", "PodRejected", state.rejected))
    flavour = gang_flavour(job)
    if flavour is not None:
        api = POD_GROUP_APIS[flavour]
        if await ctx.catalog.has(api.group, api.version, api.plural):
            problems.append(
                Problem(
                    "GangScheduling",
                    "True",
                    "PodGroupCreated",
                    f"{flavour} PodGroup {job.metadata.name}",
                )
            )
        else:
            problems.append(
                Problem(
                    "GangScheduling",
                    "False",
                    "PodGroupAPIMissing",
                    f"scheduling.gang is set but the cluster serves no {api.api_version} PodGroup "
                    f"({flavour}): workers are scheduled without a gang. Install {flavour} or "
                    "unset scheduling.gang",
                )
            )
    if job.spec.metrics.pod_monitor:
        served = await ctx.catalog.has(POD_MONITOR_GROUP, POD_MONITOR_VERSION, POD_MONITOR_PLURAL)
        problems.append(
            Problem("PodMonitor", "True", "PodMonitorCreated", f"PodMonitor {job.metadata.name}")
            if served
            else Problem(
                "PodMonitor",
                "False",
                "PodMonitorAPIMissing",
                "metrics.podMonitor is set but the cluster serves no monitoring.coreos.com/v1 "
                "PodMonitor: install the Prometheus Operator or unset metrics.podMonitor",
            )
        )
    return problems


def _scrape_due(ctx: Context, state: JobState, previous: Status) -> bool:
    return time.monotonic() - state.scraped_at >= ctx.config.resync_seconds * 0.9


async def _scrape(ctx: Context, state: JobState, job: LargeModelJob, pods: list[PodView]) -> None:
    state.scraped_at = time.monotonic()
    progress, pod = await scrape_progress(
        pods,
        job.spec.metrics.port,
        stage_order(job),
        ctx.config.scrape_timeout_seconds,
        preferred=state.progress_pod,
    )
    if progress is not None:
        state.progress, state.progress_pod = progress, pod


async def _write_status(
    ctx: Context,
    state: JobState,
    job: LargeModelJob,
    body: dict[str, Any],
    previous: Status,
    status: Status,
    post_event: Callable[[str, str, str], None],
) -> None:
    """Write status only when it changed; post an event for every transition."""
    old_wire = previous.to_wire()
    new_wire = status.to_wire()
    if old_wire == new_wire and state.last_status is not None:
        return
    raw_old = body.get("status") or {}
    patch = merge_patch(raw_old, new_wire)
    if patch:
        try:
            await ctx.kube.merge_patch(
                JOBS, job_namespace_of(body), job.metadata.name, {"status": patch}, sub="status"
            )
        except ApiError as err:
            if err.status == 404:
                return
            raise
    for event in transition_events(previous, status):
        post_event(event.type, event.reason, event.message)
    if status.phase != previous.phase:
        _job_log(job).info("phase %s → %s", previous.phase.value, status.phase.value)
    state.last_status = status
    ctx.registry.publish_phases()


async def _write_unparseable(
    ctx: Context,
    state: JobState,
    body: dict[str, Any],
    previous: Status,
    error: str,
    post_event: Callable[[str, str, str], None],
) -> None:
    """A spec that does not even parse (only possible if the CRD schema was bypassed)."""
    if previous.phase == JobPhase.FAILED:
        return
    message = f"spec cannot be parsed: {error}"[:1000]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {
        "phase": JobPhase.FAILED.value,
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "InvalidSpec",
                "message": message,
                "lastTransitionTime": stamp,
            }
        ],
    }
    name = body["metadata"]["name"]
    await ctx.kube.merge_patch(JOBS, job_namespace_of(body), name, {"status": patch}, sub="status")
    post_event("Warning", "InvalidSpec", message)
    state.last_status = parse_status(patch)


def job_namespace_of(body: dict[str, Any]) -> str:
    return body["metadata"]["namespace"]


async def _ensure_objects(ctx: Context, state: JobState, job: LargeModelJob) -> None:
    """Apply the job's non-pod objects once per generation (and every ENSURE_EVERY_SECONDS)."""
    generation = int((job.metadata.model_extra or {}).get("generation") or 0)
    done_generation, done_at = state.ensured
    if done_generation == generation and time.monotonic() - done_at < ENSURE_EVERY_SECONDS:
        return
    namespace = job.metadata.namespace or "default"
    applies: list[Awaitable[Any]] = [
        ctx.kube.apply(SERVICES, namespace, build_service(job)),
        ctx.kube.apply(SERVICES, namespace, build_rendezvous_service(job)),
    ]
    if needs_config_map(job):
        applies.append(ctx.kube.apply(CONFIG_MAPS, namespace, build_config_map(job)))
    flavour = gang_flavour(job)
    if flavour is not None:
        api = POD_GROUP_APIS[flavour]
        if await ctx.catalog.has(api.group, api.version, api.plural):
            where = ResourcePath(api.group, api.version, api.plural)
            applies.append(ctx.kube.apply(where, namespace, build_pod_group(job, flavour)))
    if job.spec.metrics.pod_monitor and await ctx.catalog.has(
        POD_MONITOR_GROUP, POD_MONITOR_VERSION, POD_MONITOR_PLURAL
    ):
        where = ResourcePath(POD_MONITOR_GROUP, POD_MONITOR_VERSION, POD_MONITOR_PLURAL)
        applies.append(ctx.kube.apply(where, namespace, build_pod_monitor(job)))
    await asyncio.gather(*applies)
    state.ensured = (generation, time.monotonic())


async def _apply_plan(
    ctx: Context,
    state: JobState,
    job: LargeModelJob,
    status: Status,
    plan: PodPlan,
    verdict: Verdict,
) -> None:
    namespace = job.metadata.namespace or "default"
    kube = ctx.kube

    async def delete(name: str, uid: str, why: str, grace: int | None = None) -> None:
        try:
            await kube.delete(PODS, namespace, name, uid=uid, grace_period_seconds=grace)
        except ApiError as err:
            if err.status not in (404, 409):  # gone already, or a newer pod of that name
                raise
        state.deleted[uid] = time.monotonic()
        _job_log(job).info("deleted pod %s: %s", name, why)

    for name, uid in plan.force_delete:
        await delete(name, uid, "stuck terminating past its grace period", grace=0)
    await asyncio.gather(*(delete(n, u, why) for n, u, why in plan.delete))
    if verdict.action == Action.RESTART_GROUP:
        metrics.POD_RESTARTS.labels(kind="group").inc(
            len(plan.create_workers) or job.spec.workers.replicas
        )
    elif verdict.action == Action.REPLACE:
        metrics.POD_RESTARTS.labels(kind="disruption").inc(len(verdict.replace))

    if plan.create_rendezvous:
        await _create_pod(ctx, state, job, build_rendezvous_pod(job, ctx.config), "rendezvous")
    if plan.create_workers:
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def create(index: int) -> None:
            async with gate:
                pod = build_worker_pod(job, index, status.restarts, ctx.config)
                await _create_pod(ctx, state, job, pod, "worker")

        await asyncio.gather(*(create(i) for i in plan.create_workers))


async def _create_pod(
    ctx: Context, state: JobState, job: LargeModelJob, pod: dict[str, Any], role: str
) -> None:
    name = pod["metadata"]["name"]
    try:
        created = await ctx.kube.create(PODS, pod["metadata"]["namespace"], pod)
    except ApiError as err:
        if err.status == 409:
            return  # it exists: the index will show it
        if err.status in (400, 422) and role == "worker":
            state.rejected = f"the API server rejected worker pod {name}: {err.message}"[:1000]
            state.wake.set()
            _job_log(job).warning("worker pod rejected: %s", err.message)
            return
        raise
    state.created[name] = (view_pod(created), time.monotonic())
    metrics.PODS_CREATED.labels(role=role).inc()


class JobLog(logging.LoggerAdapter):
    """Log lines of one job: `[namespace/name] message`, with both as structured fields."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra.get('namespace')}/{extra.get('job')}] {msg}", kwargs


def job_log(namespace: str, name: str) -> JobLog:
    return JobLog(log, {"job": name, "namespace": namespace})


def _job_log(job: LargeModelJob) -> JobLog:
    return job_log(job.metadata.namespace or "", job.metadata.name)


async def run_job(
    ctx: Context,
    state: JobState,
    snapshot: Callable[[], dict[str, Any]],
    pods: Callable[[], Iterable[PodView]],
    post_event: Callable[[str, str, str], None],
) -> None:
    """The per-job loop run by the kopf daemon: a pass whenever woken or due, until cancelled."""
    failures = 0
    while True:
        state.wake.clear()
        try:
            delay = await reconcile_job(ctx, state, copy.deepcopy(snapshot()), pods(), post_event)
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as err:  # every error is retried: a pass is always safe to repeat
            failures += 1
            reason = f"api{err.status}" if isinstance(err, ApiError) else type(err).__name__
            metrics.RECONCILE_ERRORS.labels(reason=reason).inc()
            delay = min(60.0, 0.5 * 2**failures)
            job_log(*state.key).warning(
                "reconcile failed (retry in %.1fs): %s",
                delay,
                err,
                exc_info=not isinstance(err, ApiError),
            )
        try:
            await asyncio.wait_for(state.wake.wait(), timeout=delay)
            # A burst of pod events (a large job's pods starting) becomes one pass.
            await asyncio.sleep(0.1)
        except TimeoutError:
            pass


async def build_context(config: OperatorConfig) -> Context:
    """Connect to the API server (inside the operator's event loop) and set up shared state."""
    kube = await Kube.connect()
    return Context(kube=kube, config=config, registry=Registry(), catalog=ApiCatalog(kube))


async def run_job_daemon(
    ctx: Context,
    body: Mapping[str, Any],
    index: Mapping[tuple[str, str], Iterable[PodView]],
    post_event: Callable[[str, str, str], None],
) -> None:
    """Glue between kopf's daemon (a live body, the pod index) and run_job."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    state = ctx.registry.state(namespace, name, uid)
    try:
        await run_job(
            ctx,
            state,
            snapshot=lambda: {key: body[key] for key in body},
            pods=lambda: list(index.get((namespace, name), ())),
            post_event=post_event,
        )
    finally:
        ctx.registry.forget(namespace, name, uid)
