"""Stage reports: complete camelCase metrics, one report.json shape for every stage (train
included), and a JSON round trip that also reads the first, flat layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmjob_api.stage_report import StageReport
from lmjob_trainer import storage
from lmjob_trainer.compression.report import (
    StageMeasurements,
    measure_latency,
    write_report,
)

# What the operator and the contract promise (docs/contracts.md, stage_result metric).
CONTRACT_METRICS = {"evalLoss", "params", "bytes", "sparsity", "latencyMs", "wallSeconds"}


def _report(**kw: object) -> StageMeasurements:
    base = dict(
        stage="prune",
        type="prune",
        params=1000,
        bytes=4200,
        eval_loss=2.0,
        latency_ms=1.5,
        wall_seconds=3.0,
        device="cpu",
        input_eval_loss=1.9,
        sparsity=0.5,
    )
    return StageMeasurements(**{**base, **kw})


def test_metrics_hold_the_contract_keys_and_derived_figures(tmp_path: Path) -> None:
    report = _report(linear_bytes=100, input_linear_bytes=390)
    metrics = report.metrics()
    assert metrics.keys() >= CONTRACT_METRICS
    assert metrics["evalLossChange"] == pytest.approx(2.0 / 1.9 - 1)
    assert metrics["linearCompression"] == pytest.approx(3.9)
    assert metrics["perplexity"] == pytest.approx(7.389, rel=1e-3)
    write_report(report, tmp_path / "prune")
    assert StageMeasurements.from_report(storage.read_report(tmp_path, "prune")) == report
    # Finished (a rerun skips it) only once its output is complete too.
    assert storage.finished_stage(tmp_path, "prune") is None
    (tmp_path / "prune" / storage.FINAL).mkdir()
    storage.mark_complete(tmp_path / "prune" / storage.FINAL, {})
    assert StageMeasurements.from_report(storage.finished_stage(tmp_path, "prune")) == report
    assert storage.finished_stage(tmp_path, "nowhere") is None


def test_report_json_reads_like_the_train_report(tmp_path: Path) -> None:
    data = _report(finetune_steps=10).to_report().to_json()
    # What `lmjob run` and tools read from every stage's report.json.
    assert data["phase"] == "Succeeded" and data["steps"] == 10
    assert data["evalLoss"] == data["metrics"]["evalLoss"] == 2.0
    assert StageMeasurements.from_report(StageReport.from_json(data)) == _report(finetune_steps=10)
    # A train report has the same keys, and a compression stage's reader does not take it.
    train = StageReport(
        stage="train", type="train", steps=5, total_steps=5, metrics={"evalLoss": 2.1}
    )
    storage.write_report(tmp_path, train)
    assert storage.read_report(tmp_path, "train") == train
    assert storage.finished_stage(tmp_path, "train") is None
    assert storage.finished_training(tmp_path, steps=5) == train
    assert storage.finished_training(tmp_path, steps=6) is None  # `steps` raised: train on
    assert {"stage", "type", "phase", "steps", "metrics"} <= train.to_json().keys()
    assert train.status().model_dump() == {
        "name": "train",
        "phase": "Succeeded",
        "checkpoint": None,
        "metrics": {"evalLoss": 2.1},
    }


# report.json files as the first trainer versions wrote them: numbers at the top level.
LEGACY = [
    (
        {
            "stage": "train",
            "phase": "Succeeded",
            "steps": 150,
            "totalSteps": 150,
            "evalLoss": 2.5,
            "checkpoint": "/r/train/step-000000150",
            "params": 1000,
            "wallSeconds": 3.5,
            "stoppedEarly": False,
            "worldSize": 2,
            "sample": "hello",
        },
        StageReport(
            stage="train",
            type="train",
            steps=150,
            total_steps=150,
            checkpoint="/r/train/step-000000150",
            world_size=2,
            sample="hello",
            metrics={"evalLoss": 2.5, "params": 1000.0, "wallSeconds": 3.5},
        ),
    ),
    (
        {
            "stage": "q",
            "type": "quantize",
            "phase": "Succeeded",
            "checkpoint": "/r/q/final",
            "device": "cpu",
            "finetuneSteps": 0,
            "steps": 0,
            "inputLinearBytes": 400,
            "evalLoss": 2.6,
            "metrics": {"evalLoss": 2.6, "bytes": 100.0},
            "details": {"method": "int8-weight-only"},
        },
        StageReport(
            stage="q",
            type="quantize",
            checkpoint="/r/q/final",
            device="cpu",
            metrics={"evalLoss": 2.6, "bytes": 100.0, "inputLinearBytes": 400.0},
            details={"method": "int8-weight-only"},
        ),
    ),
]


@pytest.mark.parametrize(("data", "expected"), LEGACY, ids=["train", "quantize"])
def test_first_layout_reads_the_same(data: dict, expected: StageReport) -> None:
    assert StageReport.from_json(data) == expected


def test_torn_or_foreign_report_is_none(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "report.json").write_text('{"stage": "tr')
    assert storage.read_report(tmp_path, "train") is None
    (tmp_path / "train" / "report.json").write_text("[1, 2]")
    assert storage.read_report(tmp_path, "train") is None


def test_latency_is_measured_on_a_real_forward() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    ms = measure_latency(model, seq_len=4, vocab_size=16, device=torch.device("cpu"), repeats=3)
    assert 0 < ms < 1000
