"""The engine of `lmjob run`: one manifest, run on this machine through torchrun's launcher.

`plan_local_run` turns a validated job into a plan (or problems, before any process
starts); `launch` runs `workers.replicas × procsPerWorker` local processes under an
in-process elastic agent (c10d rendezvous on localhost, restarts from runPolicy) with
storage under `./runs/<job>/`; `read_progress` scrapes the rank-0 metrics endpoint, the
same one the operator reads.

Relative paths in the manifest (`training.data.source`, a tokenizer or model directory,
`data.cacheDir`) resolve against the manifest's folder, so a job runs from any directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmjob_api.env import CONFIG_ERROR_FILE_ENV
from lmjob_api.export import stage_order
from lmjob_api.job import LargeModelJob
from lmjob_api.trainer_config import (
    CONFIG_FILE_NAME,
    TrainerConfig,
    build_trainer_config,
    dump_trainer_config,
)
from lmjob_api.trainer_metrics import TrainerProgress, parse_scrape
from lmjob_api.validation import Problem
from lmjob_trainer import storage
from lmjob_trainer.preflight import check_data_source, check_runnable

RUNS_DIR = "runs"
LOGS_DIR = "logs"
CONFIG_ERROR_MARKER = "config-error"
"""In the run folder: written by a worker that exits CONFIG_ERROR (its message inside)."""
# Seconds torchrun gives workers between SIGTERM/SIGINT and SIGKILL: enough to finish the
# step in flight and write a checkpoint.
SHUTDOWN_GRACE = 120

# torchrun's c10d rendezvous by default shares one TCPStore, kept across restarts, with the
# workers' process groups, whose keys carry no attempt number: after a restart a worker can
# read a dead peer's address and hang or fail in init_process_group (pytorch#135712, seen
# here with torch 2.15). Opting out gives every attempt a fresh store on a fresh port.
# Worker pods need the same variable (set by the operator).
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass
class LocalRunPlan:
    """Everything `launch` needs, decided before any process starts."""

    job_name: str
    run_dir: Path
    num_procs: int
    max_restarts: int
    entrypoint: str
    args: list[str]
    env: dict[str, str]
    metrics_port: int
    # runPolicy.activeDeadlineSeconds, counted from this invocation's start.
    deadline_seconds: int | None = None
    config: TrainerConfig | None = None
    config_path: Path | None = None
    stages: list[str] = field(default_factory=list)


def _free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on it, else a free ephemeral port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port")


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None or path == "bytes" or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def resolve_paths(config: TrainerConfig, base: Path) -> TrainerConfig:
    """The config with its relative paths made absolute against `base` (the manifest's folder)."""
    t = config.training
    data = t.data.model_copy(
        update={
            "source": _resolve(t.data.source, base),
            "tokenizer": _resolve(t.data.tokenizer, base),
            "cache_dir": _resolve(t.data.cache_dir, base),
        }
    )
    model = t.model.model_copy(update={"path": _resolve(t.model.path, base)})
    training = t.model_copy(update={"data": data, "model": model})
    return config.model_copy(update={"training": training})


def _previous_model_problem(run_dir: Path, config: TrainerConfig) -> Problem | None:
    """Checkpoints of another model shape in the run folder would fail to load: say so now."""
    previous = run_dir / CONFIG_FILE_NAME
    if storage.latest_complete(run_dir, storage.TRAIN_STAGE) is None or not previous.is_file():
        return None
    try:
        old = yaml.safe_load(previous.read_text())["training"]["model"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    new = config.training.to_wire()["model"]
    if old != new:
        return Problem(
            "spec.training.model",
            f"{run_dir} holds checkpoints of a different model ({old}); delete that folder "
            "or rename the job to start afresh",
        )
    return None


def plan_local_run(
    job: LargeModelJob,
    manifest: Path,
    *,
    cwd: Path,
    cuda_devices: int,
    run_dir: Path | None = None,
) -> tuple[LocalRunPlan | None, list[Problem]]:
    """The local run of a validated job, or the problems that stop it from running here.
    Storage goes to `run_dir` (default `<cwd>/runs/<job>`)."""
    spec = job.spec
    name = job.metadata.name
    procs = spec.workers.procs_per_worker or (cuda_devices or 1)
    num_procs = spec.workers.replicas * procs
    run_dir = (run_dir or cwd / RUNS_DIR / name).resolve()
    restarts = 0 if spec.run_policy.restart_policy == "Never" else spec.run_policy.backoff_limit
    env = {
        "LMJOB_CHECKPOINT_DIR": str(run_dir),
        "LMJOB_JOB_NAME": name,
        "LMJOB_NAMESPACE": job.metadata.namespace or "local",
    }
    env.update({e.name: e.value for e in spec.workers.env})
    if not cuda_devices and "OMP_NUM_THREADS" not in os.environ:
        # One BLAS thread pool per process, sized so the processes share the cores.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_procs))
    port = _free_port(spec.metrics.port)
    env["LMJOB_METRICS_PORT"] = str(port)
    # A worker's configuration error stops the run instead of a restart (cli/lmjob_cli/run.py
    # watches this file, as the pod's launcher does on a cluster).
    env[CONFIG_ERROR_FILE_ENV] = str(run_dir / CONFIG_ERROR_MARKER)
    common = {
        "job_name": name,
        "run_dir": run_dir,
        "num_procs": num_procs,
        "max_restarts": restarts,
        "metrics_port": port,
        "env": env,
        "deadline_seconds": spec.run_policy.active_deadline_seconds,
    }
    if spec.command is not None:
        entry = shutil.which(spec.command[0]) or spec.command[0]
        return LocalRunPlan(entrypoint=entry, args=list(spec.command[1:]), **common), []

    config = resolve_paths(build_trainer_config(job), manifest.parent.resolve())
    problems = check_runnable(
        config, world_size=num_procs, cuda_devices=cuda_devices, prefix="spec."
    )
    # Relative paths were resolved against the manifest's folder: the message shows where.
    problems += check_data_source(config, prefix="spec.")
    if (previous := _previous_model_problem(run_dir, config)) is not None:
        problems.append(previous)
    if problems:
        return None, problems
    config_path = run_dir / CONFIG_FILE_NAME
    env["LMJOB_CONFIG"] = str(config_path)
    plan = LocalRunPlan(
        entrypoint=sys.executable,
        args=["-m", "lmjob_trainer", "--config", str(config_path)],
        config=config,
        config_path=config_path,
        stages=stage_order(config),
        **common,
    )
    return plan, []


def nothing_left(plan: LocalRunPlan) -> bool:
    """Whether every stage and export of the plan finished in an earlier run, by the checks
    the trainer skips each by: a rerun then only reports, without starting a process."""
    if plan.config is None:
        return False  # a job's own command: only it knows
    root = plan.run_dir
    for stage in plan.stages:
        if stage == storage.TRAIN_STAGE:
            done = storage.finished_training(root, plan.config.training.steps)
        elif storage.is_export(stage):
            done = storage.read_export_report(root, stage)
        else:
            done = storage.finished_stage(root, stage)
        if done is None:
            return False
    return True


def write_config(plan: LocalRunPlan) -> None:
    """Write `./runs/<job>/trainer.yaml`, the file every worker reads."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if plan.config is not None and plan.config_path is not None:
        plan.config_path.write_text(dump_trainer_config(plan.config))


def launch(plan: LocalRunPlan, *, tee: bool = False) -> dict[int, Any]:
    """Run the plan under torchrun's elastic agent in this process; blocks until done.

    Raises torch's ChildFailedError when workers failed past the restart budget and
    SignalException on Ctrl-C/SIGTERM (workers got the signal too and checkpointed).
    Worker output goes to `<run>/logs/` (and to the terminal as well with `tee`).
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    write_config(plan)
    os.environ.update(TORCHRUN_ENV)
    os.environ.update(plan.env)
    logs = DefaultLogsSpecs(
        log_dir=str(plan.run_dir / LOGS_DIR),
        redirects=Std.ALL,
        tee=Std.ALL if tee else Std.NONE,
    )
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=plan.num_procs,
        run_id=f"lmjob-{plan.job_name}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        rdzv_configs={"is_host": True},
        max_restarts=plan.max_restarts,
        monitor_interval=0.5,
        start_method="spawn",
        logs_specs=logs,
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    return elastic_launch(config, plan.entrypoint)(*plan.args)


def read_progress(
    port: int, stages: Sequence[str] = (storage.TRAIN_STAGE,), timeout: float = 1.0
) -> TrainerProgress | None:
    """Scrape `127.0.0.1:port/metrics` with the operator's parser; None while the endpoint
    is down (start, restart). `stages`: `train` then the compression stages, in order."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            return parse_scrape(r.read().decode(), stages)
    except (OSError, ValueError):
        return None


@dataclass
class StageSummary:
    """One row of the end-of-run table."""

    stage: str
    phase: str
    steps: int | None
    eval_loss: float | None
    output: str | None
    # From the stage's report where it measured them (the train stage reports params only).
    params: float | None = None
    size_bytes: float | None = None
    sparsity: float | None = None
    latency_ms: float | None = None
    # Exports (spec.export): the runtime that loaded the artifact back, and how close it came.
    runtime: str | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None

    @property
    def is_export(self) -> bool:
        return storage.is_export(self.stage)


def summarize(plan: LocalRunPlan) -> tuple[list[StageSummary], str | None]:
    """Rows from the stages' report.json files, and the train stage's generated sample."""
    rows, sample = [], None
    # Without a stage runner in this build the trainer skipped the compression stages.
    compression = importlib.util.find_spec("lmjob_trainer.compression") is not None
    for stage in plan.stages:
        report = storage.read_report(plan.run_dir, stage)
        if report is None:
            latest = storage.latest_complete(plan.run_dir, stage)
            not_run = "Not run" if compression or stage == storage.TRAIN_STAGE else "Skipped"
            rows.append(
                StageSummary(
                    stage,
                    "Incomplete" if latest else not_run,
                    latest[0] if latest else None,
                    None,
                    str(latest[1]) if latest else None,
                )
            )
            continue
        if stage == storage.TRAIN_STAGE:
            sample = report.sample
        numbers = report.metrics
        rows.append(
            StageSummary(
                stage,
                report.phase,
                report.steps,
                numbers.get("evalLoss"),
                report.checkpoint,
                params=numbers.get("params"),
                size_bytes=numbers.get("bytes"),
                sparsity=numbers.get("sparsity"),
                latency_ms=numbers.get("latencyMs"),
                runtime=report.details.get("runtime"),
                max_abs_diff=numbers.get("maxAbsDiff"),
                tolerance=numbers.get("tolerance"),
            )
        )
    return rows, sample
