"""The goodput ledger's arithmetic (lmjob_api.goodput): folding records into kinds of time,
re-done steps after a resume, restarts between launches, and the wall-time split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmjob_api.goodput import KINDS, Tally, breakdown, describe


def _steps(stage: str, first: int, last: int, start: float, each: float = 1.0) -> list[dict]:
    """Steps first..last of `stage`, back to back from `start`, `each` seconds apiece."""
    return [
        {"event": "step", "stage": stage, "step": n, "seconds": each, "time": start + i * each}
        for i, n in enumerate(range(first, last + 1), 1)
    ]


def _fold(records: list[dict]) -> Tally:
    tally = Tally()
    for record in records:
        tally.fold(record)
    return tally


def test_one_clean_run_is_setup_then_productive_steps_evaluations_and_saves() -> None:
    records = [
        {"event": "launch", "time": 100.0},
        {"event": "start", "stage": "train", "step": 0, "time": 104.0},
        *_steps("train", 1, 10, start=105.0),  # steps end at 106..115
        {"event": "evaluation", "stage": "train", "step": 10, "seconds": 2.0, "time": 117.0},
        {"event": "checkpoint", "stage": "train", "step": 10, "seconds": 0.5, "time": 117.5},
    ]
    tally = _fold(records)
    assert tally.seconds == {
        "productive": 10.0,
        "redone": 0.0,
        "checkpoint": 0.5,
        "evaluation": 2.0,
        "setup": 5.0,  # launch at 100 to the first step's start at 105
        "rendezvous": 0.0,  # no launcher's start recorded
        "restart": 0.0,
    }
    assert (tally.first_launch, tally.last_time) == (100.0, 117.5)


def test_a_resume_moves_the_steps_after_its_checkpoint_to_redone_and_counts_the_restart() -> None:
    records = [
        {"event": "launch", "time": 0.0},
        {"event": "start", "stage": "train", "step": 0, "time": 1.0},
        *_steps("train", 1, 4, start=1.0),
        {"event": "checkpoint", "stage": "train", "step": 4, "seconds": 0.0, "time": 5.0},
        *_steps("train", 5, 7, start=5.0),  # lost with the process at 8.0
        {"event": "launch", "time": 20.0},  # 12 s later: detection, new pods, rendezvous
        {"event": "start", "stage": "train", "step": 4, "time": 22.0},
        *_steps("train", 5, 8, start=23.0),
    ]
    tally = _fold(records)
    assert tally.seconds["redone"] == 3.0
    assert tally.seconds["productive"] == 8.0  # steps 1-8, each counted once
    assert tally.seconds["restart"] == 12.0
    assert tally.seconds["setup"] == 1.0 + 3.0


def test_a_launchers_start_splits_scheduling_rendezvous_and_restart() -> None:
    """First pod: its launcher (torchrun's agent) starts at 10 and forms the group, the
    worker starts at 14. Second pod after a failure at 30: launcher at 40, worker at 43.
    Then torchrun restarts the workers in that same pod (its launcher older than the last
    record, 60): the new worker starts at 62, all of it the group re-forming."""
    records = [
        {"event": "launch", "time": 14.0, "agent": 10.0},
        *_steps("train", 1, 16, start=14.0),  # last record at 30
        {"event": "launch", "time": 43.0, "agent": 40.0},
        *_steps("train", 17, 33, start=43.0),  # last record at 60
        {"event": "launch", "time": 62.0, "agent": 40.0},
        {"event": "launch", "time": 70.0, "agent": 99.0},  # a launcher "after" its worker: ignored
    ]
    tally = _fold(records)
    assert tally.first_launch == 10.0  # the operator's scheduling wait ends here
    assert tally.seconds["rendezvous"] == 4.0 + 3.0 + 2.0
    assert tally.seconds["restart"] == 10.0 + 0.0 + 8.0
    result = breakdown(tally.seconds, first_launch=tally.first_launch, created=5.0, end=80.0)
    assert result.seconds["scheduling"] == 5.0
    assert sum(result.seconds.values()) == pytest.approx(75.0)


def test_steps_before_an_older_checkpoint_stay_productive_and_other_stages_are_untouched() -> None:
    records = [{"event": "launch", "time": 0.0}]
    records += _steps("train", 1, 2, start=0.0)
    records += [{"event": "start", "stage": "prune", "step": 0, "time": 2.0}]
    records += _steps("prune", 1, 6, start=2.0)
    for step in (2, 4, 6):
        records.append(
            {"event": "checkpoint", "stage": "prune", "step": step, "seconds": 0, "time": 8.0}
        )
    # Resumed at prune step 4: only steps 5 and 6 of prune are done again.
    records += [{"event": "launch", "time": 9.0}, {"event": "start", "stage": "prune", "step": 4}]
    records[-1]["time"] = 9.5
    tally = _fold(records)
    assert tally.seconds["redone"] == 2.0
    assert tally.seconds["productive"] == 2.0 + 4.0


def test_bad_records_are_skipped_and_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    ledger = tmp_path / "goodput.jsonl"
    good = [{"event": "launch", "time": 0.0}, *_steps("train", 1, 3, start=1.0)]
    ledger.write_text(
        "\n".join(json.dumps(r) for r in good)
        + '\n{"event": "step", "time": "x"}\n{"event": "nope", "time": 1}\n{"event": "st'
    )
    tally = Tally.of_file(ledger)
    assert tally.seconds["productive"] == 3.0
    assert Tally.of_file(tmp_path / "none.jsonl").first_launch is None


def test_breakdown_adds_scheduling_and_other_up_to_the_wall_time() -> None:
    trainer = {"productive": 60.0, "redone": 5.0, "checkpoint": 2.0, "evaluation": 3.0}
    result = breakdown(trainer, first_launch=1010.0, created=1000.0, end=1100.0)
    assert result.wall_seconds == 100.0
    assert result.seconds["scheduling"] == 10.0
    assert result.seconds["other"] == pytest.approx(20.0)
    assert set(result.seconds) == set(KINDS)
    assert sum(result.seconds.values()) == pytest.approx(result.wall_seconds)
    assert result.ratio == pytest.approx(0.6)
    assert describe(result).startswith("goodput 60.0 % of 1m40s (productive 1m00s, redone 5.0s")


def test_breakdown_never_goes_negative_when_clocks_disagree() -> None:
    """A trainer clock ahead of the operator's: more measured than the wall says."""
    result = breakdown({"productive": 50.0}, first_launch=990.0, created=1000.0, end=1040.0)
    assert result.seconds["scheduling"] == 0.0 and result.seconds["other"] == 0.0
    assert result.wall_seconds == 50.0 and result.ratio == 1.0
    before = breakdown({}, first_launch=None, created=1000.0, end=1030.0)
    assert before.seconds["scheduling"] == 30.0 and before.ratio == 0.0
