"""The sweep reconcile's pure parts: a trial's job, what a trial job's status says, and the
events a status change is worth."""

from __future__ import annotations

from typing import Any

import pytest

from lmjob_api.sweep import BestTrial, LargeModelSweepStatus, TrialState, TrialStatus
from lmjob_api.validation import Problem
from lmjob_operator.sweep_trials import (
    build_invalid_status,
    build_trial_job,
    is_invalid,
    jobs_to_stop,
    observe_trial,
    observe_trials,
    parse_sweep,
    sweep_events,
)
from lmjob_sweep.engine import TrialObservation

UID = "sweep-uid"


def sweep_body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "namespace": "ns", "uid": UID, "resourceVersion": "7"},
        "spec": {
            "template": {
                "training": {
                    "model": {"layers": 2, "heads": 2, "hidden": 32, "seqLen": 32},
                    "data": {"source": "/data/t.txt"},
                    "steps": 50,
                    "batch": {"microBatchSize": 4, "globalBatchSize": 8},
                }
            },
            "parameters": [
                {"path": "training.optimizer.lr", "type": "float", "low": 1e-4, "high": 1e-2}
            ],
            **spec,
        },
    }


def test_trial_job_is_the_template_with_the_values_owned_by_the_sweep() -> None:
    sweep, problems = parse_sweep(sweep_body())
    assert problems == [] and sweep is not None
    trial = TrialStatus(number=3, name="s-3", parameters={"training.optimizer.lr": 0.002})
    job = build_trial_job(sweep_body(), sweep, trial)
    assert job["metadata"]["name"] == "s-3"
    assert job["metadata"]["labels"] == {"lmjob.dev/sweep": "s", "lmjob.dev/trial": "3"}
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (
        "LargeModelSweep",
        UID,
        True,
        True,
    )
    assert job["spec"]["training"]["optimizer"]["lr"] == 0.002
    assert job["spec"]["training"]["steps"] == 50


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"parallelTrials": 5, "maxTrials": 2}, "spec.parallelTrials"),
        (
            {
                "parameters": [
                    {"path": "training.model.dropout", "type": "float", "low": 0, "high": 1.5}
                ]
            },
            "spec.parameters[0].high",
        ),
    ],
    ids=["a rule CEL also has", "a bound the job rejects"],
)
def test_parse_names_the_field_as_lmjob_validate(patch: dict, field: str) -> None:
    sweep, problems = parse_sweep(sweep_body(**patch))
    assert sweep is None
    assert any(str(p).startswith(f"{field}:") for p in problems), problems


def job(status: dict[str, Any], uid: str = UID, name: str = "s-0", **meta: Any) -> dict:
    owner = {"uid": uid, "controller": True, "kind": "LargeModelSweep", "name": "s"}
    return {"metadata": {"name": name, "ownerReferences": [owner], **meta}, "status": status}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, TrialObservation(exists=True)),
        (
            {
                "phase": "Running",
                "evaluations": [
                    {"stage": "train", "step": 20, "loss": 3.0},
                    {"stage": "prune", "step": 5, "loss": 9.0},
                    {"stage": "train", "step": 10, "loss": 4.0},
                ],
            },
            TrialObservation(exists=True, phase="Running", reports=((10, 4.0), (20, 3.0))),
        ),
        (
            {
                "phase": "Succeeded",
                "stages": [
                    {"name": "train", "phase": "Succeeded", "metrics": {"evalLoss": 2.5}},
                    {"name": "int8", "phase": "Skipped"},
                ],
            },
            TrialObservation(
                exists=True, phase="Succeeded", stage_metrics={"train": {"evalLoss": 2.5}}
            ),
        ),
        (
            {
                "phase": "Failed",
                "conditions": [
                    {"type": "Running", "status": "False", "message": "not this"},
                    {"type": "Failed", "status": "True", "message": "exited with code 78"},
                ],
            },
            TrialObservation(exists=True, phase="Failed", message="exited with code 78"),
        ),
    ],
    ids=["no status yet", "train evaluations in step order", "stage metrics", "failed"],
)
def test_observe_trial(status: dict, expected: TrialObservation) -> None:
    assert observe_trial(job(status)) == expected


def test_observe_trials_counts_only_this_sweeps_live_jobs() -> None:
    trials = [TrialStatus(number=i, name=f"s-{i}") for i in range(4)]
    jobs = [
        job({"phase": "Running"}, name="s-0"),
        job({"phase": "Running"}, name="s-1", uid="an-earlier-sweep-of-that-name"),
        job({"phase": "Running"}, name="s-2", deletionTimestamp="2026-01-01T00:00:00Z"),
        job({"phase": "Pending"}, name="s-9"),
    ]
    seen = observe_trials(jobs, UID, trials)
    assert {name: o.exists for name, o in seen.items()} == {
        "s-0": True,
        "s-1": False,
        "s-2": False,
        "s-3": False,
        "s-9": True,
    }


def status_of(*states: TrialState, best: int | None = None) -> LargeModelSweepStatus:
    trials = [
        TrialStatus(number=i, name=f"s-{i}", state=state, reason=f"why {i}")
        for i, state in enumerate(states)
    ]
    return LargeModelSweepStatus(
        trials=trials,
        best=None if best is None else BestTrial(number=best, name=f"s-{best}", value=1.5),
    )


R, P, F, C = TrialState.RUNNING, TrialState.PRUNED, TrialState.FAILED, TrialState.COMPLETE


@pytest.mark.parametrize(
    ("previous", "status", "reasons"),
    [
        (None, status_of(R), []),
        (status_of(R, R), status_of(P, F), ["TrialPruned", "TrialFailed"]),
        (status_of(P, R), status_of(P, R), []),
        (status_of(C, R), status_of(C, R, best=0), ["BestTrial"]),
        (status_of(C, C, best=0), status_of(C, C, best=1), ["BestTrial"]),
        (status_of(C, C, best=0), status_of(C, C, best=0), []),
    ],
    ids=["new trial", "pruned and failed", "no change", "first best", "better best", "same best"],
)
def test_sweep_events(
    previous: LargeModelSweepStatus | None, status: LargeModelSweepStatus, reasons: list[str]
) -> None:
    assert [e.reason for e in sweep_events(previous, status)] == reasons


def test_invalid_status_fails_once_and_keeps_its_time() -> None:
    problems = [Problem("spec.parameters[0].high", "narrow the range")]
    first = build_invalid_status(None, problems, "2026-01-01T00:00:00Z")
    again = build_invalid_status(first, problems, "2026-01-02T00:00:00Z")
    assert is_invalid(first) and first.phase == "Failed"
    assert again == first
    assert first.conditions[0].message == "spec.parameters[0].high: narrow the range"
    assert [e.reason for e in sweep_events(None, first)] == ["InvalidSpec"]
    assert sweep_events(first, again) == []


def test_jobs_of_ended_trials_are_stopped_on_every_pass() -> None:
    """A pass cut off between writing `Pruned` and deleting the job: the next one deletes it."""
    status = status_of(P, P, F, C, R, P)
    observed = {
        "s-0": TrialObservation(exists=True, phase="Running"),  # pruned, still running
        "s-1": TrialObservation(exists=False),  # pruned and gone
        "s-2": TrialObservation(exists=True, phase="Failed"),  # its own failure: keep it
        "s-3": TrialObservation(exists=True, phase="Succeeded"),
        "s-4": TrialObservation(exists=True, phase="Running"),
        "s-5": TrialObservation(exists=True, phase="Pending"),  # pruned before it started
    }
    assert jobs_to_stop(status, observed) == ["s-0", "s-5"]
