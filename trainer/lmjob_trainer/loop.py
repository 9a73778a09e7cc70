"""The optimisation loop of one stage, reusable: training, and compression fine-tunes/distillation.

`run_steps` parallelises a model, restores the stage's latest complete checkpoint if there
is one, and runs optimiser steps with gradient accumulation, clipping, mixed precision,
periodic evaluation, early stopping, checkpoints under `<root>/<stage>/` and metrics
labelled with the stage. A SIGTERM/SIGINT makes it save and return at the next step.
As in torchtitan, setup (`build_stage_loop`), one step (`train_step`) and recording
(`_record_step`) are separate; `run_steps` is the loop around them.
"""

from __future__ import annotations

import logging
import math
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

from lmjob_api.training import Precision, Strategy, TrainingSpec
from lmjob_trainer import storage
from lmjob_trainer.checkpoint import CheckpointManager, ModelState, OptimizerState
from lmjob_trainer.data import BatchPlan, TrainLoader, build_batch_plan
from lmjob_trainer.distributed import all_gather_floats
from lmjob_trainer.evaluate import autocast
from lmjob_trainer.hang import HangWatchdog
from lmjob_trainer.logs import set_log_context
from lmjob_trainer.mfu import flops_per_token, mfu, peak_flops
from lmjob_trainer.optim import build_optimizer, build_scheduler
from lmjob_trainer.parallelize import gradient_sync, parallelize, unwrap
from lmjob_trainer.session import TrainerSession
from lmjob_trainer.stragglers import RankWindow, placements, slow_rank_delay
from lmjob_trainer.tensorboard import EventLog

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""loss_fn(model, inputs, targets) -> scalar loss, the mean over the micro-batch's tokens (the
loop weights it by the micro-batch's share of the global batch); the default is the model's CE."""

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
    skipped_steps: int = 0
    """Steps whose update was skipped for a non-finite loss or gradient norm."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_eval": self.best_eval,
            "evals_without_improvement": self.evals_without_improvement,
            "last_eval": -1.0 if self.last_eval is None else self.last_eval,
            "stopped_early": self.stopped_early,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.best_eval = float(state["best_eval"])
        self.evals_without_improvement = int(state["evals_without_improvement"])
        last = float(state["last_eval"])
        self.last_eval = None if last < 0 else last
        self.stopped_early = bool(state["stopped_early"])
        self.skipped_steps = int(state.get("skipped_steps", 0))  # absent before nonFinite


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm of a step became NaN or infinite and the stage cannot go on
    (`training.nonFinite`); the weights were not updated with it. Carries the user's message."""


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


@dataclass
class StageLoop:
    """The pieces one stage's loop is built from (`build_stage_loop`) and steps with."""

    stage: str
    steps: int
    training: TrainingSpec
    strategy: Strategy
    loss_fn: LossFn
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: BatchPlan
    loader: TrainLoader
    state: TrainState
    checkpoints: CheckpointManager
    scaler: torch.amp.GradScaler
    history: storage.HistoryWriter | None
    events: EventLog | None
    """TensorBoard scalars (rank 0)."""
    flops_per_token: float
    peak_flops: float | None
    ranks: RankWindow | None = None
    """Every rank's recent own step times (global rank 0): the straggler verdict."""
    placements: list[tuple[str, str]] = field(default_factory=list)
    """(pod, node) of each global rank."""
    slow_seconds: float = 0.0
    """Test hook (stragglers.TEST_SLOW_RANK_ENV): sleep this long in every step."""
    named_stragglers: tuple[int, ...] = ()
    """The ranks the last verdict named: a log line when that changes, not every time."""


