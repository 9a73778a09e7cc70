"""One step of a sweep: status + what became of each trial's job → next status, jobs to
create and jobs to stop.

The status is the search's only state. Every call rebuilds the Optuna study from it (study.py),
feeds it the evaluations seen since the last call, in step order, asking the pruner after each
as a live trial would, closes the trials whose jobs finished, and samples new trials while
there is room. The same status and observations give the same decision, so a restarted
operator, or `lmjob sweep` after Ctrl-C, carries on where it stopped: a trial is written to the
status before its job is created, and a trial whose job exists is never sampled again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from lmjob_api.status import Condition
from lmjob_api.sweep import (
    FINISHED_TRIAL_STATES,
    BestTrial,
    Direction,
    EarlyStoppingType,
    LargeModelSweepSpec,
    LargeModelSweepStatus,
    SweepPhase,
    TrialReport,
    TrialState,
    TrialStatus,
)
from lmjob_api.sweep_checks import check_sweep, coerce, grid_size, trial_spec, validate_spec
from lmjob_sweep import study as studies

# Job phases (lmjob_api.status.JobPhase) that end a trial.
_SUCCEEDED = "Succeeded"
_FAILED = "Failed"
# Reports kept per trial: a long trial's early evaluations matter least to the pruners.
MAX_REPORTS = 200


@dataclass(frozen=True)
class TrialObservation:
    """What became of one trial's job, read from its status (or a local run)."""

    exists: bool
    phase: str = ""
    """The job's status.phase (Pending, Running, Compressing, Succeeded, Failed, ...)."""
    reports: tuple[tuple[int, float], ...] = ()
    """(step, evaluation loss) of the training stage so far, in step order."""
    stage_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Each finished stage's metrics (status.stages[].metrics), by stage name."""
    message: str = ""
    """Why it failed, when it did."""


@dataclass(frozen=True)
class Decision:
    status: LargeModelSweepStatus
    """The next status: save it before acting on `create` and `stop`."""
    create: tuple[TrialStatus, ...]
    """Trials whose job must be created (Pending trials whose job does not exist)."""
    stop: tuple[str, ...]
    """Jobs of trials that were pruned or are no longer wanted, to stop."""


def trial_job_name(sweep: str, number: int) -> str:
    """The LargeModelJob name of trial `number`."""
    return f"{sweep}-{number}"


def planned_trials(spec: LargeModelSweepSpec) -> int:
    """How many trials the sweep runs: maxTrials, or every cell of a smaller grid."""
    if spec.algorithm.type == "grid":
        return min(spec.max_trials, grid_size(spec))
    return spec.max_trials


def _condition(kind: str, reason: str, message: str, now: str) -> Condition:
    return Condition(
        type=kind, status="True", reason=reason, message=message, last_transition_time=now
    )


def _better(spec: LargeModelSweepSpec, a: float, b: float) -> bool:
    return a > b if spec.objective.direction == Direction.MAXIMIZE else a < b


def _merge_reports(trial: TrialStatus, seen: tuple[tuple[int, float], ...]) -> list[TrialReport]:
    """Reports the status lacks, in step order (later steps only: earlier ones were judged)."""
    last = trial.reports[-1].step if trial.reports else -1
    return [
        TrialReport(step=step, value=value)
        for step, value in sorted(seen)
        if step > last and math.isfinite(value)
    ]


def _objective(spec: LargeModelSweepSpec, seen: TrialObservation) -> float | None:
    value = seen.stage_metrics.get(spec.objective.stage, {}).get(spec.objective.metric)
    return value if value is not None and math.isfinite(value) else None


def _close(trial: TrialStatus, state: TrialState, now: str, **changes: object) -> TrialStatus:
    return trial.model_copy(update={"state": state, "completion_time": now, **changes})


def decide(
    sweep: str,
    spec: LargeModelSweepSpec,
    status: LargeModelSweepStatus | None,
    observed: Mapping[str, TrialObservation],
    now: str,
) -> Decision:
    """The next step. Pure given its inputs: the same status and observations give the same
    decision, so a restarted operator (or `lmjob sweep` after Ctrl-C) carries on exactly."""
    status = status.model_copy(deep=True) if status else LargeModelSweepStatus()
    if status.phase in (SweepPhase.SUCCEEDED, SweepPhase.FAILED):
        return Decision(status, (), ())
    problems = check_sweep(spec)
    if problems:
        message = "; ".join(str(p) for p in problems)
        status.phase = SweepPhase.FAILED
        status.completion_time = now
        status.conditions = [_condition("Invalid", "InvalidSpec", message, now)]
        return Decision(status, (), ())
    status.start_time = status.start_time or now

    study = studies.rebuild(sweep, spec, status.trials)
    stop: list[str] = []
    trials: list[TrialStatus] = []
    for trial in status.trials:
        if trial.state in FINISHED_TRIAL_STATES:
            trials.append(trial)
            continue
        seen = observed.get(trial.name, TrialObservation(exists=False))
        trial = _observe(spec, study, trial, seen, now)
        if trial.state == TrialState.PRUNED and seen.exists:
            stop.append(trial.name)
        trials.append(trial)

    # Sample while there is room (never after the sweep has failed).
    target = planned_trials(spec)
    failed = sum(t.state == TrialState.FAILED for t in trials)
    too_many_failures = failed > spec.max_failed_trials
    active = [t for t in trials if t.state not in FINISHED_TRIAL_STATES]
    while not too_many_failures and len(trials) < target and len(active) < spec.parallel_trials:
        study = studies.rebuild(sweep, spec, trials)
        number, params = studies.ask(study, spec)
        by_path = {p.path: p for p in spec.parameters}
        values = {k: coerce(by_path[k], v) for k, v in params.items()}
        new = TrialStatus(
            number=number,
            name=trial_job_name(sweep, number),
            parameters=values,
            state=TrialState.PENDING,
            sampler_state=studies.sampler_state(study, number),
            start_time=now,
        )
        # Each bound passed the job's rules alone; a combination may not (a micro-batch that
        # no longer divides the global batch). The job's own verdict, before any job exists:
        # such a trial fails at once with the reason, and the search goes on.
        problems = validate_spec(trial_spec(spec.template, values))
        if problems:
            reason = "its values fail the job's rules: " + "; ".join(str(p) for p in problems)
            trials.append(_close(new, TrialState.FAILED, now, reason=reason))
            failed += 1
            too_many_failures = failed > spec.max_failed_trials
            continue
        trials.append(new)
        active.append(new)

    if too_many_failures:
        stop.extend(t.name for t in active if observed.get(t.name, TrialObservation(False)).exists)
        trials = [
            t
            if t.state in FINISHED_TRIAL_STATES
            else _close(
                t, TrialState.FAILED, now, reason="the sweep failed: too many failed trials"
            )
            for t in trials
        ]
    status.trials = trials
    _summarize(spec, status, target, too_many_failures, now)
    create = tuple(
        t
        for t in trials
        if t.state == TrialState.PENDING
        and not observed.get(t.name, TrialObservation(False)).exists
    )
    return Decision(status, create, tuple(dict.fromkeys(stop)))


