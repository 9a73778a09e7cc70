"""Hang verdicts (stall.py) as tables: scrapes → Stall, a stall → restart or failure, and the
Stalled condition through build_status and its events."""

from __future__ import annotations

from typing import Any

import pytest

from lmjob_api import JobPhase
from lmjob_api.status import Condition, LargeModelJobStatus
from lmjob_api.trainer_metrics import TrainerProgress as Progress
from lmjob_operator.failures import Action
from lmjob_operator.pod_view import PodView
from lmjob_operator.stall import (
    STALL_GRACE_SECONDS,
    ScrapeWatch,
    judge_stall,
    stall_verdict,
    stalled_problem,
    watch_scrape,
)
from lmjob_operator.status import build_status, transition_events
from tests.operator.factories import NOW, make_job, worker

EXPLICIT = {"training": {"hang": {"timeoutSeconds": 10}}}
RUNNING = [worker(0), worker(1)]


def progress(step: int = 41, stalled: float | None = 0.5, timeout: float | None = 10.0) -> Progress:
    return Progress(stage="train", step=step, stalled_seconds=stalled, hang_timeout_seconds=timeout)


def answered(p: Progress | None, *, at: float = 100.0, round_: int = 0) -> ScrapeWatch:
    return watch_scrape(ScrapeWatch(), round_, p, at)


def failing_since(p: Progress, at: float = 100.0) -> ScrapeWatch:
    return watch_scrape(answered(p, at=at), 0, None, at + 1.0)


# (case id, spec, watch, pods, restarts, now, expected (reason, step, seconds) or None)
CASES: list[tuple[str, dict, ScrapeWatch, list[PodView], int, float, tuple | None]] = [
    ("advancing", {}, answered(progress()), RUNNING, 0, 101.0, None),
    ("stalled below the timeout", {}, answered(progress(stalled=9.9)), RUNNING, 0, 101.0, None),
    (
        "stalled past the timeout",
        {},
        answered(progress(stalled=12.0)),
        RUNNING,
        0,
        101.0,
        ("StepStalled", 42, 12.0),
    ),
    (
        "the derived timeout is not armed yet",
        {},
        answered(progress(stalled=5000.0, timeout=None)),
        RUNNING,
        0,
        101.0,
        None,
    ),
    (
        "the spec's timeout when the trainer exports none (a user command)",
        EXPLICIT,
        answered(progress(stalled=11.0, timeout=None)),
        RUNNING,
        0,
        101.0,
        ("StepStalled", 42, 11.0),
    ),
    (
        "the trainer's timeout in effect wins",
        EXPLICIT,
        answered(progress(stalled=11.0, timeout=600.0)),
        RUNNING,
        0,
        101.0,
        None,
    ),
    (
        "an earlier round's scrape says nothing of this one",
        {},
        answered(progress(stalled=12.0)),
        [worker(0, round_=1), worker(1, round_=1)],
        1,
        101.0,
        None,
    ),
    (
        "a worker not running: the failure rules decide",
        {},
        answered(progress(stalled=12.0)),
        [worker(0), worker(1, "Failed", exit_code=1)],
        0,
        101.0,
        None,
    ),
    (
        "a worker finished: the group is finishing",
        {},
        answered(progress(stalled=12.0)),
        [worker(0, "Succeeded"), worker(1)],
        0,
        101.0,
        None,
    ),
    (
        "a worker still starting",
        {},
        answered(progress(stalled=12.0)),
        [worker(0), worker(1, "Pending")],
        0,
        101.0,
        None,
    ),
    ("silent, not for long", {}, failing_since(progress()), RUNNING, 0, 109.0, None),
    (
        "silent past the timeout",
        {},
        failing_since(progress(step=7)),
        RUNNING,
        0,
        110.5,
        ("TrainerUnresponsive", 8, 10.5),
    ),
    (
        "silent before any answer (start-up)",
        {},
        watch_scrape(ScrapeWatch(), 0, None, 100.0),
        RUNNING,
        0,
        1000.0,
        None,
    ),
    (
        "silent in a round that has not answered yet",
        {},
        watch_scrape(answered(progress()), 1, None, 101.0),
        [worker(0, round_=1), worker(1, round_=1)],
        1,
        1000.0,
        None,
    ),
    (
        "answering again after a silence",
        {},
        watch_scrape(failing_since(progress()), 0, progress(step=42), 130.0),
        RUNNING,
        0,
        131.0,
        None,
    ),
]


