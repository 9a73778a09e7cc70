"""Stage reports: complete camelCase metrics, a JSON round trip, a readable table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmjob_trainer.compression.report import (
    StageReport,
    measure_latency,
    read_report,
    write_report,
)

# What the operator and the contract promise (docs/contracts.md, stage_result metric).
CONTRACT_METRICS = {"evalLoss", "params", "bytes", "sparsity", "latencyMs", "wallSeconds"}


def _report(**kw: object) -> StageReport:
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
    return StageReport(**{**base, **kw})


def test_metrics_hold_the_contract_keys_and_derived_figures(tmp_path: Path) -> None:
    report = _report(linear_bytes=100, input_linear_bytes=390)
    metrics = report.metrics()
    assert metrics.keys() >= CONTRACT_METRICS
    assert metrics["evalLossChange"] == pytest.approx(2.0 / 1.9 - 1)
    assert metrics["linearCompression"] == pytest.approx(3.9)
    assert metrics["perplexity"] == pytest.approx(7.389, rel=1e-3)
    write_report(report, tmp_path / "prune")
    assert read_report(tmp_path / "prune") == report
    assert read_report(tmp_path / "nowhere") is None


def test_report_json_reads_like_the_train_report() -> None:
    data = _report(finetune_steps=10).to_json()
    # What `lmjob run` and tools read from every stage's report.json.
    assert data["phase"] == "Succeeded" and data["steps"] == 10
    assert data["evalLoss"] == data["metrics"]["evalLoss"] == 2.0
    assert StageReport.from_json(data) == _report(finetune_steps=10)


def test_latency_is_measured_on_a_real_forward() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    ms = measure_latency(model, seq_len=4, vocab_size=16, device=torch.device("cpu"), repeats=3)
    assert 0 < ms < 1000