def _observe(
    spec: LargeModelSweepSpec,
    study: object,
    trial: TrialStatus,
    seen: TrialObservation,
    now: str,
) -> TrialStatus:
    """A Pending or Running trial after what its job shows: reports judged by the pruner in
    step order, then closed if its job finished."""
    if not seen.exists:
        if trial.state == TrialState.RUNNING:
            return _close(trial, TrialState.FAILED, now, reason="its job was deleted")
        return trial  # Pending: its job is (re)created
    trial = trial.model_copy(update={"state": TrialState.RUNNING})
    reports = list(trial.reports)
    pruned_at: TrialReport | None = None
    # The evaluation at the last training step is the trial's result, not a forecast of it:
    # stopping the trial then would only throw the result away.
    last_step = spec.template.training.steps if spec.template.training else None
    for report in _merge_reports(trial, seen.reports):
        reports.append(report)
        if (
            seen.phase in (_SUCCEEDED, _FAILED)
            or spec.early_stopping.type == EarlyStoppingType.NONE
            or (last_step is not None and report.step >= last_step)
        ):
            continue
        if studies.report_and_prune(study, trial.number, report.step, report.value):  # type: ignore[arg-type]
            pruned_at = report
            break
    reports = reports[-MAX_REPORTS:]
    values = [r.value for r in reports]
    best = (
        (max if spec.objective.direction == Direction.MAXIMIZE else min)(values) if values else None
    )
    trial = trial.model_copy(
        update={
            "reports": reports,
            "last_value": values[-1] if values else None,
            "best_value": best,
            "step": reports[-1].step if reports else trial.step,
            "sampler_state": studies.sampler_state(study, trial.number),  # type: ignore[arg-type]
        }
    )
    if pruned_at is not None:
        return _close(
            trial,
            TrialState.PRUNED,
            now,
            reason=f"stopped by {spec.early_stopping.type.value} at step {pruned_at.step}: "
            f"evaluation loss {pruned_at.value:.4g} is not among the promising trials'",
        )
    if seen.phase == _SUCCEEDED:
        value = _objective(spec, seen)
        if value is None:
            return _close(
                trial,
                TrialState.FAILED,
                now,
                reason=f"its job succeeded without {spec.objective.metric} for stage "
                f"{spec.objective.stage}",
            )
        return _close(trial, TrialState.COMPLETE, now, value=value)
    if seen.phase == _FAILED:
        return _close(trial, TrialState.FAILED, now, reason=seen.message or "its job failed")
    return trial


def _summarize(
    spec: LargeModelSweepSpec,
    status: LargeModelSweepStatus,
    target: int,
    too_many_failures: bool,
    now: str,
) -> None:
    trials = status.trials
    status.completed = sum(t.state == TrialState.COMPLETE for t in trials)
    status.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    status.failed = sum(t.state == TrialState.FAILED for t in trials)
    status.running = sum(t.state not in FINISHED_TRIAL_STATES for t in trials)
    finished = len(trials) - status.running
    status.summary = f"{finished}/{target}"
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best: TrialStatus | None = None
    for t in complete:
        if best is None or _better(spec, t.value, best.value):  # type: ignore[arg-type]
            best = t
    status.best = (
        BestTrial(number=best.number, name=best.name, value=best.value, parameters=best.parameters)
        if best is not None and best.value is not None
        else None
    )
    if too_many_failures:
        status.phase = SweepPhase.FAILED
        status.completion_time = now
        status.conditions = [
            _condition(
                "Failed",
                "TooManyFailedTrials",
                f"{status.failed} trials failed (maxFailedTrials {spec.max_failed_trials}); "
                "see each failed trial's reason",
                now,
            )
        ]
    elif len(trials) >= target and status.running == 0:
        status.phase = SweepPhase.SUCCEEDED
        status.completion_time = now
        message = (
            f"best trial {best.name}: {spec.objective.metric} {best.value:.6g}"
            if best is not None
            else "no trial completed"
        )
        status.conditions = [_condition("Succeeded", "AllTrialsFinished", message, now)]
    else:
        status.phase = SweepPhase.RUNNING if trials else SweepPhase.PENDING
