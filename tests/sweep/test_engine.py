"""The sweep engine with real Optuna, against simulated trial jobs: each trial's evaluation
losses are a fixed function of its parameters, revealed a few steps per call, as a cluster's
jobs reveal them between reconciles."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lmjob_api.sweep import LargeModelSweepSpec, LargeModelSweepStatus, SweepPhase, TrialState
from lmjob_sweep.engine import TrialObservation, decide

STEPS = 60
EVERY = 10


def _spec(**changes: Any) -> LargeModelSweepSpec:
    base: dict[str, Any] = {
        "template": {
            "training": {"data": {"source": "/data/x.txt"}, "steps": STEPS},
        },
        "parameters": [
            {
                "path": "training.optimizer.lr",
                "type": "float",
                "low": 1e-5,
                "high": 1e-1,
                "log": True,
            },
            {"path": "training.model.dropout", "type": "float", "low": 0.0, "high": 0.3},
        ],
        "algorithm": {"type": "random", "seed": 7},
        "earlyStopping": {"type": "median", "minSteps": EVERY, "startupTrials": 1},
        "maxTrials": 8,
        "parallelTrials": 2,
    }
    base.update(changes)
    return LargeModelSweepSpec.model_validate(base)


def _loss(params: dict[str, Any], step: int) -> float:
    """Best near lr 3e-3; worse the further away on a log scale; decays with steps."""
    lr = params.get("training.optimizer.lr", 1e-3)
    return (
        1.5
        + abs(math.log10(lr / 3e-3))
        + 2.0 / (1 + step / 10)
        + params.get("training.model.dropout", 0.0)
    )


class FakeCluster:
    """Jobs that advance EVERY steps per call; they only exist once created."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.stopped: list[str] = []
        self.fail = fail

    def observe(self) -> dict[str, TrialObservation]:
        out = {}
        for name, job in self.jobs.items():
            step = job["step"]
            reports = tuple((s, _loss(job["params"], s)) for s in range(EVERY, step + 1, EVERY))
            if job["number"] in self.fail and step >= 2 * EVERY:
                out[name] = TrialObservation(True, "Failed", reports, message="OOMKilled")
                continue
            done = step >= STEPS
            out[name] = TrialObservation(
                True,
                "Succeeded" if done else "Running",
                reports,
                {"train": {"evalLoss": _loss(job["params"], STEPS)}} if done else {},
            )
        return out

    def advance(self) -> None:
        for job in self.jobs.values():
            job["step"] = min(STEPS, job["step"] + EVERY)

    def apply(self, create, stop) -> None:
        for trial in create:
            assert trial.name not in self.jobs, f"{trial.name} created twice"
            self.jobs[trial.name] = {"params": trial.parameters, "step": 0, "number": trial.number}
            self.created.append(trial.name)
        for name in stop:
            self.stopped.append(name)
            del self.jobs[name]


def _run(spec: LargeModelSweepSpec, cluster: FakeCluster, restart_every: int = 0):
    status: LargeModelSweepStatus | None = None
    for tick in range(200):
        if restart_every and status is not None and tick % restart_every == 0:
            # A restarted operator has only what the API server stored.
            status = LargeModelSweepStatus.model_validate_json(
                status.model_dump_json(by_alias=True)
            )
        decision = decide("s", spec, status, cluster.observe(), f"t{tick}")
        status = decision.status
        cluster.apply(decision.create, decision.stop)
        if status.phase in (SweepPhase.SUCCEEDED, SweepPhase.FAILED):
            return status
        cluster.advance()
    raise AssertionError("the sweep did not finish")


def test_median_rule_prunes_and_the_best_is_the_lowest_complete_value() -> None:
    spec = _spec()
    cluster = FakeCluster()
    status = _run(spec, cluster)
    assert status.phase == SweepPhase.SUCCEEDED
    assert len(status.trials) == 8 and [t.number for t in status.trials] == list(range(8))
    pruned = [t for t in status.trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.state, t.reports[-1:]) for t in status.trials]
    assert all("median" in t.reason for t in pruned)
    assert set(cluster.stopped) == {t.name for t in pruned}
    complete = [t for t in status.trials if t.state == TrialState.COMPLETE]
    assert status.best is not None
    assert status.best.value == min(t.value for t in complete)
    assert status.summary == "8/8" and status.pruned == len(pruned)
    # A pruned trial stopped before the end of training: its final evaluation is a result.
    assert all(t.step < STEPS for t in pruned)


@pytest.mark.parametrize("algorithm", ["tpe", "cmaes", "random"])
def test_status_is_the_only_state_a_restart_changes_nothing(algorithm: str) -> None:
    spec = _spec(algorithm={"type": algorithm, "seed": 3, "startupTrials": 2})
    straight = _run(spec, FakeCluster())
    cluster = FakeCluster()
    restarted = _run(spec, cluster, restart_every=1)
    key = lambda s: [(t.number, t.parameters, t.state, t.value) for t in s.trials]  # noqa: E731
    assert key(straight) == key(restarted)
    assert len(cluster.created) == len(set(cluster.created)) == 8


def test_same_inputs_same_decision() -> None:
    spec = _spec()
    first = decide("s", spec, None, {}, "t0")
    again = decide("s", spec, None, {}, "t0")
    assert first.status == again.status and first.create == again.create
    # Two trials in parallel, with different parameters.
    assert len(first.create) == 2
    assert first.create[0].parameters != first.create[1].parameters


