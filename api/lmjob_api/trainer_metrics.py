"""The trainer's Prometheus series (docs/contracts.md): their names and labels, and the one
reader of a scrape, used by the operator (status.progress) and by `lmjob run` alike.

The trainer's metrics.py registers the series under these names; the parser below is the
only code that reads them back. No torch, no kopf: both sides import it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from lmjob_api.status import STAGE_PHASES, EvaluationStatus, StageStatus, StragglerStatus

PREFIX = "lmjob_trainer_"

# Label names.
JOB = "job"
STAGE = "stage"
PHASE = "phase"
PATH = "path"
METRIC = "metric"
KIND = "kind"
RANK = "rank"
POD = "pod"
NODE = "node"
AT_STEP = "step"  # the optimiser step an evaluation ran after (eval_history)
JOB_LABELS = (JOB,)
STAGE_LABELS = (JOB, STAGE)
RANK_LABELS = (JOB, STAGE, RANK)
STRAGGLER_LABELS = (JOB, STAGE, RANK, POD, NODE)
EVAL_HISTORY_LABELS = (JOB, STAGE, AT_STEP)

# Series names (without PREFIX), with their labels in docs/contracts.md.
STEP = "step"
TOTAL_STEPS = "total_steps"
LOSS = "loss"
EVAL_LOSS = "eval_loss"
EVAL_HISTORY = "eval_history"
LEARNING_RATE = "learning_rate"
GRAD_NORM = "grad_norm"
SKIPPED_STEPS = "skipped_steps"
TOKENS_PER_SECOND = "tokens_per_second"
STEP_SECONDS = "step_seconds"
MFU = "mfu"
MEMORY_BYTES = "memory_bytes"
CHECKPOINT_SAVE_SECONDS = "checkpoint_save_seconds"
CHECKPOINT_LOAD_SECONDS = "checkpoint_load_seconds"
CHECKPOINT_INFO = "checkpoint_info"
CHECKPOINT_WRITE_SECONDS = "checkpoint_write_seconds"
WORLD_SIZE = "world_size"
RESTARTS = "restarts"
STAGE_INFO = "stage_info"
STAGE_RESULT = "stage_result"
RANK_STEP_SECONDS = "rank_step_seconds"
RANK_DATA_WAIT_SECONDS = "rank_data_wait_seconds"
STRAGGLER = "straggler"
STALLED_SECONDS = "stalled_seconds"
GOODPUT_SECONDS = "goodput_seconds"
STARTED_TIMESTAMP = "started_timestamp_seconds"
HANG_TIMEOUT_SECONDS = "hang_timeout_seconds"

# Per-stage gauges the progress reader takes for the current stage.
_PROGRESS_SERIES = (STEP, TOTAL_STEPS, LOSS, EVAL_LOSS, TOKENS_PER_SECOND)


def series(name: str) -> str:
    """The exported name of a series: `lmjob_trainer_<name>`."""
    return PREFIX + name


@dataclass(frozen=True)
class TrainerProgress:
    """What the job-level series of one scrape say (only global rank 0 exports them)."""

    stage: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    world_size: int = 0
    restarts: int = 0
    checkpoint_path: str = ""
    checkpoint_step: int = 0
    checkpoint_write_seconds: float | None = None
    """The longest time any stage's newest checkpoint took to write; None before one."""
    stages: tuple[StageStatus, ...] = ()
    rank_step_seconds: dict[int, float] | None = None
    """Every rank's median step time in the current stage; None before a full window."""
    stragglers: tuple[StragglerStatus, ...] = ()
    """The current stage's stragglers, by rank."""
    evaluations: tuple[EvaluationStatus, ...] = ()
    """The evaluations rank 0 still exports (`eval_history`), in stage order, then by step."""
    goodput_seconds: dict[str, float] | None = None
    """The goodput ledger's seconds by kind (lmjob_api.goodput); None before rank 0 has one."""
    started_at: float | None = None
    """When the job's first rank-0 process, or its launcher where known, started (Unix s)."""
    stalled_seconds: float | None = None
    """Seconds since the current stage's last completed step, as the scraped pod's hang
    watchdog says (None: no watchdog in this stage, e.g. a quantize stage)."""
    hang_timeout_seconds: float | None = None
    """The current stage's hang timeout in effect (None: the watchdog is not armed yet)."""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def parse_scrape(
    text: str, stage_order: Sequence[str], job: str | None = None
) -> TrainerProgress | None:
    """Parse one exposition; None when it lacks the job-level series (not global rank 0).

    Raises ValueError on text that is not Prometheus exposition. Rules:
    - only `lmjob_trainer_*` families count, and of a histogram only its own sample;
    - with `job`, only series of that job (their `job` label): where pods share a network
      (hostNetwork, a local cluster's process nodes) the port may still be another job's,
      e.g. a stopped trial's trainer finishing while the next trial starts;
    - a scrape is rank 0's when it has `world_size`, a `stage_info` or a progress gauge;
    - `stage_order` (`train`, then the spec's compression stages) orders `stages` and picks
      the current stage: the last Running one, else the last that started (not Pending or
      Skipped), else the last with any series;
    - `eval_history` gives `evaluations`, ordered by `stage_order` (unknown stages after,
      by name), then step;
    - `stalled_seconds` and `hang_timeout_seconds` are the current stage's (the hang
      watchdog's, docs/operator.md "Hangs");
    - non-finite numbers (a diverged loss) read as None: status cannot carry NaN.
    """
    per_stage: dict[str, dict[str, float]] = {}
    phases: dict[str, str] = {}
    checkpoints: dict[str, tuple[str, int]] = {}
    results: dict[str, dict[str, float]] = {}
    world_size = restarts = 0
    write_seconds: float | None = None
    found = False
    rank_steps: dict[str, dict[int, float]] = {}
    rank_waits: dict[str, dict[int, float]] = {}
    slow: dict[str, dict[int, tuple[str, str]]] = {}
    evals: dict[tuple[str, int], float] = {}
    goodput: dict[str, float] = {}
    started_at: float | None = None
    hang: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        key = family.name[len(PREFIX) :]
        for sample in family.samples:
            if sample.name != family.name:
                continue  # histogram buckets, sums and counts
            labels = sample.labels
            if job is not None and labels.get(JOB, job) != job:
                continue
            stage = labels.get(STAGE, "")
            if key == WORLD_SIZE:
                world_size, found = int(sample.value), True
            elif key == RESTARTS:
                restarts = int(sample.value)
            elif key == STAGE_INFO and sample.value:
                phase = labels.get(PHASE, "")
                phases[stage] = phase if phase in STAGE_PHASES else "Pending"
                found = True
            elif key == CHECKPOINT_INFO:
                path, step = labels.get(PATH, ""), int(sample.value)
                if path and step >= checkpoints.get(stage, ("", -1))[1]:
                    checkpoints[stage] = (path, step)
            elif key == CHECKPOINT_WRITE_SECONDS and math.isfinite(sample.value):
                write_seconds = max(write_seconds or 0.0, sample.value)
            elif key == STAGE_RESULT:
                value = _finite(sample.value)
                if value is not None:
                    results.setdefault(stage, {})[labels.get(METRIC, "")] = value
            elif key in (RANK_STEP_SECONDS, RANK_DATA_WAIT_SECONDS, STRAGGLER):
                rank = _int_label(labels, RANK)
                if rank is None:
                    continue
                if key == STRAGGLER:
                    slow.setdefault(stage, {})[rank] = (labels.get(POD, ""), labels.get(NODE, ""))
                elif math.isfinite(sample.value):
                    into = rank_steps if key == RANK_STEP_SECONDS else rank_waits
                    into.setdefault(stage, {})[rank] = sample.value
            elif key == EVAL_HISTORY:
                at = _int_label(labels, AT_STEP)
                if at is not None and at >= 0 and math.isfinite(sample.value):
                    evals[(stage, at)] = sample.value
            elif key == GOODPUT_SECONDS and math.isfinite(sample.value):
                goodput[labels.get(KIND, "")] = sample.value
            elif key == STARTED_TIMESTAMP and math.isfinite(sample.value):
                started_at = sample.value
            elif key in (STALLED_SECONDS, HANG_TIMEOUT_SECONDS):
                # Per pod, not rank 0's alone: they do not make a scrape rank 0's.
                if math.isfinite(sample.value):
                    hang.setdefault(stage, {})[key] = sample.value
            elif key in _PROGRESS_SERIES:
                per_stage.setdefault(stage, {})[key] = sample.value
                found = True
    if not found:
        return None

    known = [s for s in stage_order if s in per_stage or s in phases]
    known += sorted(s for s in set(per_stage) | set(phases) if s not in stage_order)
    running = [s for s in known if phases.get(s) == "Running"]
    started = [s for s in known if phases.get(s, "Running") not in ("Pending", "Skipped")]
    current = (running or started or known or [""])[-1]
    values = per_stage.get(current, {})
    ckpt_stage = next((s for s in [current, *reversed(known)] if s in checkpoints), None)
    path, ckpt_step = checkpoints[ckpt_stage] if ckpt_stage else ("", 0)
    stages = tuple(
        StageStatus(
            name=s,
            phase=phases.get(s, "Pending"),
            checkpoint=checkpoints[s][0] if s in checkpoints else None,
            metrics=results.get(s, {}),
        )
        for s in stage_order
    )
    steps = rank_steps.get(current) or None
    return TrainerProgress(
        rank_step_seconds=steps,
        stragglers=_stragglers(steps or {}, rank_waits.get(current, {}), slow.get(current, {})),
        stage=current,
        step=int(values.get(STEP, 0)),
        total_steps=int(values.get(TOTAL_STEPS, 0)),
        loss=_finite(values.get(LOSS)),
        eval_loss=_finite(values.get(EVAL_LOSS)),
        tokens_per_second=_finite(values.get(TOKENS_PER_SECOND)),
        world_size=world_size,
        restarts=restarts,
        checkpoint_path=path,
        checkpoint_step=ckpt_step,
        checkpoint_write_seconds=write_seconds,
        stages=stages,
        evaluations=_evaluations(evals, stage_order),
        goodput_seconds=goodput or None,
        started_at=started_at,
        stalled_seconds=hang.get(current, {}).get(STALLED_SECONDS),
        hang_timeout_seconds=hang.get(current, {}).get(HANG_TIMEOUT_SECONDS),
    )


