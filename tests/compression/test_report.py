"""Stage reports: complete camelCase metrics, a JSON round trip, a readable table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmjob_trainer.compression.report import (
    StageReport,
    format_table,
    measure_latency,
    read_report,
    summary_rows,
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


def test_summary_table_has_a_row_per_stage_and_dashes_for_missing_figures() -> None:
    train = {"stage": "train", "phase": "Succeeded", "evalLoss": 1.9, "params": 1000}
    reports = [
        train,
        _report().to_json(),
        _report(stage="int8", type="quantize", sparsity=None).to_json(),
    ]
    rows = summary_rows(reports)
    assert rows[0][0] == "stage" and len(rows) == 4
    assert rows[1][:2] == ["train", "train"] and rows[1][rows[0].index("bytes")] == "-"
    assert rows[2][rows[0].index("sparsity")] == "50.0%"
    assert rows[3][rows[0].index("sparsity")] == "-"
    assert "int8" in format_table(rows)


def test_latency_is_measured_on_a_real_forward() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    ms = measure_latency(model, seq_len=4, vocab_size=16, device=torch.device("cpu"), repeats=3)
    assert 0 < ms < 1000
