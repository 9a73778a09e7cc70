"""A job's status, computed on purpose by one pure function, and the events its changes make.

`build_status` reads what the operator observed (pods, the latest scraped progress, the
failure verdict, problems it found) and the previous status, and returns the whole new
`LargeModelJobStatus`. Nothing else writes status, so the Phase and Workers printer
columns are always what this function says. Phases (docs/operator.md):

  Queued      waiting for Kueue to admit the job (no pods); the Queued condition says why
  Pending     fewer than minReplicas workers running (scheduling, pulling images)
  Running     at least minReplicas workers running, training
  Compressing as Running, in a compression stage
  Restarting  recovering from a failure or a disruption, until all workers run again
  Suspended   runPolicy.suspend: no pods, checkpoints kept
  Succeeded   a worker finished training and no worker is left running   (final)
  Failed      see the Failed condition's reason                         (final)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from lmjob_api import JobPhase, LargeModelJob, LargeModelJobStatus
from lmjob_api.export import stage_order as export_stage_order
from lmjob_api.kept_logs import logs_hint
from lmjob_api.status import (
    EVALUATIONS_KEPT,
    CheckpointStatus,
    Condition,
    EvaluationStatus,
    ProgressStatus,
    StageStatus,
    WorkersStatus,
)
from lmjob_api.trainer_metrics import TrainerProgress, evaluation_order
from lmjob_operator.failures import Action, Verdict
from lmjob_operator.goodput_status import goodput_status
from lmjob_operator.naming import worker_selector
from lmjob_operator.pod_view import PodView, parse_time
from lmjob_operator.progress import final_stages
from lmjob_operator.worker_pod import procs_per_worker

# Conditions whose transitions are the job's phase changes; they get one event per phase.
PHASE_CONDITIONS = ("Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
WARNING_REASONS = frozenset(
    {
        "WorkerFailed",
        "RendezvousLost",
        "WorkerDisrupted",
        "PermanentExitCode",
        "ConfigError",
        "NonFiniteLoss",
        "BackoffLimitExceeded",
        "DeadlineExceeded",
        "InvalidSpec",
        "PodRejected",
        "PodGroupAPIMissing",
        "PodMonitorAPIMissing",
        "PodCreationForbidden",
        "StragglersFound",
        "Unschedulable",
        "GracePeriodShort",
        "Inadmissible",
        "WorkloadRejected",
        "PriorityClassNotFound",
        "StepStalled",
        "TrainerUnresponsive",
    }
)


@dataclass(frozen=True)
class Problem:
    """A condition the reconcile wants reported (gang scheduling, PodMonitor, spec problems)."""

    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post for a transition."""

    type: str  # Normal | Warning
    reason: str
    message: str


def stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stage_order(job: LargeModelJob) -> list[str]:
    """`train`, the compression stages, then the exports; empty for a job running its own
    command."""
    return export_stage_order(job.spec)


def _condition(previous: LargeModelJobStatus, type_: str) -> Condition | None:
    return next((c for c in previous.conditions if c.type == type_), None)


def _set(
    out: dict[str, Condition],
    previous: LargeModelJobStatus,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: datetime,
) -> None:
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = _condition(previous, type_)
    changed = old is None or old.status != value
    out[type_] = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=stamp(now) if changed else old.last_transition_time,
    )


def deadline_exceeded(job: LargeModelJob, previous: LargeModelJobStatus, now: datetime) -> bool:
    """activeDeadlineSeconds, counted from the start, restarted when the job is resumed."""
    limit = job.spec.run_policy.active_deadline_seconds
    start = parse_time(previous.start_time)
    if limit is None or start is None or job.spec.run_policy.suspend:
        return False
    # Like batch/v1 Jobs, the clock restarts when the job resumes: after runPolicy.suspend,
    # and after Kueue admits it again (an eviction is not the job's time to spend).
    for held in ("Suspended", "Queued"):
        cond = _condition(previous, held)
        if cond and cond.status == "False":
            resumed = parse_time(cond.last_transition_time)
            if resumed and resumed > start:
                start = resumed
    return now - start > timedelta(seconds=limit)


