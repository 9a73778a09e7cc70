"""The trainer's main: set up, train (or resume), report, then hand over to compression.

Thin on purpose; the loop lives in loop.py. Whatever happens, metrics and the process
group are closed on the way out.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType

import torch

from lmjob_api import termination
from lmjob_api.exit_codes import CONFIG_ERROR, NON_FINITE
from lmjob_api.stage_report import TRAIN_TYPE, StageReport
from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.validation import ManifestError
from lmjob_trainer import storage
from lmjob_trainer.causal_lm import NonFiniteLogits
from lmjob_trainer.checkpoint import choose_on_rank0
from lmjob_trainer.distributed import DistEnv, close_distributed, init_distributed
from lmjob_trainer.evaluate import autocast
from lmjob_trainer.export.run import export_names, run_exports
from lmjob_trainer.goodput import GoodputLedger
from lmjob_trainer.launch import mark_config_error
from lmjob_trainer.logs import configure_logging, set_log_context
from lmjob_trainer.loop import NonFiniteLoss, StageResult, run_steps
from lmjob_trainer.metrics import TrainerMetrics
from lmjob_trainer.model import count_params
from lmjob_trainer.preflight import check_runnable
from lmjob_trainer.session import TrainerSession, build_session

log = logging.getLogger(__name__)

COMPRESSION_MODULE = "lmjob_trainer.compression"
SAMPLE_TOKENS = 300


def _install_stop_handlers(session: TrainerSession) -> None:
    """SIGTERM (pod deletion, torchrun shutdown) and SIGINT (Ctrl-C) ask the loop to save
    and stop at the next step instead of dying mid-step."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        session.stop_signal = signum
        session.stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def generate_sample(
    session: TrainerSession, model: torch.nn.Module, tokens: int = SAMPLE_TOKENS
) -> str:
    """A short text sampled from a plain model, for the report and the terminal; empty (with
    a warning) when the model's outputs are not finite: a run whose steps were skipped on a
    diverged loss (training.nonFinite.action skip) still finishes and reports."""
    prompt = session.tokenizer.encode(b"\n")[-1:].view(1, -1).to(session.device)
    torch.manual_seed(session.training.seed)  # the same sample for the same weights
    try:
        with autocast(session.device, session.training.precision):
            out = model.generate(prompt, tokens, temperature=0.8, top_k=50)
    except NonFiniteLogits as err:
        log.warning("no sample: %s (the weights diverged)", err)
        return ""
    return session.tokenizer.decode(out[0, prompt.shape[1] :].tolist())


def train_stage(session: TrainerSession) -> StageResult | None:
    """Train (or resume training) unless the train stage already finished; None if it had."""
    report = choose_on_rank0(
        session.env, lambda: storage.finished_training(session.root, session.training.steps)
    )
    if report:
        log.info("training already finished", extra={"checkpoint": report.checkpoint})
        # Exported again, so a restarted pod's endpoint still carries the stage's numbers.
        session.metrics.set_stage_result(storage.TRAIN_STAGE, report.metrics)
        session.metrics.set_stage_phase(storage.TRAIN_STAGE, "Succeeded")
        return None
    init_state = None
    if (
        session.training.parallelism.strategy != "ddp"
        and session.training.model.architecture == "gpt"
    ):
        # Sharded from the meta device: only rank 0 ever holds the whole model.
        with torch.device("meta"):
            model = session.build_model()
        init_state = session.build_model().state_dict() if session.env.is_main else None
    else:
        model = session.build_model()
    params = count_params(model)
    result = run_steps(
        session,
        model,
        stage=storage.TRAIN_STAGE,
        steps=session.training.steps,
        init_state=init_state,
    )
    result.extra["params"] = params
    return result


def finish_train_stage(session: TrainerSession, result: StageResult) -> StageReport:
    """Write the train stage's report (rank 0), with a generated sample from the final weights."""
    numbers = {
        "evalLoss": result.eval_loss,
        "params": result.extra.get("params"),
        "wallSeconds": round(result.wall_seconds, 3),
    }
    report = StageReport(
        stage=storage.TRAIN_STAGE,
        type=TRAIN_TYPE,
        steps=result.steps,
        total_steps=session.training.steps,
        checkpoint=str(result.checkpoint) if result.checkpoint else None,
        stopped_early=result.stopped_early,
        world_size=session.env.world_size,
        device=str(session.device),
        metrics={k: float(v) for k, v in numbers.items() if v is not None},
    )
    # Rank 0 alone loads the final weights (on its device: a big model samples slowly on
    # a CPU), samples and writes.
    if session.env.is_main:
        plain = session.load_stage_model(storage.TRAIN_STAGE, collective=False)
        report.sample = generate_sample(session, plain.to(session.device))
        storage.write_report(session.root, report)
        log.info("sample", extra={"text": report.sample[:200]})
    session.metrics.set_stage_result(storage.TRAIN_STAGE, report.metrics)
    session.metrics.set_stage_phase(storage.TRAIN_STAGE, "Succeeded")
    return report


