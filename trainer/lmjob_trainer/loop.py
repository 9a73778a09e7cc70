"""The optimisation loop of one stage, reusable: training, and compression fine-tunes/distillation.

`run_steps` parallelises a model, restores the stage's latest complete checkpoint if there
is one, and runs optimiser steps with gradient accumulation, clipping, mixed precision,
periodic evaluation, early stopping, checkpoints under `<root>/<stage>/` and metrics
labelled with the stage. A SIGTERM/SIGINT makes it save and return at the next step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.distributed.tensor import DTensor

from lmjob_api.training import Strategy, TrainingSpec
from lmjob_trainer import storage
from lmjob_trainer.checkpoint import CheckpointManager, ModelState, OptimizerState
from lmjob_trainer.data import TrainLoader
from lmjob_trainer.distributed import all_reduce_sum
from lmjob_trainer.evaluate import autocast
from lmjob_trainer.logs import set_log_context
from lmjob_trainer.mfu import flops_per_token, mfu, peak_flops
from lmjob_trainer.optim import build_optimizer, build_scheduler
from lmjob_trainer.parallelize import gradient_sync, parallelize, unwrap
from lmjob_trainer.preflight import batch_plan
from lmjob_trainer.session import TrainerSession

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""loss_fn(model, inputs, targets) -> scalar loss; the default is the model's own CE."""

LOG_EVERY = 10


def default_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    _, loss = model(inputs, targets)
    return loss


@dataclass
class TrainState(Stateful):
    """Loop counters that a checkpoint carries besides model, optimiser, scheduler and data."""

    step: int = 0
    best_eval: float = float("inf")
    evals_without_improvement: int = 0
    last_eval: float | None = None
    stopped_early: bool = False

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_eval": self.best_eval,
            "evals_without_improvement": self.evals_without_improvement,
            "last_eval": -1.0 if self.last_eval is None else self.last_eval,
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.best_eval = float(state["best_eval"])
        self.evals_without_improvement = int(state["evals_without_improvement"])
        last = float(state["last_eval"])
        self.last_eval = None if last < 0 else last
        self.stopped_early = bool(state["stopped_early"])


@dataclass
class StageResult:
    """What `run_steps` did."""

    model: nn.Module
    """The trained module, unwrapped from DDP (FSDP/TP models stay sharded in place)."""
    steps: int
    eval_loss: float | None
    checkpoint: Path | None
    """The stage's newest complete checkpoint."""
    stopped_early: bool = False
    interrupted: bool = False
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _seed_step(seed: int, step: int, dp_rank: int) -> None:
    # RNG (dropout) is a pure function of (seed, step, data-parallel rank), reseeded every
    # step: a resume at any world size draws what an uninterrupted run would have drawn,
    # with no generator state to save. Tensor-parallel peers share masks on purpose.
    torch.manual_seed(seed * 1_000_003 + step * 1009 + dp_rank)


