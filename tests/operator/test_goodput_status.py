"""status.goodput through build_status: the trainer's seconds plus the operator's scheduling
wait and wall time, kept while nothing new is measured, frozen once the job finished."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lmjob_api import JobPhase, LargeModelJob
from lmjob_api.status import LargeModelJobStatus
from lmjob_api.trainer_metrics import TrainerProgress
from lmjob_operator.failures import Verdict
from lmjob_operator.plan import parse_job
from lmjob_operator.status import build_status, stamp
from tests.operator.factories import NOW, job_manifest, rendezvous, worker

CREATED = NOW - timedelta(seconds=100)


def _job() -> LargeModelJob:
    manifest = job_manifest()
    manifest["metadata"]["creationTimestamp"] = stamp(CREATED)
    return parse_job(manifest)  # as the operator reads a job's body


def _progress(productive: float, restart: float = 0.0) -> TrainerProgress:
    seconds = {"productive": productive, "restart": restart, "setup": 5.0}
    return TrainerProgress(
        stage="train",
        step=10,
        total_steps=100,
        world_size=2,
        goodput_seconds=seconds,
        # The first launch 10 s after creation: scheduling.
        started_at=(CREATED + timedelta(seconds=10)).timestamp(),
    )


PODS = [worker(0), worker(1), rendezvous()]


def _status(progress, previous, now=NOW, pods=PODS):
    return build_status(_job(), pods, progress, previous, Verdict(), now)


def test_goodput_splits_the_wall_time_since_creation() -> None:
    status = _status(_progress(productive=60.0, restart=4.0), LargeModelJobStatus())
    goodput = status.goodput
    assert goodput is not None
    assert goodput.wall_seconds == 100.0
    assert goodput.seconds["scheduling"] == 10.0
    assert goodput.seconds["restart"] == 4.0
    assert goodput.seconds["other"] == pytest.approx(100 - 60 - 4 - 5 - 10)
    assert sum(goodput.seconds.values()) == pytest.approx(goodput.wall_seconds)
    assert goodput.ratio == 0.6


def test_nothing_new_measured_keeps_status_as_it_was_and_no_scrape_keeps_it_too() -> None:
    first = _status(_progress(productive=60.0), LargeModelJobStatus())
    later = NOW + timedelta(seconds=30)
    assert _status(_progress(productive=60.0), first, now=later).goodput == first.goodput
    assert _status(None, first, now=later).goodput == first.goodput
    moved = _status(_progress(productive=80.0), first, now=later).goodput
    assert moved is not None and moved.wall_seconds == 130.0 and moved.seconds["productive"] == 80


def test_the_finishing_pass_freezes_goodput_at_completion() -> None:
    running = _status(_progress(productive=60.0), LargeModelJobStatus(phase=JobPhase.RUNNING))
    done = [worker(0, "Succeeded"), worker(1, "Succeeded"), rendezvous()]
    end = NOW + timedelta(seconds=20)
    final = _status(None, running, now=end, pods=done)
    assert final.phase == JobPhase.SUCCEEDED
    assert final.goodput is not None and final.goodput.wall_seconds == 120.0
    assert final.goodput.seconds["productive"] == 60.0
    assert final.goodput.seconds["scheduling"] == 10.0
    assert sum(final.goodput.seconds.values()) == pytest.approx(120.0)
    # Afterwards, nothing changes it, not even a late scrape.
    again = _status(_progress(productive=99.0), final, now=end + timedelta(hours=1), pods=done)
    assert again.goodput == final.goodput