def build_status(
    job: LargeModelJob,
    pods: Sequence[PodView],
    progress: TrainerProgress | None,
    previous: LargeModelJobStatus,
    verdict: Verdict,
    now: datetime,
    problems: Sequence[Problem] = (),
) -> LargeModelJobStatus:
    """The job's new status (pure). `verdict` is failures.judge_failures' for these pods."""
    spec = job.spec
    low, _ = spec.workers.bounds
    restarts = previous.restarts + (1 if verdict.action == Action.RESTART_GROUP else 0)
    workers = [p for p in pods if p.is_worker]
    current = [p for p in workers if p.rendezvous_round == previous.restarts and not p.deleting]
    live = [p for p in workers if p.live]
    running = [p for p in current if p.phase == "Running"]
    desired = spec.workers.replicas
    conditions: dict[str, Condition] = {c.type: c for c in previous.conditions}
    invalid = [p for p in problems if p.type == "Failed"]
    queued = next((p for p in problems if p.type == "Queued" and p.status == "True"), None)

    # Phase: final phases stick; then failure, success, suspension, recovery, progress.
    phase, reason, message = previous.phase, "", ""
    if previous.phase.finished:
        pass
    elif invalid:
        phase, reason, message = JobPhase.FAILED, invalid[0].reason, invalid[0].message
    elif verdict.action == Action.FAIL:
        phase, reason, message = JobPhase.FAILED, verdict.reason, _with_hint(job, verdict)
    elif queued is None and deadline_exceeded(job, previous, now):
        phase, reason = JobPhase.FAILED, "DeadlineExceeded"
        message = f"the job ran longer than activeDeadlineSeconds ({spec.run_policy.active_deadline_seconds}s)"
    elif any(p.phase == "Succeeded" for p in current) and not any(p.live for p in current):
        phase, reason = JobPhase.SUCCEEDED, "TrainingCompleted"
        message = "the workers finished" + (
            f" at {progress.stage} step {progress.step}" if progress and progress.stage else ""
        )
    elif spec.run_policy.suspend:
        phase, reason, message = JobPhase.SUSPENDED, "JobSuspended", "runPolicy.suspend is true"
    elif queued is not None:
        phase, reason, message = JobPhase.QUEUED, queued.reason, queued.message
    elif verdict.action in (Action.RESTART_GROUP, Action.REPLACE):
        phase, reason, message = JobPhase.RESTARTING, verdict.reason, _with_hint(job, verdict)
    elif previous.phase == JobPhase.RESTARTING and len(running) < desired:
        old = _condition(previous, "Restarting")
        phase = JobPhase.RESTARTING
        reason, message = (old.reason, old.message) if old else ("Restarting", "")
    elif any(p.phase == "Succeeded" for p in current):
        # Training completed on some worker; the rest are in torchrun's exit barrier.
        phase = previous.phase if previous.phase == JobPhase.COMPRESSING else JobPhase.RUNNING
        reason, message = "WorkersFinishing", "training completed; waiting for every worker to exit"
    elif len(running) >= low:
        in_compression = progress is not None and progress.stage not in ("", "train")
        phase = JobPhase.COMPRESSING if in_compression else JobPhase.RUNNING
        reason = "Compressing" if in_compression else "WorkersRunning"
        message = f"{len(running)} of {desired} workers running"
    else:
        phase, reason = JobPhase.PENDING, "WorkersPending"
        message = f"{len(running)} of {desired} workers running (at least {low} needed)"

    if phase != previous.phase or not previous.phase.finished:
        _phase_conditions(conditions, previous, phase, reason, message, now)
    for problem in problems:
        if problem.type != "Failed":
            _set(
                conditions,
                previous,
                problem.type,
                problem.status,
                problem.reason,
                problem.message,
                now,
            )
    created = conditions.get("Created")
    if (
        workers
        and not any(p.type == "Created" for p in problems)
        and (created is None or created.status != "True")
    ):
        _set(conditions, previous, "Created", True, "WorkersCreated", "worker pods created", now)

    if progress is not None and progress.rank_step_seconds is not None:
        straggling = bool(progress.stragglers)
        _set(
            conditions,
            previous,
            "Stragglers",
            straggling,
            "StragglersFound" if straggling else "NoStragglers",
            _stragglers_message(job, progress),
            now,
        )

    start_time = previous.start_time
    if start_time is None and workers and phase not in (JobPhase.SUSPENDED, JobPhase.FAILED):
        start_time = stamp(now)
    completion_time = previous.completion_time
    if phase.finished and completion_time is None:
        completion_time = stamp(now)

    return LargeModelJobStatus(
        phase=phase,
        conditions=list(conditions.values()),
        workers=WorkersStatus(
            desired=desired,
            active=len(live),
            ready=sum(1 for p in live if p.ready),
            failed=sum(1 for p in current if p.phase == "Failed"),
            selector=worker_selector(job.metadata.name),
            summary=f"{len(live)}/{desired}",
        ),
        world_size=_world_size(job, progress, running, phase),
        restarts=restarts,
        progress=_progress(progress, previous, now),
        checkpoint=_checkpoint(progress, previous),
        stages=_stages(job, progress, previous, final_stages(pods, stage_order(job))),
        evaluations=(
            merge_evaluations(previous.evaluations, progress.evaluations, stage_order(job))
            if progress is not None
            else previous.evaluations
        ),
        stragglers=list(progress.stragglers) if progress is not None else previous.stragglers,
        goodput=goodput_status(job, progress, previous, finished=phase.finished, now=now),
        start_time=start_time,
        completion_time=completion_time,
        observed_generation=(job.metadata.model_extra or {}).get("generation"),
    )


