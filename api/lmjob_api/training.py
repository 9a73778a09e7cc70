"""`spec.training`: what the built-in trainer trains, on what data, and how.

This block (with `spec.compression`) is also the trainer's whole configuration: the
operator renders it into the `<job>-config` ConfigMap and `lmjob run` passes it straight on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from lmjob_api.base import ApiModel, Rule
from lmjob_api.defaults import (
    DEFAULT_HIDDEN,
    HEAD_DIM,
    cel_derived_heads,
    cel_heads_exist,
    cel_or_default,
    derive_heads,
    derive_micro_batch,
    derive_warmup,
)

Strategy = Literal["ddp", "fsdp", "fsdp+tp"]
Precision = Literal["fp32", "bf16", "fp16"]
Decay = Literal["cosine", "linear", "step", "exponential", "constant"]


class ModelSpec(ApiModel):
    """The network to train: lmjob's GPT decoder, or a Hugging Face causal LM from a local path."""

    architecture: Literal["gpt", "hf"] = Field(
        "gpt",
        description="`gpt`: lmjob's GPT-style decoder sized by the fields below. "
        "`hf`: AutoModelForCausalLM loaded from `path` (no hub downloads).",
    )
    layers: int = Field(6, ge=1, le=256, description="Transformer blocks.")
    heads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Attention heads per block; must divide `hidden`. Default: derived from "
        "`hidden` with heads of 64 dimensions where it divides (384 -> 6, 768 -> 12), else the "
        "nearest head size that does, and a multiple of parallelism.tensorParallel.",
    )
    hidden: int | None = Field(
        None,
        ge=8,
        le=65536,
        description=f"Width of the residual stream. Default: {HEAD_DIM} × heads when heads is set, "
        f"else {DEFAULT_HIDDEN}.",
    )
    seq_len: int = Field(256, ge=8, le=131072, description="Context length in tokens.")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout probability during training. Masks are drawn per (seed, step, "
        "data-parallel rank), so a run resized to another world size follows the unresized "
        "run's losses exactly only with dropout 0 (with dropout, statistically).",
    )
    path: str | None = Field(
        None,
        min_length=1,
        description="Local directory of a Hugging Face model (architecture `hf`).",
    )

    _explicit: frozenset[str] = PrivateAttr(default=frozenset())

    rules = (
        Rule(
            # Only when both are written: a derived one always fits the other.
            cel="self.architecture != 'gpt' || !has(self.heads) || !has(self.hidden) "
            "|| self.hidden % self.heads == 0",
            message="model.hidden must be a multiple of model.heads: pick heads that divide hidden",
            check=lambda m: m.architecture != "gpt" or m.hidden % m.heads == 0,
            field="hidden",
        ),
        Rule(
            cel="self.architecture != 'hf' || has(self.path)",
            message="model.path is required when model.architecture is hf: give the local model directory",
            check=lambda m: m.architecture != "hf" or m.path is not None,
            field="architecture",
        ),
    )

    @model_validator(mode="after")
    def _derive_shape(self) -> ModelSpec:
        self._explicit = frozenset(self.model_fields_set)
        self.apply_derived_shape(tensor_parallel=1)
        return self

    def apply_derived_shape(self, *, tensor_parallel: int) -> None:
        """Fill the hidden and heads the user left out, so that they fit what was written."""
        if "hidden" not in self._explicit:
            self.hidden = HEAD_DIM * self.heads if "heads" in self._explicit else DEFAULT_HIDDEN
        if "heads" not in self._explicit:
            self.heads = derive_heads(self.hidden, tensor_parallel)


class DataSpec(ApiModel):
    """Training text and how it becomes tokens."""

    source: str = Field(
        ...,
        min_length=1,
        description="A text file, or a folder of .txt files, readable by every worker.",
    )
    tokenizer: str = Field(
        "bytes",
        min_length=1,
        description="`bytes` (byte-level, 256 tokens) or a local directory holding a Hugging Face tokenizer.",
    )
    validation_split: float = Field(
        0.05,
        gt=0.0,
        le=0.5,
        description="Fraction of the tokens, taken from the end of the text, held out for evaluation.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where token shards are cached (default: `<storage.path>/data-cache`).",
    )


