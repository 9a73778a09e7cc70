"""The one reconcile: observed pods + spec + previous status → status written, pods made to match.

Each pass is: observe (kopf's pod index plus what this process just did), decide (pure:
failures.judge_failures, status.build_status, plan.plan_pods), then act in a fixed order —
status before any deletion (so a restart is counted before a pod goes), the job's other
objects, the log tails of ended or doomed workers (log_keeper), deletions, creations, then status with the new pods in. Every object has exactly one possible name, creations
that find their object already there are fine, and deletions carry the uid of what they
delete: a pass can be re-run at any point, in any process, without duplicating a pod.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from lmjob_api import GROUP, PLURAL, VERSION, JobPhase, LargeModelJob
from lmjob_api import LargeModelJobStatus as Status
from lmjob_operator import kueue_sync, metrics
from lmjob_operator.config_map import build_config_map, needs_config_map
from lmjob_operator.failures import (
    Action,
    CreateOutcome,
    Verdict,
    judge_create_error,
    judge_failures,
)
from lmjob_operator.gang_condition import gang_problem
from lmjob_operator.grace_condition import grace_problem
from lmjob_operator.job_log import JobLog, job_log
from lmjob_operator.kube import CONFIG_MAPS, PODS, SERVICES, ApiError, ResourcePath
from lmjob_operator.kueue_workload import (
    RENDEZVOUS,
    WORKERS,
    Placement,
    apply_placement,
    is_true,
    queue_name,
)
from lmjob_operator.log_keeper import keep_worker_logs
from lmjob_operator.naming import ROLE_RENDEZVOUS
from lmjob_operator.plan import (
    IDLE_SECONDS,
    PodPlan,
    merge_patch,
    next_wake,
    observe,
    parse_job,
    parse_status,
    plan_pods,
)
from lmjob_operator.pod_group import (
    POD_GROUP_APIS,
    Flavour,
    build_pod_group,
    gang_candidates,
    gang_flavour,
)
from lmjob_operator.pod_monitor import (
    POD_MONITOR_GROUP,
    POD_MONITOR_PLURAL,
    POD_MONITOR_VERSION,
    build_pod_monitor,
)
from lmjob_operator.pod_view import PodView, view_pod
from lmjob_operator.progress import scrape_progress
from lmjob_operator.registry import Context, JobState
from lmjob_operator.rendezvous import build_rendezvous_pod, build_rendezvous_service
from lmjob_operator.service import build_service
from lmjob_operator.spec_checks import check_runnable
from lmjob_operator.stall import (
    STALLED,
    Stall,
    judge_stall,
    stall_verdict,
    stalled_problem,
    watch_scrape,
)
from lmjob_operator.status import Problem, build_status, stage_order, transition_events
from lmjob_operator.worker_pod import build_worker_pod

log = logging.getLogger(__name__)

JOBS = ResourcePath(GROUP, VERSION, PLURAL)
# Re-apply the ConfigMap/Services/PodGroup this often even without a spec change, so an
# object deleted by hand comes back.
ENSURE_EVERY_SECONDS = 600.0
MIN_PASS_SECONDS = 0.5


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
    pods = _observe(state, indexed, uid, now)
    rendezvous = next((p for p in pods if p.role == ROLE_RENDEZVOUS and not p.deleting), None)

    gang = await _served_gang(ctx, job)
    problems = await _problems(ctx, job, state, gang, pods)
    grace = grace_problem(job, previous.checkpoint.save_seconds if previous.checkpoint else None)
    if grace is not None:
        problems.append(grace)
    gate = await _kueue_gate(ctx, job, pods, previous, problems)
    if gate is not None and not gate.queued:
        job = _at_admitted_size(job, gate.admitted_workers)
    queued = gate is not None and gate.queued
    active = not previous.phase.finished and not job.spec.run_policy.suspend and not queued
    verdict = Verdict()
    healthy = active and not any(p.type == "Failed" for p in problems)
    if healthy:
        verdict = judge_failures(pods, rendezvous, job.spec.run_policy, previous.restarts)
    if active and _scrape_due(ctx, state):
        await _scrape(ctx, state, job, pods, previous.restarts)
    stall = None
    if healthy and verdict.action == Action.NONE:
        stall = judge_stall(job, state.watch, pods, previous.restarts, time.monotonic())
        if stall is not None:
            verdict = stall_verdict(stall, job.spec.run_policy, previous.restarts)
    stalled = stalled_problem(
        stall,
        next((c for c in previous.conditions if c.type == STALLED), None),
        state.watch,
        pods,
        previous.restarts,
        finished=previous.phase.finished,
    )
    if stalled is not None:
        problems.append(stalled)
    status = build_status(job, pods, state.progress, previous, verdict, now, problems)
    plan = plan_pods(job, status, pods, verdict, now, ctx.config)
    # Deleting is what cannot be taken back: a restart being counted (or the job failing)
    # is written before any pod goes. Creations are written after, with the new pods in.
    status_first = bool(plan.delete or plan.force_delete or plan.delete_job)
    if status_first or not (plan.create_workers or plan.create_rendezvous):
        await _write_status(ctx, state, job, body, previous, status, post_event)
        _count_stall(job, stall)
        previous_written = True
    else:
        previous_written = False
    if _finish_due(gate, status, pods):
        assert gate is not None and gate.workload is not None
        cause = next((c for c in status.conditions if c.type == status.phase.value), None)
        await kueue_sync.finish(
            ctx.kube,
            job,
            gate.workload,
            succeeded=status.phase == JobPhase.SUCCEEDED,
            message=cause.message if cause else status.phase.value,
        )

    if plan.delete_job:
        _job_log(job).info("deleting job: ttlSecondsAfterFinished passed")
        try:
            await ctx.kube.delete(JOBS, namespace, name, uid=uid)
        except ApiError as err:
            if err.status not in (404, 409):
                raise
        return IDLE_SECONDS
    ensure_with_pods = False
    if not status.phase.finished and status.phase not in (JobPhase.SUSPENDED, JobPhase.QUEUED):
        if gang is not None:
            # A gang scheduler must find the PodGroup before the first of its pods.
            await _ensure_objects(ctx, state, job, gang)
        else:
            # Nothing checks a pod's Service or ConfigMap when it is created (the kubelet waits
            # for a missing ConfigMap): they go out with the pods, not before them.
            ensure_with_pods = True
    # Before any pod goes: its log's tail outlives it (bounded in time, never raises).
    await keep_worker_logs(
        ctx.kube, job, pods, {name for name, _, _ in plan.delete}, state.logs_kept
    )
    placements = gate.placements if gate is not None else {}
    await _apply_plan(
        ctx, state, job, status, plan, verdict, gang, ensure=ensure_with_pods, placements=placements
    )
    if not previous_written:
        pods = _observe(state, pods, uid, datetime.now(UTC))
        status = build_status(job, pods, state.progress, previous, verdict, now, problems)
        await _write_status(ctx, state, job, body, previous, status, post_event)
        _count_stall(job, stall)
    wake = next_wake(job, status, pods, now, ctx.config)
    if _workload_unfinished(gate, status) and not _finish_due(gate, status, pods):
        # Its Workload is marked Finished once the pods are gone: look again soon.
        wake = min(wake, ctx.config.resync_seconds)
    return wake


async def _kueue_gate(
    ctx: Context,
    job: LargeModelJob,
    pods: list[PodView],
    previous: Status,
    problems: list[Problem],
) -> kueue_sync.Gate | None:
    """Kueue's verdict on a job that names a queue (None for any other job, and for one that
    cannot run at all); its Queued condition joins `problems` while the job is not done."""
    if queue_name(job) is None or any(p.type == "Failed" for p in problems):
        return None
    gate = await kueue_sync.sync(
        ctx.kube,
        job,
        ctx.config,
        pods_active=bool(pods),
        finished=previous.phase.finished,
        rendezvous_round=previous.restarts,
    )
    if not previous.phase.finished:
        problems.append(gate.condition())
    return gate


def _finish_due(gate: kueue_sync.Gate | None, status: Status, pods: list[PodView]) -> bool:
    """Whether to mark the job's Workload Finished now: the job has finished and none of its
    pods still runs (the rendezvous store is deleted as the job finishes)."""
    return _workload_unfinished(gate, status) and all(p.finished for p in pods)


def _workload_unfinished(gate: kueue_sync.Gate | None, status: Status) -> bool:
    """The job has finished but its Workload is not marked so yet."""
    if gate is None or gate.workload is None or not status.phase.finished:
        return False
    return not is_true(gate.workload, "Finished")


def _at_admitted_size(job: LargeModelJob, admitted: int | None) -> LargeModelJob:
    """The job as it runs: Kueue may admit fewer workers than asked (partial admission, an
    elastic job's minReplicas), and a job scaled up after admission keeps its admitted size
    until it is admitted again (docs/kueue.md, "Elastic resizes")."""
    if admitted is None or admitted >= job.spec.workers.replicas:
        return job
    workers = job.spec.workers.model_copy(update={"replicas": admitted})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"workers": workers})})


def _observe(state: JobState, indexed: Iterable[PodView], uid: str, now: datetime) -> list[PodView]:
    """plan.observe with the clocks read here, and the expectations it keeps stored back."""
    seen = observe(state, indexed, uid, now=now, now_mono=time.monotonic())
    state.created, state.deleted = seen.created, seen.deleted
    return seen.pods


async def _served_gang(ctx: Context, job: LargeModelJob) -> Flavour | None:
    """The gang flavour of the job among the PodGroup APIs the cluster serves (discovery,
    cached by ctx.catalog); None without gang scheduling or when none is served."""
    served = [
        f
        for f in gang_candidates(job)
        if await ctx.catalog.has(
            POD_GROUP_APIS[f].group, POD_GROUP_APIS[f].version, POD_GROUP_APIS[f].plural
        )
    ]
    return gang_flavour(job, served)


async def _problems(
    ctx: Context, job: LargeModelJob, state: JobState, gang: Flavour | None, pods: list[PodView]
) -> list[Problem]:
    problems: list[Problem] = []
    invalid = check_runnable(job)
    if invalid:
        problems.append(Problem("Failed", "True", "InvalidSpec", "; ".join(invalid)))
    if state.rejected:
        problems.append(Problem("Failed", "True", "PodRejected", state.rejected))
    if state.forbidden:
        problems.append(Problem("Created", "False", "PodCreationForbidden", state.forbidden))
    problem = gang_problem(job, gang, pods)
    if problem is not None:
        problems.append(problem)
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


def _count_stall(job: LargeModelJob, stall: Stall | None) -> None:
    """Once the status saying so is written: a pass retried after a failed write acts on the
    same stall again, one after a written restart no longer sees it (another round)."""
    if stall is None:
        return
    _job_log(job).warning("hang: %s", stall.message)
    metrics.STALLS.labels(
        namespace=job.metadata.namespace or "", job=job.metadata.name, reason=stall.reason
    ).inc()


def _scrape_due(ctx: Context, state: JobState) -> bool:
    return time.monotonic() - state.scraped_at >= ctx.config.resync_seconds * 0.9


async def _scrape(
    ctx: Context, state: JobState, job: LargeModelJob, pods: list[PodView], round_: int
) -> None:
    state.scraped_at = time.monotonic()
    progress, pod = await scrape_progress(
        pods,
        job.spec.metrics.port,
        stage_order(job),
        ctx.config.scrape_timeout_seconds,
        preferred=state.progress_pod,
        job=job.metadata.name,
    )
    if progress is not None:
        state.progress, state.progress_pod = progress, pod
    state.watch = watch_scrape(state.watch, round_, progress, time.monotonic())


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
    # Against what this process last wrote: the body may not show that write yet.
    base = old_wire if state.last_status is not None else (body.get("status") or {})
    patch = merge_patch(base, new_wire)
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
    goodput = status.goodput.ratio if status.goodput is not None else None
    metrics.set_job_goodput(job_namespace_of(body), job.metadata.name, goodput)


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


async def _ensure_objects(
    ctx: Context, state: JobState, job: LargeModelJob, gang: Flavour | None
) -> None:
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
    if gang is not None:
        applies.append(_apply_pod_group(ctx, job, gang))
    if job.spec.metrics.pod_monitor and await ctx.catalog.has(
        POD_MONITOR_GROUP, POD_MONITOR_VERSION, POD_MONITOR_PLURAL
    ):
        where = ResourcePath(POD_MONITOR_GROUP, POD_MONITOR_VERSION, POD_MONITOR_PLURAL)
        applies.append(ctx.kube.apply(where, namespace, build_pod_monitor(job)))
    await asyncio.gather(*applies)
    state.ensured = (generation, time.monotonic())


async def _apply_pod_group(ctx: Context, job: LargeModelJob, gang: Flavour) -> None:
    api = POD_GROUP_APIS[gang]
    where = ResourcePath(api.group, api.version, api.plural)
    namespace = job.metadata.namespace or "default"
    group = build_pod_group(job, gang)
    try:
        await ctx.kube.apply(where, namespace, group)
    except ApiError as err:
        if err.status != 422 or gang != "kubernetes":
            raise
        # Kubernetes' PodGroup is immutable: a new minReplicas makes a new one. Pods already
        # placed keep running; pods created later are placed against the new gang size.
        _job_log(job).info("replacing PodGroup (gang size changed): %s", err.message)
        name = group["metadata"]["name"]
        try:
            await ctx.kube.delete(where, namespace, name)
        except ApiError as gone:
            if gone.status != 404:
                raise
        await ctx.kube.apply(where, namespace, group)


async def _apply_plan(
    ctx: Context,
    state: JobState,
    job: LargeModelJob,
    status: Status,
    plan: PodPlan,
    verdict: Verdict,
    gang: Flavour | None,
    ensure: bool = False,
    placements: Mapping[str, Placement] | None = None,
) -> None:
    """Delete, then create what the plan says; with `ensure`, the job's other objects are
    applied next to the creations (after a new job's first pod: it goes out alone, as the
    API server answers one request faster than a burst). `placements`: where Kueue admitted
    each pod set (its flavors' node labels and tolerations)."""
    placements = placements or {}

    def placed(pod: dict[str, Any], pod_set: str) -> dict[str, Any]:
        return apply_placement(pod, placements[pod_set]) if pod_set in placements else pod

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
    await asyncio.gather(*(delete(n, u, why, verdict.grace_seconds) for n, u, why in plan.delete))
    if verdict.action == Action.RESTART_GROUP:
        metrics.POD_RESTARTS.labels(kind="group").inc(
            len(plan.create_workers) or job.spec.workers.replicas
        )
    elif verdict.action == Action.REPLACE:
        metrics.POD_RESTARTS.labels(kind="disruption").inc(len(verdict.replace))

    if plan.create_rendezvous or plan.create_workers:
        state.forbidden = ""  # set again below if the API server still forbids a pod
    gate = asyncio.Semaphore(ctx.config.create_concurrency)
    save_seconds = status.checkpoint.save_seconds if status.checkpoint else None

    async def create(index: int) -> None:
        async with gate:
            if state.rejected:
                return  # one refusal fails the job: no more pods to create
            pod = build_worker_pod(
                job, index, status.restarts, ctx.config, gang=gang, save_seconds=save_seconds
            )
            pod = placed(pod, WORKERS)
            await _create_pod(ctx, state, job, pod, "worker")

    workers = list(plan.create_workers)
    if workers and plan.create_rendezvous:
        # A job's first pass: one worker alone first. Its answer also proves the namespace
        # admits our pods (a refusal or quota stops the rest before they are sent).
        await create(workers.pop(0))
    # The rendezvous pod goes with the other workers: their agents wait for the rendezvous
    # endpoint on their own (torchrun's c10d join timeout).
    creations: list[Awaitable[None]] = [_ensure_objects(ctx, state, job, gang)] if ensure else []
    if plan.create_rendezvous:
        pod = placed(build_rendezvous_pod(job, ctx.config), RENDEZVOUS)
        creations.append(_create_pod(ctx, state, job, pod, "rendezvous"))
    creations += [create(i) for i in workers]
    await asyncio.gather(*creations)


async def _create_pod(
    ctx: Context, state: JobState, job: LargeModelJob, pod: dict[str, Any], role: str
) -> None:
    name = pod["metadata"]["name"]
    try:
        created = await ctx.kube.create(PODS, pod["metadata"]["namespace"], pod)
    except ApiError as err:
        outcome = judge_create_error(err.status, err.message)
        if outcome == CreateOutcome.EXISTS:
            return  # the index will show it
        if outcome == CreateOutcome.WAIT:
            state.forbidden = f"creating {role} pod {name} is forbidden: {err.message}"[:1000]
            _job_log(job).warning("%s pod forbidden: %s", role, err.message)
            return
        if outcome == CreateOutcome.REFUSED:
            # As built from this spec it never will pass: the next pass fails the job
            # (PodRejected) and creates nothing more. The first refusal is the one reported.
            if not state.rejected:
                state.rejected = (
                    f"the API server refused {role} pod {name} ({err.status}): {err.message}"
                )[:1000]
            state.wake.set()
            _job_log(job).warning("%s pod refused: %s", role, err.message)
            return
        raise
    state.created[name] = (view_pod(created), time.monotonic())
    metrics.PODS_CREATED.labels(role=role).inc()


def _job_log(job: LargeModelJob) -> JobLog:
    return job_log(job.metadata.namespace or "", job.metadata.name, log)


async def run_job(
    ctx: Context,
    state: JobState,
    snapshot: Callable[[], dict[str, Any]],
    pods: Callable[[], Iterable[PodView]],
    post_event: Callable[[str, str, str], None],
    stopped: Any = None,
) -> None:
    """The per-job loop run by the kopf daemon: a pass whenever woken or due, until `stopped`
    (kopf's DaemonStopped: the job is being deleted or the operator exits) is set."""
    failures = 0
    while not stopped:
        state.wake.clear()
        began = time.monotonic()
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
            job_log(*state.key, log).warning(
                "reconcile failed (retry in %.1fs): %s",
                delay,
                err,
                exc_info=not isinstance(err, ApiError),
            )
        if await _sleep(state, delay, stopped):
            # A burst of pod events (a large job's pods starting) becomes one pass, and a
            # job is reconciled at most every MIN_PASS_SECONDS while its pods churn.
            await _sleep(None, max(0.1, MIN_PASS_SECONDS - (time.monotonic() - began)), stopped)


async def _sleep(state: JobState | None, seconds: float, stopped: Any) -> bool:
    """Wait `seconds`, or less if the job is woken or stopped; True when it was woken."""
    waiters = [asyncio.ensure_future(state.wake.wait())] if state is not None else []
    if stopped is not None:
        waiters.append(asyncio.ensure_future(stopped.wait()))
    if not waiters:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return state is not None and state.wake.is_set()


async def run_job_daemon(
    ctx: Context,
    body: Mapping[str, Any],
    index: Mapping[tuple[str, str], Iterable[PodView]],
    post_event: Callable[[str, str, str], None],
    stopped: Any = None,
) -> None:
    """Glue between kopf's daemon (a live body, the pod index, its stop flag) and run_job."""
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
            stopped=stopped,
        )
    finally:
        ctx.registry.forget(namespace, name, uid)