def merge_evaluations(
    previous: Sequence[EvaluationStatus],
    scraped: Sequence[EvaluationStatus],
    stage_order: Sequence[str],
) -> list[EvaluationStatus]:
    """status.evaluations: the union of what status held and what the scrape says, by (stage,
    step), the scrape's loss winning; in stage order, then step; the newest EVALUATIONS_KEPT.
    The trainer exports only its recent evaluations and forgets them on a restart, so status
    is where every one seen stays (an operator restart reads it back as `previous`)."""
    merged = {(e.stage, e.step): e for e in previous}
    merged.update({(e.stage, e.step): e for e in scraped})
    return sorted(merged.values(), key=evaluation_order(stage_order))[-EVALUATIONS_KEPT:]


def _stragglers_message(job: LargeModelJob, progress: TrainerProgress) -> str:
    """Names each straggler, its pod and node and how much slower it is (docs/operator.md)."""
    t = job.spec.training
    threshold = t.stragglers.threshold if t is not None else 0.0
    steps = progress.rank_step_seconds or {}
    median = progress.stragglers[0].median_seconds if progress.stragglers else 0.0
    if not progress.stragglers:
        return (
            f"no rank slower than {threshold:g}× the median step time over {len(steps)} ranks"
            f" in stage {progress.stage}"
        )
    named = []
    for s in progress.stragglers:
        where = " on ".join(x for x in (f"pod {s.pod}" if s.pod else "", s.node) if x)
        ratio = s.step_seconds / median if median > 0 else float("inf")
        named.append(
            f"rank {s.rank}{f' ({where})' if where else ''}: {s.step_seconds:.3g}s per step "
            f"({s.data_wait_seconds:.3g}s of it waiting for data), {ratio:.1f}× the median"
        )
    return (
        f"stage {progress.stage}, median step {median:.3g}s over {len(steps)} ranks, "
        f"threshold {threshold:g}×: " + "; ".join(named)
    )


def _with_hint(job: LargeModelJob, verdict: Verdict) -> str:
    """A worker's failure names the command showing its kept last lines (its pod may be
    deleted by the restart or by cleanPodPolicy)."""
    if verdict.worker is None:
        return verdict.message
    return f"{verdict.message}; last lines: {logs_hint(job.metadata.name, verdict.worker)}"


def _phase_conditions(
    conditions: dict[str, Condition],
    previous: LargeModelJobStatus,
    phase: JobPhase,
    reason: str,
    message: str,
    now: datetime,
) -> None:
    running = phase in (JobPhase.RUNNING, JobPhase.COMPRESSING)
    _set(conditions, previous, "Running", running, reason, message, now)
    if phase == JobPhase.RESTARTING or "Restarting" in conditions:
        restarting = phase == JobPhase.RESTARTING
        _set(
            conditions,
            previous,
            "Restarting",
            restarting,
            reason if restarting else "WorkersRecovered",
            message if restarting else "",
            now,
        )
    if phase == JobPhase.SUSPENDED or "Suspended" in conditions:
        suspended = phase == JobPhase.SUSPENDED
        _set(
            conditions,
            previous,
            "Suspended",
            suspended,
            "JobSuspended" if suspended else "JobResumed",
            message if suspended else "runPolicy.suspend is false",
            now,
        )
    if phase == JobPhase.SUCCEEDED:
        _set(conditions, previous, "Succeeded", True, reason, message, now)
    if phase == JobPhase.FAILED:
        _set(conditions, previous, "Failed", True, reason, message, now)