class ParallelismSpec(ApiModel):
    """How the model is spread over the workers' processes."""

    strategy: Strategy = Field(
        "ddp",
        description="`ddp`: replicate the model. `fsdp`: shard parameters, gradients and optimiser state "
        "(FSDP2). `fsdp+tp`: 2-D mesh, FSDP across groups and tensor parallel within each.",
    )
    tensor_parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="Tensor-parallel group size (strategy fsdp+tp); must divide model.heads and "
        "workers.procsPerWorker.",
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each block's activations in the backward pass to save memory."
    )
    compile: bool = Field(False, description="torch.compile each block (GPU only; ignored on CPU).")

    rules = (
        Rule(
            cel="self.tensorParallel == 1 || self.strategy == 'fsdp+tp'",
            message="parallelism.tensorParallel > 1 needs parallelism.strategy fsdp+tp",
            check=lambda p: p.tensor_parallel == 1 or p.strategy == "fsdp+tp",
            field="tensorParallel",
        ),
    )


class OptimizerSpec(ApiModel):
    """The optimiser and its regularisation."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="`adamw` or `sgd` (with momentum).")
    lr: float = Field(
        3.0e-4, gt=0.0, le=10.0, description="Peak learning rate, reached after warmup."
    )
    weight_decay: float = Field(
        0.1, ge=0.0, le=1.0, description="Decoupled weight decay (matrices only)."
    )
    grad_clip: float = Field(
        1.0, ge=0.0, description="Clip the global gradient norm to this; 0 disables."
    )
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")


class ScheduleSpec(ApiModel):
    """Learning-rate schedule: linear warmup, then a decay."""

    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Steps of linear warmup from 0 to optimizer.lr. Default: a tenth of "
        "training.steps, at most 100 (so it never exceeds a short run).",
    )
    decay: Decay = Field("cosine", description="Shape of the decay after warmup.")
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Floor of the cosine/linear decay, as a fraction of lr."
    )
    step_every: int = Field(
        1000, ge=1, description="`step` decay: multiply by gamma every this many steps."
    )
    gamma: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="`step`/`exponential` decay factor (exponential: per 1000 steps).",
    )


class BatchSpec(ApiModel):
    """Batch sizes in sequences; gradient accumulation is derived, never set."""

    micro_batch_size: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Sequences per process per forward pass. Default: 16, or with globalBatchSize "
        "set, the fewest forward passes of at most 16 sequences that hold it, split evenly "
        "(globalBatchSize 24 -> 12).",
    )
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Sequences per optimiser step over all processes, the same at every world "
        "size: each data-parallel rank takes a contiguous slice (sizes differ by at most one) "
        "in ceil(global / (micro × data-parallel size)) micro-batches of nearly equal size "
        "(a rank with fewer samples than that pads with micro-batches of weight 0), and the "
        "loss is normalised by the global token count, so an elastic resize does not change "
        "the optimisation. Default: micro × data-parallel size (then it follows the world "
        "size).",
    )

    rules = (
        Rule(
            # Any pair is exact at every world size (the trainer pads the last micro-batches);
            # a micro-batch larger than the whole step is only ever a mistake.
            cel="!has(self.globalBatchSize) || !has(self.microBatchSize) "
            "|| self.microBatchSize <= self.globalBatchSize",
            message="batch.microBatchSize must not exceed batch.globalBatchSize: lower "
            "microBatchSize (or leave it out to derive it)",
            check=lambda b: (
                b.global_batch_size is None or b.micro_batch_size <= b.global_batch_size
            ),
            field="microBatchSize",
        ),
    )

    @model_validator(mode="after")
    def _derive_micro(self) -> BatchSpec:
        if self.micro_batch_size is None:
            self.micro_batch_size = derive_micro_batch(self.global_batch_size)
        return self


class EvaluationSpec(ApiModel):
    """Periodic evaluation on the held-out split."""

    every_steps: int = Field(
        200, ge=1, description="Evaluate every this many optimiser steps (and at the end)."
    )
    steps: int = Field(20, ge=1, le=100000, description="Batches per evaluation.")


class EarlyStoppingSpec(ApiModel):
    """Stop training when eval loss stops improving."""

    patience: int = Field(5, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(
        0.0, ge=0.0, description="Smallest decrease of eval loss that counts as improvement."
    )


class CheckpointSpec(ApiModel):
    """Distributed checkpoints (torch.distributed.checkpoint), resharded on load."""

    every_steps: int = Field(200, ge=1, description="Save every this many steps (and at the end).")
    keep: int = Field(
        3, ge=1, le=1000, description="Complete checkpoints kept; older ones are deleted."
    )
    async_: bool = Field(
        False,
        alias="async",
        description="Write in the background while training continues (one save in flight at a time).",
    )


class NonFiniteSpec(ApiModel):
    """What a step whose loss or gradients are NaN or infinite does."""

    action: Literal["fail", "skip"] = Field(
        "fail",
        description="`fail`: stop at that step, keep the checkpoints (all written before it) "
        "and fail the job, never retried (the same data would diverge again). `skip`: leave "
        "the weights as they were, go on with the next batch, and fail once "
        "`maxSkippedSteps` steps of a stage were skipped.",
    )
    max_skipped_steps: int = Field(
        10, ge=1, le=1_000_000, description="With `skip`: skipped steps a stage may have."
    )


class StragglerSpec(ApiModel):
    """When a rank counts as a straggler (docs/operator.md, status.stragglers)."""

    threshold: float = Field(
        1.5,
        gt=1.0,
        le=100.0,
        description="A rank is a straggler when its median step time over the window exceeds "
        "this many times the median over all ranks.",
    )
    window_steps: int = Field(
        20,
        ge=2,
        le=10_000,
        description="Steps each rank's median is taken over; nobody is named before a full "
        "window, so one slow step (a checkpoint, a page fault) never is.",
    )
    min_excess_seconds: float = Field(
        0.01,
        ge=0.0,
        le=3600.0,
        description="A straggler is also at least this many seconds per step slower than the "
        "median: below it, differences are timer and scheduler noise (tiny steps on CPU).",
    )


class HangSpec(ApiModel):
    """When a rank whose step stopped advancing saves its stacks (docs/trainer.md)."""

    timeout_seconds: int | None = Field(
        None,
        ge=1,
        le=86_400,
        description="Seconds without a completed step before each rank saves its Python stacks "
        "under <storage>/hangs/ and reports itself stalled. Absent: derived, max(300, 3 × the "
        "longest step-to-step interval seen), which includes checkpoint saves and evaluations.",
    )


BYTE_VOCAB = 256
"""Vocabulary of the `bytes` tokenizer."""


def tp_cel(t: str) -> str:
    """CEL: the tensor-parallel size in effect of the TrainingSpec at CEL path `t`."""
    return f"({t}.parallelism.strategy == 'fsdp+tp' ? {t}.parallelism.tensorParallel : 1)"


def model_hidden_cel(t: str) -> str:
    """CEL: model.hidden, with its derived default, of the TrainingSpec at `t`."""
    heads_times = cel_or_default(
        f"{t}.model.heads", str(DEFAULT_HIDDEN), template=f"{{}} * {HEAD_DIM}"
    )
    return cel_or_default(f"{t}.model.hidden", heads_times)


def model_heads_cel(t: str) -> str:
    """CEL: model.heads, with its derived default, of the TrainingSpec at `t`."""
    return cel_or_default(f"{t}.model.heads", cel_derived_heads(model_hidden_cel(t), tp_cel(t)))


class TrainingSpec(ApiModel):
    """The built-in trainer's job: model, data, parallelism, precision and the optimisation loop."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The network to train.")
    data: DataSpec = Field(..., description="Training text and tokenizer.")
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec, description="Data/model parallelism."
    )
    precision: Precision = Field(
        "fp32", description="`fp32`, `bf16` (autocast) or `fp16` (autocast + gradient scaling)."
    )
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec, description="Optimiser settings."
    )
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec, description="Learning-rate schedule."
    )
    steps: int = Field(1000, ge=1, le=100_000_000, description="Optimiser steps to train.")
    batch: BatchSpec = Field(default_factory=BatchSpec, description="Batch sizes.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Periodic evaluation."
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop early when eval loss plateaus (absent: train all `steps`)."
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    non_finite: NonFiniteSpec = Field(
        default_factory=NonFiniteSpec,
        description="A NaN or infinite loss or gradient norm: fail (default) or skip the step. "
        "With fp16, overflowing gradients are the loss scaler's to skip; a non-finite loss is not.",
    )
    stragglers: StragglerSpec = Field(
        default_factory=StragglerSpec,
        description="Naming ranks whose steps are slower than the others' (status.stragglers).",
    )
    hang: HangSpec = Field(
        default_factory=HangSpec,
        description="Detecting a step that stopped advancing (a rank stuck in a collective).",
    )
    seed: int = Field(1337, ge=0, description="Seed for weights, data order and dropout.")

    rules = (
        Rule(
            cel="self.parallelism.strategy != 'fsdp+tp' || self.model.architecture != 'gpt' "
            "|| self.parallelism.tensorParallel == 1 || (has(self.model.heads) "
            "? self.model.heads % self.parallelism.tensorParallel == 0 : "
            + cel_heads_exist(model_hidden_cel("self"), "self.parallelism.tensorParallel")
            + ")",
            message="training.parallelism.tensorParallel must divide training.model.heads "
            "(when heads is not set: divide training.model.hidden)",
            check=lambda t: (
                t.parallelism.strategy != "fsdp+tp"
                or t.model.architecture != "gpt"
                or t.model.heads % t.parallelism.tensor_parallel == 0
            ),
            field="parallelism.tensorParallel",
        ),
        Rule(
            cel="self.parallelism.strategy != 'fsdp+tp' || self.model.architecture == 'gpt'",
            message="parallelism.strategy fsdp+tp supports model.architecture gpt only: use fsdp "
            "for a Hugging Face model",
            check=lambda t: t.parallelism.strategy != "fsdp+tp" or t.model.architecture == "gpt",
            field="parallelism.strategy",
        ),
        Rule(
            cel=f"self.parallelism.strategy != 'fsdp+tp' || self.data.tokenizer != 'bytes' "
            f"|| {BYTE_VOCAB} % self.parallelism.tensorParallel == 0",
            message=f"training.parallelism.tensorParallel must divide the byte tokenizer's "
            f"vocabulary ({BYTE_VOCAB}): use a power of two",
            check=lambda t: (
                t.parallelism.strategy != "fsdp+tp"
                or t.data.tokenizer != "bytes"
                or BYTE_VOCAB % t.parallelism.tensor_parallel == 0
            ),
            field="parallelism.tensorParallel",
        ),
        Rule(
            # Only a written warmup can exceed the run: the default is derived from steps.
            cel="!has(self.schedule.warmupSteps) || self.schedule.warmupSteps <= self.steps",
            message="training.schedule.warmupSteps must not exceed training.steps",
            check=lambda t: t.schedule.warmup_steps <= t.steps,
            field="schedule.warmupSteps",
        ),
    )

    @model_validator(mode="after")
    def _derive_defaults(self) -> TrainingSpec:
        self.model.apply_derived_shape(tensor_parallel=self.tensor_parallel)
        if self.schedule.warmup_steps is None:
            self.schedule.warmup_steps = derive_warmup(self.steps)
        return self

    @property
    def tensor_parallel(self) -> int:
        """The tensor-parallel size in effect (1 unless the strategy is fsdp+tp)."""
        par = self.parallelism
        return par.tensor_parallel if par.strategy == "fsdp+tp" else 1