def build_stage_loop(
    session: TrainerSession,
    model: nn.Module,
    *,
    stage: str,
    steps: int,
    training: TrainingSpec,
    loss_fn: LossFn,
    strategy: Strategy,
    init_state: dict[str, torch.Tensor] | None,
) -> StageLoop:
    """Parallelise `model` and build its optimiser, schedule, loader and checkpoints."""
    t, env = training, session.env
    mesh = session.mesh(strategy)
    dp = mesh["dp"]
    plan = build_batch_plan(t.batch, dp.size())
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
    loader = TrainLoader(session.train_split, plan=plan, dp_rank=dp.get_local_rank(), seed=t.seed)
    state = TrainState()
    scaler = _build_scaler(t.precision, strategy, env.device)
    stateful: dict[str, Stateful] = {
        "model": ModelState(model),
        "optim": OptimizerState(model, optimizer),
        "scheduler": scheduler,
        "loader": loader,
        "train": state,
    }
    if scaler.is_enabled():
        # fp16's loss scale is learnt over thousands of steps (it halves on overflow and
        # grows every 2000 clean steps): a resume at the initial 65536 would overflow again.
        stateful["scaler"] = scaler
    checkpoints = CheckpointManager(
        session.root,
        stage,
        stateful,
        env=env,
        metrics=session.metrics,
        keep=t.checkpoint.keep,
        async_save=t.checkpoint.async_,
        meta={"config": session.config.to_wire(), "strategy": strategy},
    )
    return StageLoop(
        stage=stage,
        steps=steps,
        training=t,
        strategy=strategy,
        loss_fn=loss_fn,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        loader=loader,
        state=state,
        checkpoints=checkpoints,
        scaler=scaler,
        history=storage.HistoryWriter(session.root, stage) if env.is_main else None,
        events=EventLog(session.root, stage) if env.is_main else None,
        flops_per_token=flops_token,
        peak_flops=peak_flops(env.device, t.precision),
        ranks=(
            RankWindow(
                env.world_size,
                t.stragglers.window_steps,
                t.stragglers.threshold,
                t.stragglers.min_excess_seconds,
            )
            if env.is_main
            else None
        ),
        placements=placements(),
        slow_seconds=slow_rank_delay(env.rank),
    )


def _build_scaler(
    precision: Precision, strategy: Strategy, device: torch.device
) -> torch.amp.GradScaler:
    """fp16's loss scaler (a no-op otherwise); FSDP's sharded gradients need the sharded one."""
    enabled = precision == "fp16"
    if strategy != "ddp":
        return ShardedGradScaler(device.type, enabled=enabled)
    return torch.amp.GradScaler(device.type, enabled=enabled)


@dataclass(frozen=True)
class StepResult:
    """What one optimiser step reports (the same on every rank)."""

    loss: float
    """The global mean loss of the step's batch."""
    grad_norm: float
    lr: float
    stop: bool = False
    """Some rank was asked to stop (SIGTERM/SIGINT): every rank saves this step and returns."""
    skipped: bool = False
    """The loss or gradient norm was not finite: the weights were left as they were."""
    rank_step_seconds: tuple[float, ...] = ()
    """Each global rank's own time in this step, waits for other ranks left out."""
    rank_data_wait_seconds: tuple[float, ...] = ()
    """Of which fetching its batch."""


def train_step(
    loop: StageLoop, device: torch.device, world_size: int, *, stop_requested: bool = False
) -> StepResult:
    """One optimiser step: every micro-batch of this rank, then clip, step and schedule.

    A step whose global loss (or, without fp16's loss scaler, gradient norm) is NaN or
    infinite updates nothing: the gradient norm is global after clipping's reduction and
    the loss after the step's one collective, so every rank decides alike."""
    t, model, plan = loop.training, loop.model, loop.plan
    started = time.perf_counter()
    _seed_step(t.seed, loop.state.step, loop.loader.dp_rank)
    micro_batches = loop.loader.next_step()
    data_wait = time.perf_counter() - started
    if loop.slow_seconds:
        time.sleep(loop.slow_seconds)  # test hook: a straggler on purpose
    own = 0.0
    loss_share = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        inputs = batch.inputs.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
        last = i == len(micro_batches) - 1  # every rank runs as many (see BatchPlan)
        with gradient_sync(model, last), autocast(device, t.precision):
            # Weighted so that the summed, dp-averaged gradient is that of the mean loss
            # over the global batch's tokens (BatchPlan.loss_weight); a padding batch
            # weighs 0 but still runs forward and backward, whose collectives must match.
            loss = loop.loss_fn(model, inputs, targets) * plan.loss_weight(batch.samples)
        if last:
            # This rank's own time ends here: under DDP the last backward all-reduces the
            # gradients, where a fast rank waits for the slowest (stragglers.py). On GPU the
            # clock reads when kernels were queued, not run; the synchronize is the price.
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            own = time.perf_counter() - started
        loop.scaler.scale(loss).backward()
        loss_share += loss.detach()
    loop.scaler.unscale_(loop.optimizer)
    grad_norm = float(_grad_norm(model, t.optimizer.grad_clip))
    # One small collective per step: every rank's loss share, stop request and times, so
    # that every rank computes the global mean loss, all agree on stopping (save the same
    # step, none left waiting) and rank 0 sees who is slow (an all-gather of 4 floats per
    # rank costs about what the all-reduce of 2 did).
    # loss_share = Σ b·D/G·L over this rank's micro-batches. Summed over the D dp ranks that
    # is D × the global mean Σ b·L / G; tensor-parallel peers (world = D·tp) hold the same
    # value, so the sum over all ranks divided by the world size is the global mean.
    gathered = all_gather_floats([float(loss_share), float(stop_requested), own, data_wait], device)
    loss_total, stops = gathered[:, :2].sum(dim=0).tolist()
    loss = loss_total / world_size
    # fp16's scaler skips overflowing gradients itself (and lowers its scale): routine.
    skipped = not math.isfinite(loss) or (
        not loop.scaler.is_enabled() and not math.isfinite(grad_norm)
    )
    loop.checkpoints.wait_staged()  # an async save must have copied the weights first
    if skipped:
        loop.state.skipped_steps += 1
    else:
        loop.scaler.step(loop.optimizer)
    loop.scaler.update()  # after unscale_, with or without a step: the scale follows the grads
    loop.optimizer.zero_grad(set_to_none=True)
    lr = loop.scheduler.get_last_lr()[0]
    loop.scheduler.step()
    loop.state.step += 1
    return StepResult(
        loss,
        grad_norm,
        lr,
        stop=bool(stops),
        skipped=skipped,
        rank_step_seconds=tuple(gathered[:, 2].tolist()),
        rank_data_wait_seconds=tuple(gathered[:, 3].tolist()),
    )