def run_compression(session: TrainerSession) -> None:
    """The compression hook: hand the session to `lmjob_trainer.compression.run_stages`.

    The stage runner is its own package; a trainer build without it logs and marks the
    stages Skipped rather than failing a job whose training succeeded. The check looks
    for the module without importing it, so a broken stage runner still fails loudly.
    """
    stages = session.config.compression.stages
    if not stages:
        return
    if importlib.util.find_spec(COMPRESSION_MODULE) is None:
        log.warning(
            "compression stages are not available in this trainer build; skipped",
            extra={"stages": ",".join(s.name for s in stages)},
        )
        for stage in stages:
            session.metrics.set_stage_phase(stage.name, "Skipped")
        return
    from lmjob_trainer.compression import run_stages  # type: ignore[import-not-found]

    run_stages(session)


def run(config: TrainerConfig, env: DistEnv, root: Path, metrics: TrainerMetrics) -> int:
    """Train and compress; returns the process exit code."""
    problems = check_runnable(
        config, world_size=env.world_size, cuda_devices=torch.cuda.device_count()
    )
    if problems:
        raise ManifestError("trainer config", problems)
    if env.device.type == "cuda":
        # TF32 matmuls for fp32 work: the precision loss is negligible for training.
        torch.set_float32_matmul_precision("high")
    session = build_session(config, env, root, metrics)
    session.goodput = GoodputLedger(root, metrics, enabled=env.is_main)
    session.goodput.launched()
    try:
        return _run_stages(session)
    finally:
        session.goodput.close()


def _run_stages(session: TrainerSession) -> int:
    """Training, then compression and exports, unless a stop signal came first."""
    config, metrics = session.config, session.metrics
    _install_stop_handlers(session)
    for stage in config.compression.stages:
        metrics.set_stage_phase(stage.name, "Pending")
    for name in export_names(session):
        metrics.set_stage_phase(name, "Pending")
    result = train_stage(session)
    if result is not None:
        if result.interrupted:
            return 128 + session.stop_signal
        finish_train_stage(session, result)
    set_log_context(stage=None)
    run_compression(session)
    if not session.stop_requested.is_set():
        run_exports(session)
    if session.stop_requested.is_set():
        return 128 + session.stop_signal
    return 0


def main(config: TrainerConfig, *, checkpoint_dir: Path, metrics_port: int | None) -> int:
    """Entry point of a worker process (under torchrun or alone)."""
    env = init_distributed()
    configure_logging(job=config.job_name, rank=env.rank)
    metrics = TrainerMetrics(config.job_name, env, metrics_port)
    started = time.perf_counter()
    error = None
    permanent: int | None = None
    try:
        code = run(config, env, checkpoint_dir, metrics)
        log.info(
            "trainer done",
            extra={"exit_code": code, "seconds": round(time.perf_counter() - started, 1)},
        )
        return code
    except NonFiniteLoss as err:
        # Every rank sees it at the same step; restarting replays the same batches from the
        # same checkpoint, so neither torchrun nor the operator may retry it.
        error, permanent = str(err), NON_FINITE
        log.error(error)
        return NON_FINITE
    except ValueError as err:
        # Bad user input (ManifestError is a ValueError, and so is every check the trainer
        # makes of its config and data): one clear line, no traceback, and an exit code
        # neither torchrun (through the launcher) nor the operator retries.
        error, permanent = f"cannot run this config: {err}", CONFIG_ERROR
        log.error(error)
        return CONFIG_ERROR
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        write_termination_message(metrics, error)
        if permanent is not None:
            # After the termination message: the launcher may stop torchrun once it sees this.
            mark_config_error(error or "", permanent)
        metrics.close()
        close_distributed()


def write_termination_message(metrics: TrainerMetrics, error: str | None = None) -> None:
    """Leave, where Kubernetes makes it the pod's termination message (the operator sets
    the path; local runs have none), rank 0's stage results and any process's error.

    The processes of a pod share the file: a run that ends without an error keeps an
    error another process of the pod wrote first."""
    path = os.environ.get(termination.PATH_ENV)
    summary = metrics.stage_summary()
    if not path or not (summary or error):
        return
    target = Path(path)
    try:
        if error is None and target.exists():
            error = termination.decode_error(target.read_text(errors="replace"))
        target.write_text(termination.encode_stages(summary, error))
    except (OSError, ValueError) as err:
        log.warning("no termination message: %s", err)
