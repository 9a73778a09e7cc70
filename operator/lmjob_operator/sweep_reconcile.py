"""The sweep's reconcile: sweep + its trial jobs → next status written, trial jobs made to match.

Each pass reads the sweep afresh (its status is the search's only state), lists the trial
jobs, asks the engine (lmjob_sweep.engine.decide, pure) for the next status, writes it, and
only then creates the jobs of new trials and deletes those of stopped ones. The write is
conditional on the resourceVersion read, so two passes (a restarted operator, a second
replica) can never both act on one state; every trial job has one possible name, a
creation that finds its job there is fine, and a deletion of a job already gone too: a
pass can be cut off anywhere and re-run, in any process, without creating a trial twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lmjob_api import GROUP, PLURAL, VERSION
from lmjob_api.sweep import PLURAL as SWEEP_PLURAL
from lmjob_api.sweep import LargeModelSweep, LargeModelSweepStatus, SweepPhase, TrialStatus
from lmjob_operator import metrics
from lmjob_operator.kube import ApiError, ResourcePath
from lmjob_operator.plan import IDLE_SECONDS, merge_patch
from lmjob_operator.registry import Context, SweepState
from lmjob_operator.sweep_trials import (
    build_invalid_status,
    build_trial_job,
    is_invalid,
    jobs_to_stop,
    observe_trials,
    owned_by,
    parse_sweep,
    parse_sweep_status,
    sweep_events,
    trial_selector,
)
from lmjob_sweep.engine import decide

log = logging.getLogger(__name__)

SWEEPS = ResourcePath(GROUP, VERSION, SWEEP_PLURAL)
JOBS = ResourcePath(GROUP, VERSION, PLURAL)
MIN_PASS_SECONDS = 0.5

PostEvent = Callable[[str, str, str], None]


class SweepLog(logging.LoggerAdapter):
    """Log lines of one sweep: `[namespace/name] message`, with both as structured fields."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra.get('namespace')}/{extra.get('sweep')}] {msg}", kwargs


def sweep_log(namespace: str, name: str) -> SweepLog:
    return SweepLog(log, {"sweep": name, "namespace": namespace})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def reconcile_sweep(ctx: Context, state: SweepState, post_event: PostEvent) -> float:
    """One pass over one sweep; returns seconds until the next pass is due without events."""
    namespace, name = state.key
    try:
        body = await ctx.kube.request("GET", SWEEPS.url(namespace, name), resource=SWEEP_PLURAL)
    except ApiError as err:
        if err.status == 404:
            return IDLE_SECONDS
        raise
    meta = body["metadata"]
    if meta.get("deletionTimestamp") or meta.get("uid") != state.uid:
        return IDLE_SECONDS  # going, or a new sweep of that name with a daemon of its own
    previous = parse_sweep_status(body.get("status"))
    if is_invalid(previous):
        state.last_status = previous
        return IDLE_SECONDS  # an invalid spec is never retried
    sweep, problems = parse_sweep(body)
    if sweep is None:
        status = build_invalid_status(previous, problems, _now())
        await _write_status(ctx, state, body, previous, status, post_event)
        sweep_log(namespace, name).warning("invalid: %s", status.conditions[-1].message)
        return IDLE_SECONDS

    listed = await ctx.kube.request(
        "GET",
        JOBS.url(namespace),
        resource=PLURAL,
        query=[("labelSelector", trial_selector(name))],
    )
    jobs = listed.get("items") or []
    observed = observe_trials(jobs, state.uid, previous.trials if previous else ())
    decision = decide(name, sweep.spec, previous, observed, _now())
    # The status first: once it names a trial, every later pass (in any process) makes
    # that trial's job and no other; a job made before the write could be sampled again.
    await _write_status(ctx, state, body, previous, decision.status, post_event)

    live = {j["metadata"]["name"]: j for j in jobs if owned_by(j, state.uid)}
    stop = dict.fromkeys([*decision.stop, *jobs_to_stop(decision.status, observed)])
    await asyncio.gather(
        *(_create_trial(ctx, state, body, sweep, trial, post_event) for trial in decision.create),
        *(_stop_trial(ctx, state, job, live.get(job)) for job in stop),
    )
    if decision.status.phase in (SweepPhase.SUCCEEDED, SweepPhase.FAILED):
        return IDLE_SECONDS
    return ctx.config.resync_seconds


