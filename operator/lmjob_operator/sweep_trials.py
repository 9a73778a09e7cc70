"""A sweep's trial jobs as plain data: parsing the sweep, building a trial's LargeModelJob,
reading what became of each trial job, and the events a status change is worth.

Pure functions (no API calls, no clock): sweep_reconcile does the I/O around them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lmjob_api import API_VERSION
from lmjob_api import KIND as JOB_KIND
from lmjob_api.status import Condition
from lmjob_api.sweep import (
    KIND as SWEEP_KIND,
)
from lmjob_api.sweep import (
    LargeModelSweep,
    LargeModelSweepStatus,
    SweepPhase,
    TrialState,
    TrialStatus,
)
from lmjob_api.sweep_checks import trial_spec, validate_sweep
from lmjob_api.validation import Problem
from lmjob_operator.naming import SWEEP_LABEL, TRIAL_LABEL
from lmjob_sweep.engine import TrialObservation

INVALID = "Invalid"
"""The condition of a sweep whose spec no trial could run with; never retried."""


def parse_sweep(body: Mapping[str, Any]) -> tuple[LargeModelSweep | None, list[Problem]]:
    """The API model of a sweep body and, when it cannot run, every problem, named as
    `lmjob validate` names them (`spec.parameters[0].high: ...`)."""
    meta = body.get("metadata") or {}
    manifest = {
        "apiVersion": API_VERSION,
        "kind": SWEEP_KIND,
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "generation", "labels", "annotations")
            if k in meta
        },
        "spec": body.get("spec") or {},
    }
    return validate_sweep(manifest)


def parse_sweep_status(raw: Mapping[str, Any] | None) -> LargeModelSweepStatus | None:
    """The sweep's status (None before the first write). A status this version cannot read
    is an error, not a fresh start: it is the search's only state, and starting over would
    create every trial job again."""
    if not raw:
        return None
    try:
        return LargeModelSweepStatus.model_validate(dict(raw))
    except ValidationError as err:
        raise ValueError(f"status of the sweep cannot be read: {err}") from None


def sweep_owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """Owner reference to the sweep: deleting it garbage-collects its trial jobs."""
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": SWEEP_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def trial_selector(sweep: str) -> str:
    """Label selector of a sweep's trial jobs."""
    return f"{SWEEP_LABEL}={sweep}"


def build_trial_job(
    body: Mapping[str, Any], sweep: LargeModelSweep, trial: TrialStatus
) -> dict[str, Any]:
    """The LargeModelJob of one trial: the template with the trial's parameter values,
    named by the engine, labelled with its sweep and number, owned by the sweep."""
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": JOB_KIND,
        "metadata": {
            "name": trial.name,
            "namespace": meta["namespace"],
            "labels": {SWEEP_LABEL: meta["name"], TRIAL_LABEL: str(trial.number)},
            "ownerReferences": [sweep_owner_reference(body)],
        },
        "spec": trial_spec(sweep.spec.template, trial.parameters),
    }


def owned_by(job: Mapping[str, Any], uid: str) -> bool:
    """Whether `job` is controlled by the sweep of this uid (not a job of an earlier sweep
    of the same name still being garbage-collected, nor someone else's job)."""
    refs = (job.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def observe_trial(job: Mapping[str, Any] | None) -> TrialObservation:
    """What became of one trial, read from its job's status (None: there is no job)."""
    if job is None:
        return TrialObservation(exists=False)
    status = job.get("status") or {}
    reports = sorted(
        (int(e["step"]), float(e["loss"]))
        for e in status.get("evaluations") or []
        if e.get("stage") == "train" and "step" in e and "loss" in e
    )
    stage_metrics = {
        s["name"]: {k: float(v) for k, v in (s.get("metrics") or {}).items()}
        for s in status.get("stages") or []
        if s.get("name") and s.get("metrics")
    }
    failed = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "Failed" and c.get("status") == "True"
        ),
        {},
    )
    return TrialObservation(
        exists=True,
        phase=status.get("phase") or "",
        reports=tuple(reports),
        stage_metrics=stage_metrics,
        message=failed.get("message") or "",
    )


