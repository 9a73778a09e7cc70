"""The trainer's last word: every stage's final phase, checkpoint and numbers, as one
termination message, written by the trainer and read by the operator (one codec for both).

Kubernetes copies what a container wrote to its `terminationMessagePath` into the pod's
status (`state.terminated.message`, at most 4096 bytes). The operator thereby learns the
final results even when a job ends between two scrapes of the metrics endpoint, and the
trainer still needs no Kubernetes credentials to report them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from lmjob_api.status import STAGE_PHASES, StageStatus

FORMAT = "lmjob.dev/stages/v1"
# Env var naming the file; the operator sets it to the container's terminationMessagePath.
PATH_ENV = "LMJOB_TERMINATION_LOG"
DEFAULT_PATH = "/dev/termination-log"
# Kubernetes truncates a container's termination message beyond this.
MAX_BYTES = 4096
# What survives when everything does not fit: the numbers `lmjob run` shows, and how
# close each export came to lmjob's logits.
ESSENTIAL_METRICS = (
    "evalLoss",
    "params",
    "bytes",
    "sparsity",
    "latencyMs",
    "wallSeconds",
    "maxAbsDiff",
)
# Room kept for the error that ended a failed run.
MAX_ERROR = 600


def _number(value: float) -> float | None:
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _stage(stage: StageStatus, metrics: Sequence[str] | None, checkpoint: bool) -> dict:
    out: dict[str, Any] = {"name": stage.name, "phase": stage.phase}
    if checkpoint and stage.checkpoint:
        out["checkpoint"] = stage.checkpoint
    numbers = {
        k: n
        for k, v in stage.metrics.items()
        if (metrics is None or k in metrics) and v is not None and (n := _number(v)) is not None
    }
    if numbers:
        out["metrics"] = numbers
    return out


def encode_stages(stages: Sequence[StageStatus], error: str | None = None) -> str:
    """Compact JSON of `stages` ({name, phase, checkpoint?, metrics?} each), and of the
    `error` that ended a failed run, within MAX_BYTES: numbers rounded to 6 significant
    digits, and past the limit only the essential metrics, then no checkpoints, then
    phases alone."""
    for metrics, checkpoint in (
        (None, True),
        (ESSENTIAL_METRICS, True),
        (ESSENTIAL_METRICS, False),
        ((), False),
    ):
        doc: dict[str, Any] = {
            "format": FORMAT,
            "stages": [_stage(s, metrics, checkpoint) for s in stages],
        }
        if error:
            doc["error"] = error if len(error) <= MAX_ERROR else error[: MAX_ERROR - 1] + "…"
        text = json.dumps(doc, separators=(",", ":"))
        if len(text.encode()) <= MAX_BYTES:
            return text
    raise ValueError(f"{len(stages)} stages do not fit a termination message")


def _ours(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def decode_error(text: str) -> str | None:
    """The error in a message `encode_stages` wrote, if the run failed with one."""
    doc = _ours(text)
    error = doc.get("error") if doc else None
    return error if isinstance(error, str) and error else None


def decode_stages(text: str) -> list[StageStatus] | None:
    """The stages of a message `encode_stages` wrote; None for anything else (a job's own
    command may write its own message, and Kubernetes may have cut it short)."""
    doc = _ours(text)
    if doc is None:
        return None
    stages = doc.get("stages")
    if not isinstance(stages, list):
        return None
    out = []
    for s in stages:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            return None
        metrics = s.get("metrics")
        phase = s.get("phase")
        checkpoint = s.get("checkpoint")
        out.append(
            StageStatus(
                name=s["name"],
                # A phase this reader does not know (a newer trainer's) reads as Pending.
                phase=phase if phase in STAGE_PHASES else "Pending",
                checkpoint=checkpoint if isinstance(checkpoint, str) else None,
                metrics={
                    str(k): float(v)
                    for k, v in (metrics if isinstance(metrics, dict) else {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                },
            )
        )
    return out