async def _write_status(
    ctx: Context,
    state: SweepState,
    body: dict[str, Any],
    previous: LargeModelSweepStatus | None,
    status: LargeModelSweepStatus,
    post_event: PostEvent,
) -> None:
    """Write status when it changed, only over the version read (409 otherwise: the pass is
    retried from a fresh read), then post an event for every transition."""
    meta = body["metadata"]
    patch = merge_patch(body.get("status") or {}, status.to_wire())
    if patch:
        await ctx.kube.merge_patch(
            SWEEPS,
            meta["namespace"],
            meta["name"],
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch},
            sub="status",
        )
        for event in sweep_events(previous, status):
            post_event(event.type, event.reason, event.message)
        old_phase = previous.phase if previous else None
        if status.phase != old_phase:
            sweep_log(meta["namespace"], meta["name"]).info(
                "phase %s → %s", old_phase.value if old_phase else "-", status.phase.value
            )
    state.last_status = status
    ctx.registry.publish_sweeps()


async def _create_trial(
    ctx: Context,
    state: SweepState,
    body: dict[str, Any],
    sweep: LargeModelSweep,
    trial: TrialStatus,
    post_event: PostEvent,
) -> None:
    job = build_trial_job(body, sweep, trial)
    namespace = job["metadata"]["namespace"]
    try:
        await ctx.kube.create(JOBS, namespace, job)
    except ApiError as err:
        if err.status == 409:
            return  # made by an earlier pass: the next pass observes it
        if err.status in (400, 403, 422):
            # Refused (invalid, or forbidden: quota, admission policy): the trial stays
            # Pending and is retried each pass; say why once, where the user looks.
            if trial.name not in state.rejected:
                state.rejected.add(trial.name)
                post_event("Warning", "TrialRejected", f"trial {trial.number}: {err.message}")
                sweep_log(namespace, sweep.metadata.name).warning(
                    "trial job %s refused: %s", trial.name, err.message
                )
            return
        raise
    state.rejected.discard(trial.name)
    metrics.TRIAL_JOBS.labels(action="created").inc()
    values = ", ".join(f"{k}={v}" for k, v in trial.parameters.items())
    post_event("Normal", "TrialCreated", f"trial {trial.number}: job {trial.name} ({values})")
    sweep_log(namespace, sweep.metadata.name).info("created trial job %s (%s)", trial.name, values)


async def _stop_trial(
    ctx: Context, state: SweepState, name: str, job: dict[str, Any] | None
) -> None:
    """Delete a stopped trial's job (its pods go with it); only the incarnation seen."""
    namespace = state.key[0]
    if job is None or job["metadata"].get("deletionTimestamp"):
        return  # gone, or going
    try:
        await ctx.kube.delete(JOBS, namespace, name, uid=job["metadata"].get("uid", ""))
    except ApiError as err:
        if err.status not in (404, 409):
            raise
        return
    metrics.TRIAL_JOBS.labels(action="stopped").inc()
    sweep_log(*state.key).info("deleted trial job %s", name)


async def run_sweep(
    ctx: Context, state: SweepState, post_event: PostEvent, stopped: Any = None
) -> None:
    """The per-sweep loop run by the kopf daemon: a pass whenever woken (a trial job
    changed) or due, until `stopped` is set. Every error is retried: a pass is safe to repeat."""
    failures = 0
    while not stopped:
        state.wake.clear()
        began = time.monotonic()
        try:
            delay = await reconcile_sweep(ctx, state, post_event)
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as err:
            failures += 1
            reason = f"api{err.status}" if isinstance(err, ApiError) else type(err).__name__
            metrics.RECONCILE_ERRORS.labels(reason=reason).inc()
            delay = min(60.0, 0.5 * 2**failures)
            conflict = isinstance(err, ApiError) and err.status == 409
            sweep_log(*state.key).log(
                logging.INFO if conflict else logging.WARNING,
                "sweep pass failed (retry in %.1fs): %s",
                delay,
                err,
                exc_info=not isinstance(err, (ApiError, ValueError)),
            )
        if await _wait(state, delay, stopped):
            # A burst of trial job events becomes one pass.
            await asyncio.sleep(max(0.1, MIN_PASS_SECONDS - (time.monotonic() - began)))


async def _wait(state: SweepState, seconds: float, stopped: Any) -> bool:
    """Wait `seconds`, or less if the sweep is woken or stopped; True when it was woken."""
    waiters = [asyncio.ensure_future(state.wake.wait())]
    if stopped is not None:
        waiters.append(asyncio.ensure_future(stopped.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return state.wake.is_set()
