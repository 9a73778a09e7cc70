"""One step of a sweep: status + observed trial jobs → next status, jobs to create and stop.

(Interface first; the implementation lands next.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lmjob_api.sweep import LargeModelSweepSpec, LargeModelSweepStatus, TrialStatus


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
    """Jobs of trials just pruned (or otherwise finished early) to stop."""


def trial_job_name(sweep: str, number: int) -> str:
    """The LargeModelJob name of trial `number`."""
    return f"{sweep}-{number}"


def decide(
    sweep: str,
    spec: LargeModelSweepSpec,
    status: LargeModelSweepStatus | None,
    observed: Mapping[str, TrialObservation],
    now: str,
) -> Decision:
    """The next step. Pure given its inputs: the same status and observations give the same
    decision, so a restarted operator (or `lmjob sweep` after Ctrl-C) carries on exactly."""
    raise NotImplementedError
