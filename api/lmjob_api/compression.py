"""`spec.compression`: an ordered chain of post-training stages, each ending in a checkpoint.

Each stage type is its own model (a union tagged by `type`); the CRD generator merges
them into one structural schema and adds a rule per type-specific field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from lmjob_api.base import ApiModel, Rule
from lmjob_api.defaults import derive_heads
from lmjob_api.training import ModelSpec

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

    rules = (
        Rule(
            cel="self.finetuneSteps == 0",
            message="a quantize stage does not fine-tune (no quantization-aware training): set "
            "finetuneSteps to 0 or fine-tune in an earlier stage",
            check=lambda s: s.finetune_steps == 0,
            field="finetuneSteps",
        ),
    )


class StudentSpec(ApiModel):
    """The student's shape: layers and hidden default to the trained model's; heads to its
    heads when hidden is not set, else derived from the student's hidden like model.heads.
    Parameters grow with layers and hidden, so the student must be smaller in one of them."""

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

    rules = (
        Rule(
            cel="self.finetuneSteps == 0",
            message="a distill stage trains its student for `steps`; finetuneSteps is not used "
            "there: set it to 0",
            check=lambda s: s.finetune_steps == 0,
            field="finetuneSteps",
        ),
    )

    def build_student(self, teacher: ModelSpec, *, tensor_parallel: int = 1) -> ModelSpec:
        """The student's ModelSpec: the teacher's, with this stage's `student` fields and the
        derived heads (see StudentSpec)."""
        s = self.student
        hidden = s.hidden or teacher.hidden
        heads = s.heads or (derive_heads(hidden, tensor_parallel) if s.hidden else teacher.heads)
        return ModelSpec.model_validate(
            {
                **teacher.to_wire(),
                "layers": s.layers or teacher.layers,
                "hidden": hidden,
                "heads": heads,
            }
        )


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
        # In the CRD too, so that CEL rules over the stages can rely on the list.
        json_schema_extra={"default": []},
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
        Rule(
            cel="self.stages.filter(s, s.type == 'distill').size() <= 1",
            message="compression.stages may hold one distill stage: the stages after it compress "
            "the student; distil a smaller student in a job of its own",
            check=lambda c: sum(isinstance(s, DistillStage) for s in c.stages) <= 1,
            field="stages",
        ),
        Rule(
            # Stage names are unique (above), so indexOf finds each stage's own position.
            cel="self.stages.all(s, s.type != 'quantize' "
            "|| self.stages.indexOf(s) == self.stages.size() - 1 "
            "|| self.stages[self.stages.indexOf(s) + 1].type == 'distill')",
            message="a quantize stage must be the last stage, or be followed by a distill stage: "
            "quantized weights are not pruned, factorised or fine-tuned; move it last",
            check=lambda c: all(
                not isinstance(s, QuantizeStage)
                or i == len(c.stages) - 1
                or isinstance(c.stages[i + 1], DistillStage)
                for i, s in enumerate(c.stages)
            ),
            field="stages",
        ),
        Rule(
            cel="self.stages.all(p, p.type != 'prune' || !has(p.structure) "
            "|| p.structure == 'unstructured' || !self.stages.exists(l, l.type == 'lowrank' "
            "&& self.stages.indexOf(l) < self.stages.indexOf(p) && !self.stages.exists(d, "
            "d.type == 'distill' && self.stages.indexOf(l) < self.stages.indexOf(d) "
            "&& self.stages.indexOf(d) < self.stages.indexOf(p))))",
            message="channel and head pruning need dense layers: put a structured prune stage "
            "before the lowrank stage (or after a distill stage)",
            check=lambda c: _structured_prune_on_dense(c.stages),
            field="stages",
        ),
    )

    def models(self, trained: ModelSpec, *, tensor_parallel: int = 1) -> list[ModelSpec]:
        """The shape of the model each stage starts from: the trained model, and after a
        distill stage its student."""
        shapes, current = [], trained
        for stage in self.stages:
            shapes.append(current)
            if isinstance(stage, DistillStage):
                current = stage.build_student(current, tensor_parallel=tensor_parallel)
        return shapes


def _structured_prune_on_dense(stages: list[Any]) -> bool:
    factorised = False
    for stage in stages:
        if isinstance(stage, LowRankStage):
            factorised = True
        elif isinstance(stage, DistillStage):
            factorised = False  # a fresh dense student
        elif isinstance(stage, PruneStage) and stage.structure != "unstructured" and factorised:
            return False
    return True