def _grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0: don't) and return the total norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def run_steps(
    session: TrainerSession,
    model: nn.Module,
    *,
    stage: str,
    steps: int,
    training: TrainingSpec | None = None,
    loss_fn: LossFn | None = None,
    strategy: Strategy | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> StageResult:
    """Train `model` (a plain CPU module) for `steps` optimiser steps as stage `stage`.

    `model` may instead be on the meta device under an FSDP strategy: then it starts from
    `init_state`, the full state dict held by global rank 0 (see `parallelize`).

    `training` overrides the session's settings (optimizer, schedule, batch, evaluation,
    checkpoint, earlyStopping, precision); `strategy` the parallelism (fsdp+tp needs the
    pristine GPT layout; modified models are safest with "ddp"). Resumes from the stage's
    newest complete checkpoint. A collective: every rank calls it.
    """
    t = training or session.training
    env, metrics = session.env, session.metrics
    strategy = strategy or t.parallelism.strategy
    loss_fn = loss_fn or default_loss
    started = time.perf_counter()
    set_log_context(stage=stage)

    mesh = session.mesh(strategy)
    dp = mesh["dp"]
    dp_rank, dp_size = dp.get_local_rank(), dp.size()
    global_batch, accum = batch_plan(t.batch, dp_size)
    par = t.parallelism.model_copy(update={"strategy": strategy})
    flops_token = flops_per_token(model, t.model)
    model = parallelize(
        model,
        mesh=mesh,
        config=t.model_copy(update={"parallelism": par}),
        device=env.device,
        init_state=init_state,
    )
    optimizer = build_optimizer(model, t.optimizer, env.device)
    scheduler = build_scheduler(optimizer, t.schedule, steps)
    loader = TrainLoader(
        session.train_split,
        global_batch=global_batch,
        micro_batch=t.batch.micro_batch_size,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=t.seed,
    )
    state = TrainState()
    checkpoints = CheckpointManager(
        session.root,
        stage,
        {
            "model": ModelState(model),
            "optim": OptimizerState(model, optimizer),
            "scheduler": scheduler,
            "loader": loader,
            "train": state,
        },
        env=env,
        metrics=metrics,
        keep=t.checkpoint.keep,
        async_save=t.checkpoint.async_,
        meta={"config": session.config.to_wire(), "strategy": strategy},
    )
    fp16 = t.precision == "fp16"
    scaler = (
        ShardedGradScaler(env.device.type, enabled=fp16)
        if strategy != "ddp"
        else torch.amp.GradScaler(env.device.type, enabled=fp16)
    )
    peak = peak_flops(env.device, t.precision)
    tokens_per_step = global_batch * t.model.seq_len
    history = storage.HistoryWriter(session.root, stage) if env.is_main else None
    try:
        if checkpoints.load_latest() is not None:
            log.info("continuing", extra={"from_step": state.step, "of": steps})
        metrics.record_total_steps(stage, steps)
        metrics.set_stage_phase(stage, "Running")
        log.info(
            "stage starts",
            extra={
                "strategy": strategy,
                "world_size": env.world_size,
                "global_batch": global_batch,
                "accumulation": accum,
                "steps": steps,
            },
        )
        interrupted = False
        while state.step < steps and not state.stopped_early:
            step_started = time.perf_counter()
            set_log_context(step=state.step + 1)
            _seed_step(t.seed, state.step, dp_rank)
            micro_batches = loader.next_step()
            loss_sum = torch.zeros((), device=env.device)
            for i, (inputs, targets) in enumerate(micro_batches):
                inputs = inputs.to(env.device, non_blocking=True)
                targets = targets.to(env.device, non_blocking=True)
                with gradient_sync(model, i == accum - 1), autocast(env.device, t.precision):
                    loss = loss_fn(model, inputs, targets) / accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            scaler.unscale_(optimizer)
            grad_norm = _grad_norm(model, t.optimizer.grad_clip)
            checkpoints.wait_staged()  # an async save must have copied the weights first
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            state.step += 1
            # One small collective per step: the mean loss for metrics, and agreement on a
            # stop request so that all ranks save the same step and none is left waiting.
            loss_total, stops = all_reduce_sum(
                [float(loss_sum), float(session.stop_requested.is_set())], env.device
            )
            loss_value = loss_total / env.world_size
            seconds = time.perf_counter() - step_started
            tps = tokens_per_step / seconds
            utilisation = mfu(tps / env.world_size, flops_token, peak)
            metrics.record_step(
                stage,
                step=state.step,
                loss=loss_value,
                lr=lr,
                grad_norm=float(grad_norm),
                tokens_per_second=tps,
                step_seconds=seconds,
                mfu=utilisation,
            )
            if history is not None:
                history.write(
                    {
                        "step": state.step,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "tokens_per_second": tps,
                        "seconds": seconds,
                        "world_size": env.world_size,
                        "mfu": utilisation,
                        "time": time.time(),
                    }
                )
            if state.step == 1 or state.step % LOG_EVERY == 0 or state.step == steps:
                metrics.record_memory(stage, env.device)
                log.info(
                    "step",
                    extra={
                        "loss": round(loss_value, 4),
                        "lr": lr,
                        "grad_norm": round(float(grad_norm), 4),
                        "tokens_per_s": round(tps),
                        "step_s": round(seconds, 4),
                    },
                )
            if state.step % t.evaluation.every_steps == 0 or state.step == steps:
                _evaluate(session, model, t, stage, state, strategy)
                if history is not None:
                    history.write({"step": state.step, "eval_loss": state.last_eval})
            if stops:
                checkpoints.save(state.step, blocking=True)
                interrupted = True
                log.warning("stopped by a signal; checkpoint saved", extra={"step": state.step})
                break
            if state.step % t.checkpoint.every_steps == 0 and state.step < steps:
                checkpoints.save(state.step)
        if not interrupted:
            checkpoints.save(state.step, blocking=True)
        checkpoints.wait()
    except BaseException:
        metrics.set_stage_phase(stage, "Failed")
        raise
    finally:
        checkpoints.close()
        if history is not None:
            history.close()
        set_log_context(step=None)
    saved = checkpoints.last_saved_step
    return StageResult(
        model=unwrap(model),
        steps=state.step,
        eval_loss=state.last_eval,
        checkpoint=None if saved is None else storage.step_dir(session.root, stage, saved),
        stopped_early=state.stopped_early,
        interrupted=interrupted,
        wall_seconds=time.perf_counter() - started,
    )


def _evaluate(
    session: TrainerSession,
    model: nn.Module,
    t: TrainingSpec,
    stage: str,
    state: TrainState,
    strategy: Strategy,
) -> None:
    """Evaluate, export, and update early stopping (same numbers on every rank)."""
    loss = session.evaluate(model, strategy=strategy)
    state.last_eval = loss
    session.metrics.record_eval(stage, loss)
    stopping = t.early_stopping
    if stopping is not None:
        if state.best_eval - loss > stopping.min_delta:
            state.best_eval, state.evals_without_improvement = loss, 0
        else:
            state.evals_without_improvement += 1
            if state.evals_without_improvement >= stopping.patience:
                state.stopped_early = True
    else:
        state.best_eval = min(state.best_eval, loss)
    log.info(
        "evaluation",
        extra={"eval_loss": round(loss, 4), "stopped_early": state.stopped_early},
    )
