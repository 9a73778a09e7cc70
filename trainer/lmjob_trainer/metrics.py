"""The trainer's Prometheus series, registered under the names of lmjob_api.trainer_metrics
(the contract the operator and `lmjob run` read them back with; docs/contracts.md).

Local rank 0 of each pod serves `:$LMJOB_METRICS_PORT/metrics`. Job-level series are set
only by the process holding global rank 0, so exactly one pod of a job exports them and
no value is reported N times; memory is per pod (local rank 0's own process).
"""

from __future__ import annotations

import logging
import math
import os
import resource
from collections.abc import Sequence
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from lmjob_api import trainer_metrics as names
from lmjob_api.status import STAGE_PHASES, StageStatus
from lmjob_trainer.distributed import DistEnv
from lmjob_trainer.stragglers import Verdict

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800)
# eval_history keeps this many evaluations per stage: one series each, so the count is bounded;
# the operator keeps every one it has seen in status.evaluations.
EVAL_HISTORY_SIZE = 64
METRICS_ADDRESS_ENV = "LMJOB_METRICS_ADDRESS"


class TrainerMetrics:
    """Every series of the contract, updated through intent-named methods.

    On processes other than global rank 0 the job-level methods do nothing, so callers
    need not check ranks.
    """

    def __init__(self, job: str, env: DistEnv, port: int | None = None) -> None:
        self.job = job
        self.exports_job = env.is_main
        self.exports_pod = env.is_local_main
        self.registry = CollectorRegistry()
        self._server: Any = None
        self._latest_path: dict[str, str] = {}
        self._phase: dict[str, str] = {}
        self._results: dict[str, dict[str, float]] = {}
        r = self.registry
        js = names.STAGE_LABELS
        self.step = Gauge(
            names.series(names.STEP), "Optimiser steps done in the stage", js, registry=r
        )
        self.total_steps = Gauge(
            names.series(names.TOTAL_STEPS), "Steps the stage will run", js, registry=r
        )
        self.loss = Gauge(names.series(names.LOSS), "Latest training loss", js, registry=r)
        self.eval_loss = Gauge(
            names.series(names.EVAL_LOSS), "Latest evaluation loss", js, registry=r
        )
        self.eval_history = Gauge(
            names.series(names.EVAL_HISTORY),
            f"Evaluation loss at each step (the last {EVAL_HISTORY_SIZE} per stage)",
            names.EVAL_HISTORY_LABELS,
            registry=r,
        )
        self._eval_steps: dict[str, list[int]] = {}
        self.learning_rate = Gauge(
            names.series(names.LEARNING_RATE), "Current learning rate", js, registry=r
        )
        self.grad_norm = Gauge(
            names.series(names.GRAD_NORM), "Global gradient norm before clipping", js, registry=r
        )
        self.skipped_steps = Gauge(
            names.series(names.SKIPPED_STEPS),
            "Steps whose update was skipped: NaN or infinite loss or gradient norm",
            js,
            registry=r,
        )
        self.tokens_per_second = Gauge(
            names.series(names.TOKENS_PER_SECOND),
            "Training throughput over all ranks",
            js,
            registry=r,
        )
        self.step_seconds = Histogram(
            names.series(names.STEP_SECONDS),
            "Wall time per optimiser step",
            js,
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.mfu = Gauge(
            names.series(names.MFU), "Model FLOPs utilisation (GPU only)", js, registry=r
        )
        self.memory_bytes = Gauge(
            names.series(names.MEMORY_BYTES),
            "Memory of this pod's local rank 0",
            (*js, names.KIND),
            registry=r,
        )
        self.checkpoint_save_seconds = Histogram(
            names.series(names.CHECKPOINT_SAVE_SECONDS),
            "Blocking time of a checkpoint save",
            js,
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_load_seconds = Histogram(
            names.series(names.CHECKPOINT_LOAD_SECONDS),
            "Time to load a checkpoint on resume",
            js,
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_info = Gauge(
            names.series(names.CHECKPOINT_INFO),
            "Newest complete checkpoint (value: its step)",
            (*js, names.PATH),
            registry=r,
        )
        self.checkpoint_write_seconds = Gauge(
            names.series(names.CHECKPOINT_WRITE_SECONDS),
            "Seconds the newest checkpoint took from the save call to complete on storage",
            js,
            registry=r,
        )
        self.world_size = Gauge(
            names.series(names.WORLD_SIZE),
            "Processes in the rendezvous",
            names.JOB_LABELS,
            registry=r,
        )
        self.restarts = Gauge(
            names.series(names.RESTARTS),
            "torchrun restarts of this job",
            names.JOB_LABELS,
            registry=r,
        )
        self.stage_info = Gauge(
            names.series(names.STAGE_INFO),
            "Phase of each stage (value 1)",
            (*js, names.PHASE),
            registry=r,
        )
        self.stage_result = Gauge(
            names.series(names.STAGE_RESULT),
            "A stage's report numbers",
            (*js, names.METRIC),
            registry=r,
        )
        self.rank_step_seconds = Gauge(
            names.series(names.RANK_STEP_SECONDS),
            "Each rank's own step time (excluding waits for other ranks), median over the window",
            names.RANK_LABELS,
            registry=r,
        )
        self.rank_data_wait_seconds = Gauge(
            names.series(names.RANK_DATA_WAIT_SECONDS),
            "The data-loading part of rank_step_seconds, median over the window",
            names.RANK_LABELS,
            registry=r,
        )
        self.straggler = Gauge(
            names.series(names.STRAGGLER),
            "Present while a rank is a straggler; value: its step time over the median rank's",
            names.STRAGGLER_LABELS,
            registry=r,
        )
        self._stragglers: dict[str, set[tuple[str, str, str]]] = {}
        self.stalled_seconds = Gauge(
            names.series(names.STALLED_SECONDS),
            "Seconds since this pod's local rank 0 last completed a step (hang watchdog)",
            js,
            registry=r,
        )
        self.goodput_seconds = Gauge(
            names.series(names.GOODPUT_SECONDS),
            "Seconds of the job's time so far by kind, over every restart (lmjob_api.goodput)",
            (names.JOB, names.KIND),
            registry=r,
        )
        self.started_timestamp = Gauge(
            names.series(names.STARTED_TIMESTAMP),
            "When the job's first rank-0 process (or its launcher, where known) started (Unix seconds)",
            names.JOB_LABELS,
            registry=r,
        )
        self.hang_timeout_seconds = Gauge(
            names.series(names.HANG_TIMEOUT_SECONDS),
            "The hang watchdog's timeout in effect (training.hang.timeoutSeconds or derived), "
            "once armed",
            js,
            registry=r,
        )
        if self.exports_job:
            self.world_size.labels(job).set(env.world_size)
            self.restarts.labels(job).set(env.restart_count)
        if self.exports_pod and port:
            self._serve(port)

    def _serve(self, port: int) -> None:
        try:
            # All addresses unless told one: a node that runs pods as processes
            # (lmjob cluster's) gives each its own loopback address to serve on.
            address = os.environ.get(METRICS_ADDRESS_ENV) or "0.0.0.0"
            self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        except OSError as err:
            # Metrics are worth a warning, never a failed training run.
            log.warning("metrics endpoint not started", extra={"port": port, "error": str(err)})

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- training progress (global rank 0) ---

    def record_total_steps(self, stage: str, total: int) -> None:
        if self.exports_job:
            self.total_steps.labels(self.job, stage).set(total)

    def record_skipped_steps(self, stage: str, skipped: int) -> None:
        if self.exports_job:
            self.skipped_steps.labels(self.job, stage).set(skipped)

    def record_step(
        self,
        stage: str,
        *,
        step: int,
        loss: float,
        lr: float,
        grad_norm: float | None,
        tokens_per_second: float,
        step_seconds: float,
        mfu: float | None = None,
    ) -> None:
        if not self.exports_job:
            return
        labels = (self.job, stage)
        self.step.labels(*labels).set(step)
        self.loss.labels(*labels).set(loss)
        self.learning_rate.labels(*labels).set(lr)
        if grad_norm is not None:
            self.grad_norm.labels(*labels).set(grad_norm)
        self.tokens_per_second.labels(*labels).set(tokens_per_second)
        self.step_seconds.labels(*labels).observe(step_seconds)
        if mfu is not None:
            self.mfu.labels(*labels).set(mfu)

    def record_ranks(
        self,
        stage: str,
        verdict: Verdict,
        placements: Sequence[tuple[str, str]],
    ) -> None:
        """Every rank's windowed step and data-wait times, and one `straggler` series per
        straggler (pod and node from `placements`, by rank); former stragglers' go away."""
        if not self.exports_job:
            return
        for rank, (step, wait) in enumerate(
            zip(verdict.step_seconds, verdict.data_wait_seconds, strict=True)
        ):
            self.rank_step_seconds.labels(self.job, stage, str(rank)).set(step)
            self.rank_data_wait_seconds.labels(self.job, stage, str(rank)).set(wait)
        now: set[tuple[str, str, str]] = set()
        for rank in verdict.stragglers:
            pod, node = placements[rank] if rank < len(placements) else ("", "")
            key = (str(rank), pod, node)
            now.add(key)
            ratio = verdict.step_seconds[rank] / verdict.median_seconds
            self.straggler.labels(self.job, stage, *key).set(ratio)
        for key in self._stragglers.get(stage, set()) - now:
            self.straggler.remove(self.job, stage, *key)
        self._stragglers[stage] = now

    def record_eval(self, stage: str, step: int, loss: float) -> None:
        """The latest eval loss, and one `eval_history` series per step (finite losses only),
        the oldest removed past EVAL_HISTORY_SIZE per stage: a scrape that comes late still
        sees every evaluation since the one before."""
        if not self.exports_job:
            return
        self.eval_loss.labels(self.job, stage).set(loss)
        if not math.isfinite(loss):
            return
        self.eval_history.labels(self.job, stage, str(step)).set(loss)
        steps = self._eval_steps.setdefault(stage, [])
        if step not in steps:  # a resumed stage may evaluate a step again: same series
            steps.append(step)
        while len(steps) > EVAL_HISTORY_SIZE:
            self.eval_history.remove(self.job, stage, str(steps.pop(0)))

    # --- checkpoints ---

    def record_checkpoint_saved(self, stage: str, seconds: float) -> None:
        if self.exports_job:
            self.checkpoint_save_seconds.labels(self.job, stage).observe(seconds)

    def record_checkpoint_complete(
        self, stage: str, path: str, step: int, *, write_seconds: float | None = None
    ) -> None:
        """The newest complete checkpoint: one series per stage, the older one removed;
        with `write_seconds` when this process wrote it (not when it resumed from it)."""
        if not self.exports_job:
            return
        if write_seconds is not None:
            self.checkpoint_write_seconds.labels(self.job, stage).set(write_seconds)
        old = self._latest_path.get(stage)
        if old is not None and old != path:
            self.checkpoint_info.remove(self.job, stage, old)
        self._latest_path[stage] = path
        self.checkpoint_info.labels(self.job, stage, path).set(step)

    def record_checkpoint_loaded(self, stage: str, seconds: float) -> None:
        if self.exports_job:
            self.checkpoint_load_seconds.labels(self.job, stage).observe(seconds)

    # --- stages ---

    def set_stage_phase(self, stage: str, phase: str) -> None:
        """One `stage_info` series per stage, labelled with its current phase."""
        assert phase in STAGE_PHASES, phase
        if not self.exports_job:
            return
        old = self._phase.get(stage)
        if old is not None and old != phase:
            self.stage_info.remove(self.job, stage, old)
        self._phase[stage] = phase
        self.stage_info.labels(self.job, stage, phase).set(1)

    def set_stage_result(self, stage: str, results: dict[str, float]) -> None:
        """Report numbers of a stage: evalLoss, params, bytes, sparsity, latencyMs, wallSeconds."""
        if not self.exports_job:
            return
        for metric, value in results.items():
            if value is not None:
                self.stage_result.labels(self.job, stage, metric).set(float(value))
                self._results.setdefault(stage, {})[metric] = float(value)

    def stage_summary(self) -> list[StageStatus]:
        """Every stage's phase, newest checkpoint and results, as the stage series say them
        (empty where this process does not export job-level series)."""
        return [
            StageStatus(
                name=stage,
                phase=phase,
                checkpoint=self._latest_path.get(stage),
                metrics=dict(self._results.get(stage, {})),
            )
            for stage, phase in self._phase.items()
        ]

    def record_goodput(self, seconds: dict[str, float], first_launch: float | None) -> None:
        """The goodput ledger's running totals (global rank 0)."""
        if not self.exports_job:
            return
        for kind, value in seconds.items():
            self.goodput_seconds.labels(self.job, kind).set(value)
        if first_launch is not None:
            self.started_timestamp.labels(self.job).set(first_launch)

    # --- per pod ---

    def record_stalled(self, stage: str, seconds: float, timeout: float | None) -> None:
        """From the hang watchdog's thread: every pod says how long it has been stuck, since
        the rank that serves the job-level series may be the frozen one, and past which
        timeout that is a hang (absent until the watchdog is armed)."""
        if not self.exports_pod:
            return
        self.stalled_seconds.labels(self.job, stage).set(seconds)
        if timeout is not None:
            self.hang_timeout_seconds.labels(self.job, stage).set(timeout)

    def record_memory(self, stage: str, device: torch.device) -> None:
        if not self.exports_pod:
            return
        labels = (self.job, stage)
        if device.type == "cuda":
            self.memory_bytes.labels(*labels, "allocated").set(torch.cuda.memory_allocated(device))
            self.memory_bytes.labels(*labels, "peak").set(torch.cuda.max_memory_allocated(device))
        self.memory_bytes.labels(*labels, "rss").set(current_rss_bytes())


def current_rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