def test_grid_visits_every_cell_once() -> None:
    spec = _spec(
        parameters=[
            {"path": "training.optimizer.lr", "type": "categorical", "choices": [1e-4, 1e-3, 1e-2]},
            {"path": "training.model.layers", "type": "int", "low": 1, "high": 2},
        ],
        algorithm={"type": "grid"},
        earlyStopping={"type": "none"},
        maxTrials=10,
    )
    status = _run(spec, FakeCluster())
    cells = {
        (t.parameters["training.optimizer.lr"], t.parameters["training.model.layers"])
        for t in status.trials
    }
    assert len(status.trials) == 6 and len(cells) == 6
    assert status.summary == "6/6"


@pytest.mark.parametrize("kind", ["asha", "hyperband"])
def test_successive_halving_rules_prune(kind: str) -> None:
    spec = _spec(
        earlyStopping={"type": kind, "minSteps": EVERY, "reductionFactor": 2}, maxTrials=10
    )
    status = _run(spec, FakeCluster(), restart_every=1)
    assert status.phase == SweepPhase.SUCCEEDED
    assert status.pruned >= 1, [(t.number, t.state) for t in status.trials]


def test_too_many_failed_trials_fail_the_sweep_and_stop_the_rest() -> None:
    spec = _spec(maxFailedTrials=1, earlyStopping={"type": "none"})
    cluster = FakeCluster(fail=frozenset({0, 1, 2}))
    status = _run(spec, cluster)
    assert status.phase == SweepPhase.FAILED
    assert status.conditions[0].reason == "TooManyFailedTrials"
    assert any(t.reason == "OOMKilled" for t in status.trials)
    # Every trial still running was stopped; failed trials' jobs stay for their logs.
    assert all(seen.phase == "Failed" for seen in cluster.observe().values())


def test_an_invalid_sweep_fails_without_creating_anything() -> None:
    spec = _spec(
        parameters=[{"path": "training.model.dropout", "type": "float", "low": 0.0, "high": 1.5}]
    )
    decision = decide("s", spec, None, {}, "t0")
    assert decision.status.phase == SweepPhase.FAILED and not decision.create
    assert "spec.parameters[0].high" in decision.status.conditions[0].message


def test_values_the_job_rejects_together_fail_the_trial_without_a_job() -> None:
    """Each value is valid alone, but a micro-batch of 32 exceeds a global batch of 16: the
    job's own rules (the API server's verdict) fail that trial before a job exists."""
    spec = _spec(
        parameters=[
            {"path": "training.batch.microBatchSize", "type": "categorical", "choices": [4, 32]},
            {"path": "training.batch.globalBatchSize", "type": "categorical", "choices": [16, 64]},
        ],
        algorithm={"type": "grid"},
        earlyStopping={"type": "none"},
        maxTrials=4,
        parallelTrials=4,
    )
    cluster = FakeCluster()
    status = _run(spec, cluster)
    rejected = [t for t in status.trials if t.state == TrialState.FAILED]
    assert [t.parameters for t in rejected] == [
        {"training.batch.microBatchSize": 32, "training.batch.globalBatchSize": 16}
    ]
    assert "microBatchSize must not exceed" in rejected[0].reason
    assert rejected[0].name not in cluster.created
    assert status.completed == 3 and status.phase == SweepPhase.SUCCEEDED


def test_the_final_evaluation_is_never_pruned() -> None:
    """A trial whose job still runs after its last training step (compression, export, the
    sample) has its result in that step's evaluation: the pruner must not discard it."""
    spec = _spec(earlyStopping={"type": "median", "minSteps": EVERY, "startupTrials": 1})
    good = {"training.optimizer.lr": 3e-3, "training.model.dropout": 0.0}
    bad = {"training.optimizer.lr": 1e-5, "training.model.dropout": 0.3}
    status = decide("s", spec, None, {}, "t0").status
    status.trials[0].parameters, status.trials[1].parameters = good, bad
    every = range(EVERY, STEPS + 1, EVERY)
    done = TrialObservation(
        True,
        "Succeeded",
        tuple((s, _loss(good, s)) for s in every),
        {"train": {"evalLoss": _loss(good, STEPS)}},
    )
    status = decide(
        "s", spec, status, {"s-0": done, "s-1": TrialObservation(True, "Running")}, "t1"
    ).status
    assert status.trials[0].state == TrialState.COMPLETE
    # Only s-1's final evaluation is new, far worse than s-0's; its job still runs (its
    # compression stages, say).
    last = TrialObservation(True, "Running", ((STEPS, _loss(bad, STEPS)),))
    status = decide("s", spec, status, {"s-0": done, "s-1": last}, "t2").status
    assert status.trials[1].state == TrialState.RUNNING, status.trials[1].reason
    # The same value one evaluation earlier is judged, and pruned.
    early = TrialObservation(True, "Running", ((STEPS - EVERY, _loss(bad, STEPS)),))
    status2 = decide(
        "s",
        spec,
        status.model_copy(
            update={
                "trials": [status.trials[0], status.trials[1].model_copy(update={"reports": []})]
            }
        ),
        {"s-0": done, "s-1": early},
        "t2",
    ).status
    assert status2.trials[1].state == TrialState.PRUNED
