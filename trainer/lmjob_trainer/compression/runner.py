"""The stage runner: `compression.stages` in order after training, every rank together.

Each stage loads the previous stage's output (the train stage's newest checkpoint for the
first), applies its transform, optionally trains with the training loop (`loop.run_steps`:
same parallelism, precision, checkpoints under `<root>/<stage>/step-*`, metrics labelled with
the stage), evaluates, and ends in `<root>/<stage>/final/` plus `<root>/<stage>/report.json`.

Restarts: a stage with a report is done and skipped. An unfinished one starts over from its
input, which is cheap and deterministic (same input, same transform, same masks), and
`run_steps` then continues from the stage's own newest checkpoint instead of step 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmjob_api.compression import DistillStage, LowRankStage, PruneStage, QuantizeStage
from lmjob_api.stage_report import StageReport
from lmjob_api.training import ModelSpec, Strategy, TrainingSpec
from lmjob_trainer import storage
from lmjob_trainer.checkpoint import choose_on_rank0
from lmjob_trainer.compression.artifact import (
    Architecture,
    folder_bytes,
    read_architecture,
    write_output,
)
from lmjob_trainer.compression.distill import DistillLoss, apply_teacher_init
from lmjob_trainer.compression.layers import linear_weight_bytes
from lmjob_trainer.compression.load import build_architecture, load_stage_model, stage_output_dir
from lmjob_trainer.compression.lowrank import apply_lowrank, collect_input_gram, ranks_of
from lmjob_trainer.compression.prune import MaskKeeper, apply_pruning, pruned_fraction, structure_of
from lmjob_trainer.compression.quantize import apply_quantization
from lmjob_trainer.compression.report import (
    StageMeasurements,
    measure_latency,
    write_report,
)
from lmjob_trainer.compression.validate import build_student_spec
from lmjob_trainer.logs import set_log_context
from lmjob_trainer.loop import LossFn, run_steps
from lmjob_trainer.model import count_params
from lmjob_trainer.optim import lr_factor
from lmjob_trainer.session import TrainerSession

log = logging.getLogger(__name__)

Stage = PruneStage | LowRankStage | QuantizeStage | DistillStage


@dataclass
class StageInput:
    """The model a stage starts from, and what is known about it."""

    model: nn.Module
    arch: Architecture
    eval_loss: float | None


@dataclass
class StageOutput:
    """What a transform (and its training) produced, before evaluation and saving."""

    model: nn.Module
    arch: Architecture
    details: dict[str, Any] = field(default_factory=dict)
    eval_loss: float | None = None
    """Set when the training loop already evaluated the final weights."""
    eval_loss_before_finetune: float | None = None
    finetune_steps: int = 0
    sparse: bool = False
    """Store zero-heavy tensors in the bitmask format (unstructured pruning)."""
    sparsity: float | None = None
    weight_sparsity: float | None = None
    interrupted: bool = False


def run_stages(session: TrainerSession) -> None:
    """Run every compression stage after training (the train.py hook). A collective."""
    metrics = session.metrics
    previous, previous_eval = storage.TRAIN_STAGE, _train_eval_loss(session)
    for index, stage in enumerate(session.config.compression.stages):
        if session.stop_requested.is_set():
            return
        done = _finished_report(session, stage.name)
        if done is not None:
            log.info("stage finished before; skipped", extra={"stage": stage.name})
            metrics.set_stage_result(stage.name, done.metrics())
            metrics.set_stage_phase(stage.name, "Succeeded")
            previous, previous_eval = stage.name, done.eval_loss
            continue
        metrics.set_stage_phase(stage.name, "Running")
        set_log_context(stage=stage.name)
        try:
            report = run_stage(session, index, stage, _load_input(session, previous, previous_eval))
        except Exception:
            metrics.set_stage_phase(stage.name, "Failed")
            raise
        if report is None:
            return  # stopped by a signal; the stage resumes from its checkpoint next time
        metrics.set_stage_result(stage.name, report.metrics())
        metrics.set_stage_phase(stage.name, "Succeeded")
        previous, previous_eval = stage.name, report.eval_loss


def _train_eval_loss(session: TrainerSession) -> float | None:
    """The trained model's eval loss from its report, as rank 0 reads it: the others must not
    find it missing (not yet written) and evaluate alone, a collective nobody else joins."""
    return choose_on_rank0(
        session.env,
        lambda: _eval_loss_of(storage.read_report(session.root, storage.TRAIN_STAGE)),
    )


def _eval_loss_of(report: StageReport | None) -> float | None:
    return report.metrics.get("evalLoss") if report else None


def _finished_report(session: TrainerSession, stage: str) -> StageMeasurements | None:
    """The stage's report if it is done (rank 0 decides, so all ranks skip alike)."""

    def pick() -> StageMeasurements | None:
        report = storage.finished_stage(session.root, stage)
        return None if report is None else StageMeasurements.from_report(report)

    return choose_on_rank0(session.env, pick)