@pytest.mark.parametrize(
    ("spec", "watch", "pods", "restarts", "now", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_judge_stall(
    spec: dict,
    watch: ScrapeWatch,
    pods: list[PodView],
    restarts: int,
    now: float,
    expected: tuple | None,
) -> None:
    stall = judge_stall(make_job(spec), watch, pods, restarts, now)
    got = None if stall is None else (stall.reason, stall.step, stall.seconds)
    assert got == expected


def test_stall_message_names_step_time_and_stacks() -> None:
    stall = judge_stall(make_job(), answered(progress(stalled=12.3)), RUNNING, 0, 101.0)
    assert stall is not None
    assert stall.message == (
        "stage train step 42 stalled: no rank has completed it for 12s (timeout 10s); the "
        "stacks of the ranks still running are in /checkpoints/hangs/train-step-000000042/"
    )
    silent = judge_stall(make_job(), failing_since(progress()), RUNNING, 0, 115.0)
    assert silent is not None
    assert silent.message == (
        "stage train stalled at step 42 or later: rank 0's metrics endpoint has not answered "
        "for 15s (timeout 10s); the stacks of the ranks still running are in "
        "/checkpoints/hangs/train-step-*/"
    )


def test_watch_keeps_the_rounds_first_step() -> None:
    watch = answered(progress(step=30))
    watch = watch_scrape(watch, 0, progress(step=35), 105.0)
    assert (watch.first_step, watch.progress.step, watch.answered_at) == (30, 35, 105.0)
    watch = watch_scrape(watch, 0, None, 106.0)
    assert watch.failing and watch.answered_at == 105.0 and watch.progress.step == 35
    restarted = watch_scrape(watch, 1, progress(step=20), 120.0)
    assert (restarted.round, restarted.first_step, restarted.failing) == (1, 20, False)


@pytest.mark.parametrize(
    ("policy", "restarts", "action", "reason", "grace"),
    [
        ({}, 0, Action.RESTART_GROUP, "StepStalled", STALL_GRACE_SECONDS),
        ({"restartPolicy": "ExitCode"}, 2, Action.RESTART_GROUP, "StepStalled", 5),
        ({}, 3, Action.FAIL, "BackoffLimitExceeded", None),  # a hang spends backoffLimit
        ({"restartPolicy": "Never"}, 0, Action.FAIL, "StepStalled", None),
    ],
)
def test_stall_verdict(
    policy: dict, restarts: int, action: Action, reason: str, grace: int | None
) -> None:
    job = make_job({"runPolicy": policy})
    stall = judge_stall(job, answered(progress(stalled=12.0)), RUNNING, 0, 101.0)
    assert stall is not None
    verdict = stall_verdict(stall, job.spec.run_policy, restarts)
    assert (verdict.action, verdict.reason, verdict.grace_seconds) == (action, reason, grace)
    assert "step 42 stalled" in verdict.message


STALLED_TRUE = Condition(type="Stalled", status="True", reason="StepStalled", message="m")
AFTER = [worker(0, round_=1), worker(1, round_=1)]


# (case id, previous condition, watch, pods, finished, expected (status, reason) or None)
CONDITION_CASES: list[tuple[str, Any, ScrapeWatch, list[PodView], bool, tuple | None]] = [
    ("never stalled", None, answered(progress(step=50), round_=1), AFTER, False, None),
    ("restarting, no answer yet", STALLED_TRUE, answered(progress()), AFTER, False, None),
    (
        "resumed, not advanced yet",
        STALLED_TRUE,
        answered(progress(step=40), round_=1),
        AFTER,
        False,
        None,
    ),
    (
        "advanced after the restart",
        STALLED_TRUE,
        watch_scrape(answered(progress(step=40), round_=1), 1, progress(step=41), 102.0),
        AFTER,
        False,
        ("False", "Progressing"),
    ),
    (
        "finished training",
        STALLED_TRUE,
        answered(progress(step=40), round_=1),
        [worker(0, "Succeeded", round_=1), worker(1, round_=1)],
        False,
        ("False", "TrainingCompleted"),
    ),
    (
        "failed on the stall: stays",
        STALLED_TRUE,
        watch_scrape(answered(progress(step=40), round_=1), 1, progress(step=41), 102.0),
        AFTER,
        True,
        None,
    ),
]


@pytest.mark.parametrize(
    ("previous", "watch", "pods", "finished", "expected"),
    [c[1:] for c in CONDITION_CASES],
    ids=[c[0] for c in CONDITION_CASES],
)
def test_stalled_condition_clears(
    previous: Condition | None,
    watch: ScrapeWatch,
    pods: list[PodView],
    finished: bool,
    expected: tuple | None,
) -> None:
    problem = stalled_problem(None, previous, watch, pods, 1, finished)
    assert (None if problem is None else (problem.status, problem.reason)) == expected


def test_a_stall_restarts_the_group_counted_with_a_condition_and_events() -> None:
    job = make_job()
    watch = answered(progress(stalled=12.0))
    previous = LargeModelJobStatus(phase=JobPhase.RUNNING)
    stall = judge_stall(job, watch, RUNNING, 0, 101.0)
    assert stall is not None
    problem = stalled_problem(stall, None, watch, RUNNING, 0)
    verdict = stall_verdict(stall, job.spec.run_policy, 0)
    status = build_status(job, RUNNING, watch.progress, previous, verdict, NOW, [problem])
    assert (status.phase, status.restarts) == (JobPhase.RESTARTING, 1)
    stalled = next(c for c in status.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason, stalled.message) == (
        "True",
        "StepStalled",
        stall.message,
    )
    events = {(e.type, e.reason) for e in transition_events(previous, status)}
    assert ("Warning", "StepStalled") in events
    restarting = next(c for c in status.conditions if c.type == "Restarting")
    assert restarting.message.startswith("restarting all workers (restart 1 of 3): stage train")