def _non_finite(session: TrainerSession, loop: StageLoop, result: StepResult) -> None:
    """A skipped step under `training.nonFinite`: count it, or stop the stage (raises
    NonFiniteLoss) before anything is saved after it. Every rank decides alike."""
    policy, state = loop.training.non_finite, loop.state
    session.metrics.record_skipped_steps(loop.stage, state.skipped_steps)
    what = f"loss {result.loss:g}, gradient norm {result.grad_norm:g}"
    saved = loop.checkpoints.last_saved_step
    kept = f"checkpoint at step {saved} kept" if saved is not None else "no checkpoint yet"
    if policy.action == "skip" and state.skipped_steps <= policy.max_skipped_steps:
        log.warning(
            "non-finite step skipped",
            extra={
                "skipped": state.skipped_steps,
                "loss": result.loss,
                "grad_norm": result.grad_norm,
            },
        )
        return
    if policy.action == "skip":
        reason = (
            f"{state.skipped_steps} steps skipped (training.nonFinite.maxSkippedSteps is "
            f"{policy.max_skipped_steps}), the last at step {state.step} ({what})"
        )
    else:
        reason = f"the loss became non-finite at step {state.step} ({what})"
    raise NonFiniteLoss(
        f"stage {loop.stage}: {reason}; weights not updated with it, {kept}. Lower "
        "training.optimizer.lr or set training.optimizer.gradClip, or skip such steps with "
        "training.nonFinite.action: skip"
    )


def _record_step(
    session: TrainerSession, loop: StageLoop, result: StepResult, seconds: float
) -> None:
    """Metrics, a history line (rank 0) and, every LOG_EVERY steps, a log line."""
    env, step, loss = session.env, loop.state.step, result.loss
    tps = loop.plan.global_batch * loop.training.model.seq_len / seconds
    utilisation = mfu(tps / env.world_size, loop.flops_per_token, loop.peak_flops)
    session.record_time("step", stage=loop.stage, step=step, seconds=seconds)
    session.metrics.record_step(
        loop.stage,
        step=step,
        loss=loss,
        lr=result.lr,
        grad_norm=result.grad_norm,
        tokens_per_second=tps,
        step_seconds=seconds,
        mfu=utilisation,
    )
    if loop.history is not None:
        loop.history.write(
            {
                "step": step,
                "loss": loss,
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "tokens_per_second": tps,
                "seconds": seconds,
                "world_size": env.world_size,
                "mfu": utilisation,
                "time": time.time(),
                **({"skipped": True} if result.skipped else {}),
            }
        )
    if loop.events is not None:
        loop.events.scalars(
            step,
            {
                "loss": loss,
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "tokens_per_second": tps,
                "mfu": utilisation,
                "skipped_steps": float(loop.state.skipped_steps) if result.skipped else None,
            },
        )
    if loop.ranks is not None and result.rank_step_seconds:
        loop.ranks.observe(result.rank_step_seconds, result.rank_data_wait_seconds)
    if step == 1 or step % LOG_EVERY == 0 or step == loop.steps:
        verdict = loop.ranks.verdict() if loop.ranks is not None else None
        if verdict is not None:
            # Every LOG_EVERY steps: thousands of ranks' series are too many to set per step.
            session.metrics.record_ranks(loop.stage, verdict, loop.placements)
            if verdict.stragglers != loop.named_stragglers:
                loop.named_stragglers = verdict.stragglers
                (log.warning if verdict.stragglers else log.info)(
                    "stragglers",
                    extra={
                        "ranks": list(verdict.stragglers),
                        "median_step_s": round(verdict.median_seconds, 4),
                        "step_s": [round(verdict.step_seconds[r], 4) for r in verdict.stragglers],
                    },
                )
        session.metrics.record_memory(loop.stage, env.device)
        log.info(
            "step",
            extra={
                "loss": round(loss, 4),
                "lr": result.lr,
                "grad_norm": round(result.grad_norm, 4),
                "tokens_per_s": round(tps),
                "step_s": round(seconds, 4),
            },
        )


