"""`spec.compression`: an ordered chain of post-training stages, each ending in a checkpoint.

Each stage type is its own model (a union tagged by `type`); the CRD generator merges
them into one structural schema and adds a rule per type-specific field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lmjob_api.base import ApiModel, Rule

STAGE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _StageBase(ApiModel):
    name: str = Field(
        ...,
        min_length=1,
        max_length=40,
        pattern=STAGE_NAME_PATTERN,
        description="Unique name of the stage (lowercase letters, digits, '-'); names its checkpoint folder.",
    )
    finetune_steps: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="Recovery fine-tuning steps after the transform, with the training settings (0: none).",
    )


class PruneStage(_StageBase):
    """Magnitude pruning, made permanent after its fine-tune."""

    type: Literal["prune"] = Field(description="Stage type.")
    sparsity: float = Field(
        0.5, gt=0.0, lt=1.0, description="Fraction of weights (or channels/heads) removed."
    )
    method: Literal["magnitude"] = Field("magnitude", description="How weights are ranked: by |w|.")
    scope: Literal["global", "layer"] = Field(
        "global", description="`global`: one threshold over all Linear layers; `layer`: per layer."
    )
    structure: Literal["unstructured", "channel", "head"] = Field(
        "unstructured",
        description="`unstructured`: single weights; `channel`: whole output rows of MLP layers; "
        "`head`: whole attention heads.",
    )


class LowRankStage(_StageBase):
    """Replace Linear layers by two thinner ones (truncated SVD, optionally activation-aware)."""

    type: Literal["lowrank"] = Field(description="Stage type.")
    rank_ratio: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Rank kept as a fraction of min(in, out) of each layer. Exactly one of rankRatio "
        "and energy.",
    )
    energy: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Keep the smallest rank whose singular values hold this fraction of the energy.",
    )
    method: Literal["svd", "activation-aware"] = Field(
        "activation-aware",
        description="`svd`: plain truncated SVD of the weights (destructive on LMs); `activation-aware`: "
        "whitened by calibration-batch input statistics (as SVD-LLM).",
    )
    calibration_batches: int = Field(
        8, ge=1, le=10000, description="Batches used to gather input statistics."
    )

    rules = (
        Rule(
            cel="has(self.rankRatio) != has(self.energy)",
            message="a lowrank stage needs exactly one of rankRatio and energy",
            check=lambda s: (s.rank_ratio is None) != (s.energy is None),
            field="rankRatio",
        ),
    )


class QuantizeStage(_StageBase):
    """Post-training quantization with torchao."""

    type: Literal["quantize"] = Field(description="Stage type.")
    method: Literal["int8-weight-only", "int8-dynamic", "int4-weight-only"] = Field(
        "int8-weight-only",
        description="torchao scheme. int4-weight-only needs a CUDA GPU.",
    )


class StudentSpec(ApiModel):
    """The student's shape; each field defaults to the teacher's."""

    layers: int | None = Field(None, ge=1, le=256, description="Transformer blocks of the student.")
    heads: int | None = Field(None, ge=1, le=256, description="Attention heads of the student.")
    hidden: int | None = Field(None, ge=8, le=65536, description="Residual width of the student.")


class DistillStage(_StageBase):
    """Knowledge distillation into a smaller student: (1-α)·CE + α·T²·KL(teacher_T ‖ student_T)."""

    type: Literal["distill"] = Field(description="Stage type.")
    student: StudentSpec = Field(..., description="The student's shape (smaller than the teacher).")
    steps: int = Field(500, ge=1, le=100_000_000, description="Training steps of the student.")
    temperature: float = Field(2.0, gt=0.0, le=100.0, description="Softmax temperature T.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight α of the distillation term.")


Stage = Annotated[
    PruneStage | LowRankStage | QuantizeStage | DistillStage,
    Field(discriminator="type"),
]
STAGE_TYPES: tuple[type[_StageBase], ...] = (PruneStage, LowRankStage, QuantizeStage, DistillStage)
MAX_STAGES = 16


class CompressionSpec(ApiModel):
    """Stages run in order after training; each loads the previous stage's output."""

    stages: list[Stage] = Field(
        default_factory=list,
        max_length=MAX_STAGES,
        description="Ordered stages: prune, lowrank, quantize, distill.",
    )

    rules = (
        Rule(
            cel="self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
            message="compression.stages names must be unique: rename the duplicate stage",
            check=lambda c: len({s.name for s in c.stages}) == len(c.stages),
            field="stages",
        ),
        Rule(
            cel="!self.stages.exists(s, s.name == 'train')",
            message="compression.stages may not be named train: that name is the training stage's",
            check=lambda c: all(s.name != "train" for s in c.stages),
            field="stages",
        ),
    )
