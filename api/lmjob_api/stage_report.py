"""A finished stage's report, `<storage>/<stage>/report.json`: one shape for training and
every compression stage, written by the trainer, read by `lmjob run`'s summary and tools.

`metrics` are exactly the numbers of `status.stages[].metrics`, the
`lmjob_trainer_stage_result{metric}` series and the termination message; `status()` is the
stage as those see it (lmjob_api.status.StageStatus).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from lmjob_api.base import ApiModel
from lmjob_api.status import StagePhase, StageStatus

TRAIN_TYPE = "train"
# Top-level numbers of the first layout that were not metrics (`steps` says the same).
_FLAT_NOT_METRICS = frozenset({"finetuneSteps"})


class StageReport(ApiModel):
    """What one stage produced and what it cost."""

    # Written by one trainer version, read by another: unknown keys are ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    stage: str = Field(..., description="Stage name: `train` or the compression stage's name.")
    type: str = Field(
        ..., description="`train`, or the compression stage's type (prune, lowrank, ...)."
    )
    phase: StagePhase = Field("Succeeded", description="The stage's phase when it was written.")
    checkpoint: str | None = Field(
        None, description="The stage's output: a training checkpoint, or `<stage>/final`."
    )
    steps: int = Field(
        0, ge=0, description="Optimiser steps the stage ran (training, fine-tune or student)."
    )
    total_steps: int | None = Field(
        None,
        description="Training: the `steps` the run was asked for (a rerun asking for more "
        "continues from the checkpoint).",
    )
    stopped_early: bool = Field(False, description="Training ended by earlyStopping.")
    world_size: int | None = Field(None, description="Processes of the run that finished it.")
    device: str | None = Field(None, description="Device the numbers were measured on.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="evalLoss, params, wallSeconds; compression adds bytes, latencyMs, "
        "sparsity, ... (status.stages[].metrics).",
    )
    details: dict[str, Any] = Field(
        default_factory=dict, description="Stage-specific facts that are not numbers."
    )
    sample: str | None = Field(None, description="Training: text sampled from the final model.")

    @model_validator(mode="before")
    @classmethod
    def _from_flat_layout(cls, data: Any) -> Any:
        """Reports written before `metrics` held every number (the train report's first
        layout) kept them at the top level; they read the same."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        metrics = dict(data.get("metrics") or {})
        known = {*cls.model_fields, *(f.alias for f in cls.model_fields.values() if f.alias)}
        for key, value in list(data.items()):
            if key in known or key in metrics or key in _FLAT_NOT_METRICS:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[key] = float(value)
        data["metrics"] = {k: v for k, v in metrics.items() if v is not None}
        if "type" not in data and data.get("stage") == TRAIN_TYPE:
            data["type"] = TRAIN_TYPE
        return data

    def status(self) -> StageStatus:
        """The stage as status.stages, the stage series and the termination message see it."""
        return StageStatus(
            name=self.stage,
            phase=self.phase,
            checkpoint=self.checkpoint,
            metrics={k: v for k, v in self.metrics.items() if math.isfinite(v)},
        )

    def to_json(self) -> dict[str, Any]:
        """report.json. The numbers also stand flat at the top level, as in the first layout,
        so tools that read `report["evalLoss"]` keep working; `metrics` is the typed home."""
        doc = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        return {**self.metrics, **doc}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageReport:
        return cls.model_validate(data)

    @classmethod
    def from_text(cls, text: str) -> StageReport | None:
        """A report from report.json's text; None when it is not one (torn, foreign)."""
        try:
            return cls.model_validate(json.loads(text))
        except ValueError:
            return None