def _int_label(labels: dict[str, str], name: str) -> int | None:
    try:
        return int(labels.get(name, ""))
    except ValueError:
        return None


def evaluation_order(
    stage_order: Sequence[str],
) -> Callable[[EvaluationStatus], tuple[int, str, int]]:
    """Sort key of evaluations: the stage's place in `stage_order` (unknown stages after,
    by name), then the step. The operator merges status.evaluations in the same order."""
    place = {name: i for i, name in enumerate(stage_order)}

    def key(e: EvaluationStatus) -> tuple[int, str, int]:
        return (place.get(e.stage, len(place)), e.stage, e.step)

    return key


def _evaluations(
    evals: dict[tuple[str, int], float], stage_order: Sequence[str]
) -> tuple[EvaluationStatus, ...]:
    found = [EvaluationStatus(stage=s, step=at, loss=v) for (s, at), v in evals.items()]
    return tuple(sorted(found, key=evaluation_order(stage_order)))


def _stragglers(
    steps: dict[int, float], waits: dict[int, float], slow: dict[int, tuple[str, str]]
) -> tuple[StragglerStatus, ...]:
    """The `straggler` series named by rank, with the step times behind the verdict."""
    median = statistics.median_low(steps.values()) if steps else 0.0
    return tuple(
        StragglerStatus(
            rank=rank,
            pod=pod,
            node=node,
            step_seconds=steps.get(rank, 0.0),
            data_wait_seconds=waits.get(rank, 0.0),
            median_seconds=median,
        )
        for rank, (pod, node) in sorted(slow.items())
    )