def _world_size(
    job: LargeModelJob,
    progress: TrainerProgress | None,
    running: Sequence[PodView],
    phase: JobPhase,
) -> int:
    if phase not in (JobPhase.RUNNING, JobPhase.COMPRESSING, JobPhase.RESTARTING):
        return 0
    if progress is not None and progress.world_size:
        return progress.world_size
    return len(running) * procs_per_worker(job)


def _progress(
    progress: TrainerProgress | None, previous: LargeModelJobStatus, now: datetime
) -> ProgressStatus | None:
    if progress is None:
        return previous.progress
    new = ProgressStatus(
        stage=progress.stage,
        step=progress.step,
        total_steps=progress.total_steps,
        loss=progress.loss,
        tokens_per_second=progress.tokens_per_second,
    )
    old = previous.progress
    if old is not None and old.model_copy(update={"updated_at": None}) == new:
        return old  # unchanged numbers: keep updatedAt so status is not rewritten
    return new.model_copy(update={"updated_at": stamp(now)})


def _stages(
    job: LargeModelJob,
    progress: TrainerProgress | None,
    previous: LargeModelJobStatus,
    final: tuple[StageStatus, ...] | None,
) -> list[StageStatus]:
    """A finished rank 0's termination message beats the last scrape, which may predate the
    end; once the job has finished, its stages stand (its pods may be cleaned up)."""
    if final is not None:
        return list(final)
    if previous.phase.finished and previous.stages:
        return previous.stages
    if progress is not None and progress.stages:
        return list(progress.stages)
    if previous.stages:
        return previous.stages
    return [StageStatus(name=name) for name in stage_order(job)]


def transition_events(previous: LargeModelJobStatus, new: LargeModelJobStatus) -> list[Event]:
    """One event per phase change and per change of any other condition (pure)."""
    events: list[Event] = []
    old = {c.type: c for c in previous.conditions}
    if new.phase != previous.phase:
        cause = _phase_cause(new)
        reason = cause.reason if cause else new.phase.value
        text = f"{previous.phase.value} → {new.phase.value}"
        if cause and cause.message:
            text += f": {cause.message}"
        kind = "Warning" if reason in WARNING_REASONS else "Normal"
        events.append(Event(kind, reason, text))
    for cond in new.conditions:
        if cond.type in PHASE_CONDITIONS:
            continue
        before = old.get(cond.type)
        if before is None or before.status != cond.status:
            kind = "Warning" if cond.reason in WARNING_REASONS else "Normal"
            events.append(Event(kind, cond.reason, cond.message or f"{cond.type}={cond.status}"))
    return events


def _phase_cause(status: LargeModelJobStatus) -> Condition | None:
    wanted = {
        JobPhase.FAILED: ("Failed", "True"),
        JobPhase.SUCCEEDED: ("Succeeded", "True"),
        JobPhase.SUSPENDED: ("Suspended", "True"),
        JobPhase.RESTARTING: ("Restarting", "True"),
        JobPhase.QUEUED: ("Queued", "True"),
    }.get(status.phase, ("Running", "True" if status.phase != JobPhase.PENDING else "False"))
    return next(
        (c for c in status.conditions if (c.type, c.status) == wanted),
        None,
    )


def status_patch(status: LargeModelJobStatus) -> dict:
    """The status as written to the API (camelCase, unset fields left out)."""
    return status.to_wire()


def _checkpoint(
    progress: TrainerProgress | None, previous: LargeModelJobStatus
) -> CheckpointStatus | None:
    """The newest checkpoint, with how long a save took (kept across restarts: a resumed
    trainer reports none until it saves again)."""
    if not (progress and progress.checkpoint_path):
        return previous.checkpoint
    seconds = progress.checkpoint_write_seconds
    if seconds is None and previous.checkpoint is not None:
        seconds = previous.checkpoint.save_seconds
    return CheckpointStatus(
        latest=progress.checkpoint_path,
        step=progress.checkpoint_step,
        save_seconds=round(seconds, 3) if seconds is not None else None,
    )
