"""A stage's report: what it cost and what it saved, as `<dir>/<stage>/report.json`.

`metrics()` is the flat camelCase form used everywhere else: the operator's
`status.stages[].metrics` and the `lmjob_trainer_stage_result{metric}` series. report.json
has the train report's shape (`phase`, `steps`, `evalLoss`, `checkpoint` at the top level),
so the `lmjob run` summary reads every stage's report alike.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from pydantic.alias_generators import to_camel
from torch import nn

from lmjob_trainer import storage


@dataclass
class StageReport:
    """Numbers of one finished stage; `None` where a figure does not apply."""

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
        }
        out.update({k: float(v) for k, v in optional.items() if v is not None})
        if self.input_eval_loss:
            out["evalLossChange"] = self.eval_loss / self.input_eval_loss - 1.0
        if self.linear_bytes and self.input_linear_bytes:
            out["linearCompression"] = self.input_linear_bytes / self.linear_bytes
        return out

    def to_json(self) -> dict[str, Any]:
        """report.json: like the train stage's report (phase, checkpoint, camelCase numbers at
        the top level), plus `metrics` (exactly what goes to status) and `details`."""
        return {
            "stage": self.stage,
            "type": self.type,
            "phase": "Succeeded",
            "checkpoint": self.checkpoint,
            "device": self.device,
            "finetuneSteps": self.finetune_steps,
            # `steps` as in the train stage's report: what the stage trained (fine-tune or
            # student), so the `lmjob run` table reads every report the same way.
            "steps": self.finetune_steps,
            "inputLinearBytes": self.input_linear_bytes,
            **self.metrics(),
            "metrics": self.metrics(),
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageReport:
        kwargs = {}
        for f in fields(cls):
            key = to_camel(f.name)
            if key in data:
                kwargs[f.name] = data[key]
        return cls(**kwargs)


def write_report(report: StageReport, stage_dir: Path) -> Path:
    """Write report.json atomically; its presence marks the stage done."""
    return storage.write_report(stage_dir.parent, stage_dir.name, report.to_json())


def read_report(stage_dir: Path) -> StageReport | None:
    """The stage's report, or None when the stage has not finished."""
    data = storage.read_report(stage_dir.parent, stage_dir.name)
    if not data or data.get("phase") != "Succeeded" or "type" not in data:
        return None
    return StageReport.from_json(data)


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