def _after_step(session: TrainerSession, loop: StageLoop, stop: bool) -> bool:
    """Evaluate and checkpoint as scheduled; True when a stop request ends the stage here."""
    t, state = loop.training, loop.state
    if state.step % t.evaluation.every_steps == 0 or state.step == loop.steps:
        started = time.perf_counter()
        _evaluate(session, loop.model, t, loop.stage, state, loop.strategy)
        _timed(session, "evaluation", loop, started)
        if loop.history is not None:
            loop.history.write({"step": state.step, "eval_loss": state.last_eval})
        if loop.events is not None:
            loop.events.scalars(state.step, {"eval_loss": state.last_eval})
    if stop:
        started = time.perf_counter()
        loop.checkpoints.save(state.step, blocking=True)
        _timed(session, "checkpoint", loop, started)
        log.warning("stopped by a signal; checkpoint saved", extra={"step": state.step})
        return True
    if state.step % t.checkpoint.every_steps == 0 and state.step < loop.steps:
        started = time.perf_counter()
        loop.checkpoints.save(state.step)
        _timed(session, "checkpoint", loop, started)
    return False


def _timed(session: TrainerSession, event: str, loop: StageLoop, started: float) -> None:
    """A goodput record of the time training waited for an evaluation or a save's
    blocking part (an async save's writing overlaps the next steps and is not counted)."""
    seconds = time.perf_counter() - started
    session.record_time(event, stage=loop.stage, step=loop.state.step, seconds=seconds)


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
    started = time.perf_counter()
    set_log_context(stage=stage)
    loop = build_stage_loop(
        session,
        model,
        stage=stage,
        steps=steps,
        training=t,
        loss_fn=loss_fn or default_loss,
        strategy=strategy or t.parallelism.strategy,
        init_state=init_state,
    )
    state, checkpoints = loop.state, loop.checkpoints
    interrupted = False
    watchdog: HangWatchdog | None = None
    try:
        _start_stage(session, loop)
        watchdog = HangWatchdog(
            session.root,
            stage,
            env.rank,
            t.hang.timeout_seconds,
            report=metrics.record_stalled,
        ).start(state.step)
        while state.step < steps and not state.stopped_early and not interrupted:
            step_started = time.perf_counter()
            set_log_context(step=state.step + 1)
            result = train_step(
                loop, env.device, env.world_size, stop_requested=session.stop_requested.is_set()
            )
            _record_step(session, loop, result, time.perf_counter() - step_started)
            if result.skipped:
                _non_finite(session, loop, result)
            interrupted = _after_step(session, loop, result.stop)
            watchdog.beat(state.step)
        if not interrupted:
            saving = time.perf_counter()
            checkpoints.save(state.step, blocking=True)
            checkpoints.wait()
            _timed(session, "checkpoint", loop, saving)
        checkpoints.wait()
    except BaseException:
        metrics.set_stage_phase(stage, "Failed")
        raise
    finally:
        if watchdog is not None:
            watchdog.close()
        checkpoints.close()
        if loop.history is not None:
            loop.history.close()
        if loop.events is not None:
            loop.events.close()
        set_log_context(step=None)
    saved = checkpoints.last_saved_step
    return StageResult(
        model=unwrap(loop.model),
        steps=state.step,
        eval_loss=state.last_eval,
        checkpoint=None if saved is None else storage.step_dir(session.root, stage, saved),
        stopped_early=state.stopped_early,
        interrupted=interrupted,
        wall_seconds=time.perf_counter() - started,
    )


def _start_stage(session: TrainerSession, loop: StageLoop) -> None:
    """Resume from the stage's newest checkpoint, if any, and announce the stage."""
    if loop.checkpoints.load_latest() is not None:
        log.info("continuing", extra={"from_step": loop.state.step, "of": loop.steps})
    session.record_time("start", stage=loop.stage, step=loop.state.step)
    session.metrics.record_total_steps(loop.stage, loop.steps)
    session.metrics.set_stage_phase(loop.stage, "Running")
    log.info(
        "stage starts",
        extra={
            "strategy": loop.strategy,
            "world_size": session.env.world_size,
            "global_batch": loop.plan.global_batch,
            "micro_batches": loop.plan.num_micro_batches,
            "steps": loop.steps,
        },
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
    session.metrics.record_eval(stage, state.step, loss)
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
