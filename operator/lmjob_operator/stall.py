"""Hang verdicts: whether a running job's training step stopped advancing (docs/operator.md,
"Hangs").

Pure: what the operator saw of the current rendezvous round's scrapes of rank 0's metrics
endpoint (a `ScrapeWatch`, updated by `watch_scrape`), the job's pods and a monotonic
clock reading → a `Stall` or None; a stall and the run policy → a failure verdict; the
verdict, the pods and the previous condition → the `Stalled` condition. Two ways to see one:

- StepStalled: rank 0 answers, and its hang watchdog says the step has not advanced for
  longer than the timeout in effect (`stalled_seconds` ≥ `hang_timeout_seconds`). Every
  rank waits in the frozen rank's collective, so rank 0 sees any rank's hang.
- TrainerUnresponsive: rank 0 itself is frozen, so its endpoint stops answering. Scrapes
  that fail for longer than the timeout, while every worker pod of the round runs, after
  the endpoint answered in this round (start-up, before a first answer, takes unknown time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from lmjob_api import LargeModelJob
from lmjob_api.hangs import HANGS, hang_folder
from lmjob_api.job import RunPolicy
from lmjob_api.status import Condition
from lmjob_api.trainer_metrics import TrainerProgress
from lmjob_operator.failures import Action, Verdict, current_workers, restart_verdict
from lmjob_operator.pod_view import PodView
from lmjob_operator.status import Problem

STALLED = "Stalled"
STEP_STALLED = "StepStalled"
TRAINER_UNRESPONSIVE = "TrainerUnresponsive"
PROGRESSING = "Progressing"
FINISHED = "TrainingCompleted"
STALL_GRACE_SECONDS = 5
"""Grace period of the pods a stall restart deletes: a hung rank cannot checkpoint anyway,
and a frozen process ignores SIGTERM until SIGKILL, so waiting longer only idles the group."""


@dataclass(frozen=True)
class ScrapeWatch:
    """The current round's scrapes of rank 0's endpoint (what one operator process saw)."""

    round: int = -1
    """The rendezvous round (status.restarts) the rest is about."""
    progress: TrainerProgress | None = None
    """The round's latest answer."""
    answered_at: float | None = None
    """Monotonic time of that answer."""
    first_step: int | None = None
    """The step of the round's first answer: the step advanced once a later one is higher."""
    failing: bool = False
    """The latest scrape found no answer."""


def watch_scrape(
    watch: ScrapeWatch, round_: int, progress: TrainerProgress | None, now: float
) -> ScrapeWatch:
    """The watch after one scrape of round `round_` (progress None: nobody answered)."""
    if watch.round != round_:
        watch = ScrapeWatch(round=round_)
    if progress is None:
        return replace(watch, failing=True)
    first = watch.first_step if watch.first_step is not None else progress.step
    return ScrapeWatch(round_, progress, now, first, failing=False)


@dataclass(frozen=True)
class Stall:
    """One hang, as the condition, the event and the restart's message say it."""

    reason: str
    stage: str
    step: int
    """The step that did not complete."""
    seconds: float
    timeout: float
    stacks: str
    """Where the ranks' stacks are (the job's storage as its pods mount it): the stuck
    step's folder, or the hangs folder when the step is not known exactly."""

    @property
    def message(self) -> str:
        if self.reason == TRAINER_UNRESPONSIVE:
            # Rank 0 may have done a step or two after its last answer: the folder's step
            # is the watchdogs' to name.
            return (
                f"stage {self.stage} stalled at step {self.step} or later: rank 0's metrics "
                f"endpoint has not answered for {self.seconds:.0f}s (timeout "
                f"{self.timeout:g}s); the stacks of the ranks still running are in "
                f"{self.stacks}/{self.stage}-step-*/"
            )
        return (
            f"stage {self.stage} step {self.step} stalled: no rank has completed it for "
            f"{self.seconds:.0f}s (timeout {self.timeout:g}s); the stacks of the ranks "
            f"still running are in {self.stacks}/"
        )


def hang_timeout(job: LargeModelJob, progress: TrainerProgress) -> float | None:
    """The timeout in effect: the trainer's (explicit or derived, once armed), else the
    spec's explicit one (a user command need not export it)."""
    if progress.hang_timeout_seconds is not None:
        return progress.hang_timeout_seconds
    training = job.spec.training
    if training is not None and training.hang.timeout_seconds is not None:
        return float(training.hang.timeout_seconds)
    return None


def judge_stall(
    job: LargeModelJob,
    watch: ScrapeWatch,
    pods: Sequence[PodView],
    restarts: int,
    now: float,
) -> Stall | None:
    """The hang the current round's scrapes show, if any (see the module docstring)."""
    progress = watch.progress
    if watch.round != restarts or progress is None or watch.answered_at is None:
        return None
    workers = current_workers(pods, restarts)
    # Only a group that runs can hang: one finishing, failing or starting is someone else's.
    if not workers or any(p.phase != "Running" for p in workers):
        return None
    timeout = hang_timeout(job, progress)
    if timeout is None:
        return None
    step = progress.step + 1
    stage = progress.stage or "train"
    if watch.failing:
        silent = now - watch.answered_at
        if silent < timeout:
            return None
        stacks = str(PurePosixPath(job.spec.storage.path) / HANGS)
        return Stall(TRAINER_UNRESPONSIVE, stage, step, silent, timeout, stacks)
    stacks = str(hang_folder(job.spec.storage.path, stage, step))
    stalled = progress.stalled_seconds
    if stalled is not None and stalled >= timeout:
        return Stall(STEP_STALLED, stage, step, stalled, timeout, stacks)
    return None


def stall_verdict(stall: Stall, policy: RunPolicy, restarts: int) -> Verdict:
    """A hang is a failure of the run: under restartPolicy Never the job fails; otherwise
    the group restarts from the latest checkpoint, counted against backoffLimit like any
    group restart, with a short grace period (STALL_GRACE_SECONDS)."""
    if policy.restart_policy == "Never":
        return Verdict(Action.FAIL, stall.reason, f"restartPolicy is Never: {stall.message}")
    verdict = restart_verdict(policy, restarts, stall.reason, stall.message)
    if verdict.action == Action.RESTART_GROUP:
        return replace(verdict, grace_seconds=STALL_GRACE_SECONDS)
    return verdict


def stalled_problem(
    stall: Stall | None,
    previous: Condition | None,
    watch: ScrapeWatch,
    pods: Sequence[PodView],
    restarts: int,
    finished: bool = False,
) -> Problem | None:
    """The Stalled condition to report (None: leave it as it is, or absent). True with a
    stall; once True, False when the step advanced in the round the restart began, or the
    workers finished training. A job that has `finished` (failed on a stall: its restarts
    were used up) keeps it True."""
    if stall is not None:
        return Problem(STALLED, "True", stall.reason, stall.message)
    if previous is None or previous.status != "True" or finished:
        return None
    if any(p.phase == "Succeeded" for p in current_workers(pods, restarts)):
        return Problem(STALLED, "False", FINISHED, "the workers finished training")
    progress = watch.progress
    if (
        watch.round == restarts
        and progress is not None
        and watch.first_step is not None
        and progress.step > watch.first_step
    ):
        return Problem(
            STALLED,
            "False",
            PROGRESSING,
            f"stage {progress.stage} step {progress.step} completed after the restart",
        )
    return None