def _load_input(session: TrainerSession, previous: str, eval_loss: float | None) -> StageInput:
    """The previous stage's model as a plain CPU module on every rank."""
    if previous == storage.TRAIN_STAGE:
        model = session.load_stage_model(storage.TRAIN_STAGE)
        arch = Architecture(model=session.training.model.to_wire(), vocab_size=session.vocab_size)
    else:
        folder = stage_output_dir(session.root, previous)
        model, arch = load_stage_model(folder), read_architecture(folder)
    return StageInput(model=model, arch=arch, eval_loss=eval_loss)


def run_stage(
    session: TrainerSession, index: int, stage: Stage, given: StageInput
) -> StageMeasurements | None:
    """One stage from its input to its report; None when a signal interrupted it."""
    started = time.perf_counter()
    device = session.device
    input_linear_bytes = linear_weight_bytes(given.model)
    if given.eval_loss is None:
        given.eval_loss = session.evaluate(given.model.to(device))
        given.model.cpu()
    transforms: dict[type, Callable[..., StageOutput]] = {
        PruneStage: _prune,
        LowRankStage: _lowrank,
        QuantizeStage: _quantize,
        DistillStage: _distill,
    }
    out = transforms[type(stage)](session, index, stage, given)
    if out.interrupted:
        return None
    model = out.model.to(device).eval()
    eval_loss = out.eval_loss if out.eval_loss is not None else session.evaluate(model)
    folder = stage_output_dir(session.root, stage.name)
    report: StageMeasurements | None = None
    if session.env.is_main:
        write_output(
            folder,
            model.state_dict(),
            out.arch,
            sparse=out.sparse,
            extra={"stage": stage.name, "type": stage.type},
        )
        spec = ModelSpec.model_validate(out.arch.model)
        report = StageMeasurements(
            stage=stage.name,
            type=stage.type,
            params=count_params(model),
            bytes=folder_bytes(folder),
            eval_loss=eval_loss,
            latency_ms=measure_latency(model, spec.seq_len, out.arch.vocab_size, device),
            wall_seconds=time.perf_counter() - started,
            device=str(device),
            checkpoint=str(folder),
            input_eval_loss=given.eval_loss,
            eval_loss_before_finetune=out.eval_loss_before_finetune,
            sparsity=out.sparsity,
            weight_sparsity=out.weight_sparsity,
            linear_bytes=linear_weight_bytes(model),
            input_linear_bytes=input_linear_bytes,
            finetune_steps=out.finetune_steps,
            details=out.details,
        )
        write_report(report, storage.stage_dir(session.root, stage.name))
        log.info("stage finished", extra={"stage": stage.name, **report.metrics()})
    # Others wait for rank 0's files, then take its report (the metrics come from rank 0).
    return choose_on_rank0(session.env, lambda: report)


# --- the transforms ---


def _prune(
    session: TrainerSession, index: int, stage: PruneStage, given: StageInput
) -> StageOutput:
    model = given.model
    # Channels or heads there were, for the structured `sparsity` (removed / before).
    units_before = sum(
        b.mlp.fc.out_features if stage.structure == "channel" else b.attn.n_heads
        for b in model.blocks
    )
    result = apply_pruning(model, stage)
    arch = replace(given.arch)
    if stage.structure != "unstructured":
        arch.structure = structure_of(model)
    keeper = MaskKeeper(result.masks)
    with keeper:
        out = _finetune(session, index, stage, model, arch, loss_fn=keeper.loss_fn)
    if out.interrupted:
        return out
    out.sparse = stage.structure == "unstructured"
    out.weight_sparsity = pruned_fraction(out.model, result.weights_before)
    if stage.structure == "unstructured":
        out.sparsity = out.weight_sparsity
    else:
        out.sparsity = sum(result.removed.values()) / units_before
    out.details.update(
        structure=stage.structure,
        scope=stage.scope,
        targetSparsity=stage.sparsity,
        removed=result.removed,
    )
    return out


def _lowrank(
    session: TrainerSession, index: int, stage: LowRankStage, given: StageInput
) -> StageOutput:
    model = given.model
    grams = None
    if stage.method == "activation-aware":
        model.to(session.device)
        grams = collect_input_gram(model, _calibration_batches(session, stage.calibration_batches))
    ranks = apply_lowrank(model, stage, grams)
    model.cpu()
    # SVD results can differ in the last bits between machines: take rank 0's factors.
    _broadcast_weights(model)
    arch = replace(given.arch, ranks=ranks_of(model))
    out = _finetune(session, index, stage, model, arch)
    out.details.update(method=stage.method, layersFactorized=len(ranks), ranks=ranks)
    return out


def _quantize(
    session: TrainerSession, index: int, stage: QuantizeStage, given: StageInput
) -> StageOutput:
    model = given.model.to(session.device)
    names = apply_quantization(model, stage.method)
    arch = replace(given.arch, quantization=stage.method)
    return StageOutput(model=model, arch=arch, details={"method": stage.method, "layers": names})


