"""A compression stage's measurements: what it cost and what it saved, written as the one
report shape of every stage (lmjob_api.stage_report.StageReport, `<dir>/<stage>/report.json`).

`metrics()` is the flat camelCase form used everywhere else: the report's `metrics`, the
operator's `status.stages[].metrics` and the `lmjob_trainer_stage_result{metric}` series.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmjob_api.stage_report import StageReport
from lmjob_trainer import storage


@dataclass
class StageMeasurements:
    """Numbers of one finished compression stage; `None` where a figure does not apply."""

    stage: str
    type: str
    params: int
    """Parameters of the output model (tied weights once; pruned-to-zero weights still count)."""
    bytes: int
    """Bytes on disk of `<stage>/final/`."""
    eval_loss: float
    """Mean cross-entropy on the validation split, after the stage (and its fine-tune)."""
    latency_ms: float
    """Median time of one forward pass of a (1, seqLen) batch on `device`."""
    wall_seconds: float
    """Wall time of the run that finished the stage (a resumed run counts from its restart)."""
    device: str
    checkpoint: str | None = None
    """The stage's output folder (`<stage>/final`)."""
    input_eval_loss: float | None = None
    """Eval loss of the model the stage started from."""
    eval_loss_before_finetune: float | None = None
    sparsity: float | None = None
    """Prune stages: the fraction of what the stage targets that is gone, measured on the
    output: zero weights (unstructured), removed channels or heads (structured)."""
    weight_sparsity: float | None = None
    """Fraction of the block Linear weights of the stage's input that are zero or removed."""
    linear_bytes: int | None = None
    """In-memory bytes of the block Linear weights as stored (quantized: int data + scales)."""
    input_linear_bytes: int | None = None
    finetune_steps: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    """Stage-specific facts: method, ranks, removed heads, how the student started, ..."""

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.eval_loss, 50.0))

    def metrics(self) -> dict[str, float]:
        """camelCase numbers for status.stages[].metrics and the stage_result metric series."""
        out: dict[str, float] = {
            "evalLoss": self.eval_loss,
            "perplexity": self.perplexity,
            "params": float(self.params),
            "bytes": float(self.bytes),
            "latencyMs": self.latency_ms,
            "wallSeconds": self.wall_seconds,
        }
        optional = {
            "inputEvalLoss": self.input_eval_loss,
            "evalLossBeforeFinetune": self.eval_loss_before_finetune,
            "sparsity": self.sparsity,
            "weightSparsity": self.weight_sparsity,
            "linearBytes": self.linear_bytes,
            "inputLinearBytes": self.input_linear_bytes,
        }
        out.update({k: float(v) for k, v in optional.items() if v is not None})
        if self.input_eval_loss:
            out["evalLossChange"] = self.eval_loss / self.input_eval_loss - 1.0
        if self.linear_bytes and self.input_linear_bytes:
            out["linearCompression"] = self.input_linear_bytes / self.linear_bytes
        return out

    def to_report(self) -> StageReport:
        """The stage's report.json, in the shape every stage's report has."""
        return StageReport(
            stage=self.stage,
            type=self.type,
            checkpoint=self.checkpoint,
            # What the stage trained (fine-tune or student), as `steps` of any stage.
            steps=self.finetune_steps,
            device=self.device,
            metrics=self.metrics(),
            details=self.details,
        )

    @classmethod
    def from_report(cls, report: StageReport) -> StageMeasurements:
        """The measurements back from a report (a restarted run skipping a finished stage)."""
        m = report.metrics

        def count(key: str) -> int | None:
            return int(m[key]) if key in m else None

        return cls(
            stage=report.stage,
            type=report.type,
            params=int(m.get("params", 0)),
            bytes=int(m.get("bytes", 0)),
            eval_loss=m.get("evalLoss", math.nan),
            latency_ms=m.get("latencyMs", math.nan),
            wall_seconds=m.get("wallSeconds", 0.0),
            device=report.device or "",
            checkpoint=report.checkpoint,
            input_eval_loss=m.get("inputEvalLoss"),
            eval_loss_before_finetune=m.get("evalLossBeforeFinetune"),
            sparsity=m.get("sparsity"),
            weight_sparsity=m.get("weightSparsity"),
            linear_bytes=count("linearBytes"),
            input_linear_bytes=count("inputLinearBytes"),
            finetune_steps=report.steps,
            details=dict(report.details),
        )


def write_report(measured: StageMeasurements, stage_dir: Path) -> Path:
    """Write report.json atomically; its presence marks the stage done."""
    return storage.write_report(stage_dir.parent, measured.to_report())


def measure_latency(
    model: nn.Module,
    seq_len: int,
    vocab_size: int,
    device: torch.device,
    repeats: int = 20,
    warmup: int = 3,
) -> float:
    """Median milliseconds of one no-grad forward of a (1, seq_len) batch on `device`."""
    idx = torch.randint(0, vocab_size, (1, seq_len), device=device)
    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(idx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    model.train(was_training)
    return statistics.median(times)