def observe_trials(
    jobs: Iterable[Mapping[str, Any]],
    uid: str,
    trials: Iterable[TrialStatus],
) -> dict[str, TrialObservation]:
    """An observation for every trial in the status and every job this sweep owns, by job
    name; jobs being deleted count as gone (a pruned trial's job takes a while to go)."""
    live = {
        job["metadata"]["name"]: job
        for job in jobs
        if owned_by(job, uid) and not job["metadata"].get("deletionTimestamp")
    }
    names = [t.name for t in trials] + [n for n in live if n not in {t.name for t in trials}]
    return {name: observe_trial(live.get(name)) for name in names}


def jobs_to_stop(
    status: LargeModelSweepStatus, observed: Mapping[str, TrialObservation]
) -> list[str]:
    """Jobs still running for trials the status has ended (Pruned, or Failed with the sweep).

    The engine names a trial's job to stop once, in the decision that ends the trial; if the
    pass is cut off after the status write and before the deletion, this is how a later
    pass still stops it."""
    ended = (TrialState.PRUNED, TrialState.FAILED)
    return [
        t.name
        for t in status.trials
        if t.state in ended
        and (seen := observed.get(t.name)) is not None
        and seen.exists
        and seen.phase not in ("Succeeded", "Failed")
    ]


def build_invalid_status(
    previous: LargeModelSweepStatus | None, problems: Iterable[Problem], now: str
) -> LargeModelSweepStatus:
    """Failed, with the `Invalid` condition naming every problem; trials kept as they were."""
    status = (previous or LargeModelSweepStatus()).model_copy(deep=True)
    message = "; ".join(str(p) for p in problems)[:2000]
    kept = [c for c in status.conditions if c.type != INVALID]
    old = next((c for c in status.conditions if c.type == INVALID), None)
    same = old is not None and old.status == "True" and old.message == message
    condition = Condition(
        type=INVALID,
        status="True",
        reason="InvalidSpec",
        message=message,
        last_transition_time=old.last_transition_time if same and old else now,
    )
    status.conditions = [*kept, condition]
    status.phase = SweepPhase.FAILED
    status.completion_time = status.completion_time or now
    return status


def is_invalid(status: LargeModelSweepStatus | None) -> bool:
    return status is not None and any(
        c.type == INVALID and c.status == "True" for c in status.conditions
    )


@dataclass(frozen=True)
class SweepEvent:
    """A Kubernetes Event to post on the sweep."""

    type: str
    reason: str
    message: str


def sweep_events(
    previous: LargeModelSweepStatus | None, status: LargeModelSweepStatus
) -> list[SweepEvent]:
    """Events for what changed between two statuses: trials pruned or failed, a better
    best trial, the sweep finishing or found invalid. (Trial creation is posted when the
    job is created.)"""
    before = {t.number: t for t in (previous.trials if previous else [])}
    events: list[SweepEvent] = []
    for trial in status.trials:
        old = before.get(trial.number)
        if old is not None and old.state == trial.state:
            continue
        if trial.state == TrialState.PRUNED:
            events.append(
                SweepEvent("Normal", "TrialPruned", f"trial {trial.number}: {trial.reason}")
            )
        elif trial.state == TrialState.FAILED:
            events.append(
                SweepEvent("Warning", "TrialFailed", f"trial {trial.number}: {trial.reason}")
            )
    old_best = previous.best if previous else None
    best = status.best
    if best is not None and (old_best is None or old_best.number != best.number):
        values = ", ".join(f"{k}={v}" for k, v in best.parameters.items())
        events.append(
            SweepEvent(
                "Normal",
                "BestTrial",
                f"trial {best.number} is the best so far: {best.value:.6g} ({values})",
            )
        )
    if is_invalid(status) and not is_invalid(previous):
        invalid = next(c for c in status.conditions if c.type == INVALID)
        events.append(SweepEvent("Warning", "InvalidSpec", invalid.message))
    elif status.phase != (previous.phase if previous else SweepPhase.PENDING):
        if status.phase == SweepPhase.SUCCEEDED:
            events.append(SweepEvent("Normal", "Succeeded", f"sweep finished: {status.summary}"))
        elif status.phase == SweepPhase.FAILED:
            events.append(SweepEvent("Warning", "Failed", f"sweep failed: {status.summary}"))
    return events