def _distill(
    session: TrainerSession, index: int, stage: DistillStage, given: StageInput
) -> StageOutput:
    teacher = given.model.to(session.device)
    student_spec = build_student_spec(
        ModelSpec.model_validate(given.arch.model),
        stage,
        tensor_parallel=session.training.tensor_parallel,
    )
    student = session.build_model(student_spec)
    from_teacher = apply_teacher_init(student, teacher)
    training = _stage_training(session.training, stage.steps, index).model_copy(
        update={"model": student_spec}
    )
    result = run_steps(
        session,
        student,
        stage=stage.name,
        steps=stage.steps,
        training=training,
        loss_fn=DistillLoss(teacher, stage.temperature, stage.alpha),
    )
    arch = Architecture(model=student_spec.to_wire(), vocab_size=given.arch.vocab_size)
    if result.interrupted:
        return StageOutput(model=student, arch=arch, interrupted=True)
    final = _final_weights(session, stage.name, arch)
    return StageOutput(
        model=final,
        arch=arch,
        eval_loss=result.eval_loss,
        finetune_steps=stage.steps,
        details={
            "student": student_spec.to_wire(),
            "studentInit": "teacher-layers" if from_teacher else "random",
            "temperature": stage.temperature,
            "alpha": stage.alpha,
        },
    )


# --- shared pieces ---


def _stage_training(t: TrainingSpec, steps: int, index: int) -> TrainingSpec:
    """The training settings for a stage's `steps`: warmup capped at a tenth of them, and a
    seed of its own so the stage does not replay the training run's first batches."""
    schedule = t.schedule.model_copy(
        update={"warmup_steps": min(t.schedule.warmup_steps, steps // 10)}
    )
    return t.model_copy(update={"steps": steps, "schedule": schedule, "seed": t.seed + 1 + index})


def _finetune_training(t: TrainingSpec, steps: int, index: int) -> TrainingSpec:
    """A recovery fine-tune continues training where it ended: from the learning rate the
    schedule had reached (e.g. lr·minLrRatio after a cosine decay), decayed to zero over the
    fine-tune so that it ends annealed, as training did.

    Jumping back to the peak lr undoes more than it recovers in a short fine-tune: on the
    Shakespeare example, 30 steps at the peak took even the uncompressed model's eval loss
    from 1.93 to 2.22, and a pruned model recovered to 1.94 at the final lr but only to 2.07
    at the peak. Decaying to zero beat holding the final lr (dense 1.7828 vs 1.7868,
    low-rank 1.7854 vs 1.7884 after 100 steps).
    """
    end_lr = t.optimizer.lr * lr_factor(t.schedule, t.steps)(t.steps - 1)
    stage = _stage_training(t, steps, index)
    return stage.model_copy(
        update={
            "optimizer": t.optimizer.model_copy(update={"lr": end_lr}),
            "schedule": stage.schedule.model_copy(update={"decay": "cosine", "min_lr_ratio": 0.0}),
        }
    )


def _finetune_strategy(t: TrainingSpec) -> Strategy:
    """Compressed layers (pruned heads, low-rank factors) do not fit the GPT tensor-parallel
    plan, so an fsdp+tp job fine-tunes them with FSDP alone."""
    return "fsdp" if t.parallelism.strategy == "fsdp+tp" else t.parallelism.strategy


def _finetune(
    session: TrainerSession,
    index: int,
    stage: PruneStage | LowRankStage,
    model: nn.Module,
    arch: Architecture,
    loss_fn: LossFn | None = None,
) -> StageOutput:
    """Recovery fine-tune of a transformed model (if the stage asks for one)."""
    if stage.finetune_steps == 0:
        return StageOutput(model=model, arch=arch)
    before = session.evaluate(model.to(session.device))
    model.cpu()
    strategy = _finetune_strategy(session.training)
    training = _finetune_training(session.training, stage.finetune_steps, index)
    result = run_steps(
        session,
        model,
        stage=stage.name,
        steps=stage.finetune_steps,
        training=training,
        loss_fn=loss_fn,
        strategy=strategy,
    )
    if result.interrupted:
        return StageOutput(model=model, arch=arch, interrupted=True)
    final = _final_weights(session, stage.name, arch)
    return StageOutput(
        model=final,
        arch=arch,
        eval_loss=result.eval_loss,
        eval_loss_before_finetune=before,
        finetune_steps=stage.finetune_steps,
        details={"finetuneStrategy": strategy, "finetuneLr": training.optimizer.lr},
    )


def _final_weights(session: TrainerSession, stage: str, arch: Architecture) -> nn.Module:
    """A plain model holding the stage's trained weights, from its last checkpoint: the loop
    may leave its own model sharded."""
    return session.load_stage_model(stage, model=build_architecture(arch))


def _calibration_batches(session: TrainerSession, count: int) -> Iterator[torch.Tensor]:
    """`count` input batches spread evenly over the training split, dealt out to the ranks."""
    split = session.train_split
    micro = session.training.batch.micro_batch_size
    total = count * micro
    for batch in range(session.env.rank, count, session.env.world_size):
        windows = [
            split.window((batch * micro + j) * split.num_windows // total)[:-1]
            for j in range(micro)
        ]
        yield torch.stack(windows).to(session.device)


def _broadcast_weights(model: nn.Module) -> None:
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
