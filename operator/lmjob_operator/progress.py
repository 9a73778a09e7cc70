"""Training progress from the rank-0 worker's Prometheus endpoint (docs/contracts.md).

Workers hold no Kubernetes credentials: the operator reads `http://<pod IP>:<metrics
port>/metrics` itself. Only the pod running global rank 0 exports the job-level series,
and which pod that is can change at every rendezvous, so the operator asks the pod that
had them last time first, then the others in index order.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from lmjob_api.termination import decode_stages
from lmjob_operator.pod_view import PodView

log = logging.getLogger(__name__)

_PREFIX = "lmjob_trainer_"


@dataclass(frozen=True)
class StageReport:
    name: str
    phase: str = "Pending"
    checkpoint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """The job-level series of one scrape."""

    stage: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    world_size: int = 0
    checkpoint_path: str = ""
    checkpoint_step: int = 0
    stages: tuple[StageReport, ...] = ()


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def parse_progress(text: str, stage_order: Sequence[str]) -> Progress | None:
    """Parse one exposition; None when it lacks the job-level series (not rank 0).

    `stage_order` is `train` then the compression stages of the spec: it decides which
    stage is current when none reports Running, and the order of `status.stages`.
    """
    per_stage: dict[str, dict[str, float]] = {}
    phases: dict[str, str] = {}
    checkpoints: dict[str, tuple[str, int]] = {}
    results: dict[str, dict[str, float]] = {}
    world_size = 0
    found = False
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(_PREFIX):
            continue
        key = family.name[len(_PREFIX) :]
        for sample in family.samples:
            if sample.name != family.name:
                continue  # histogram buckets, sums and counts
            labels = sample.labels
            stage = labels.get("stage", "")
            if key == "world_size":
                world_size, found = int(sample.value), True
            elif key == "stage_info" and sample.value:
                phases[stage], found = labels.get("phase", "Pending"), True
            elif key == "checkpoint_info":
                path, step = labels.get("path", ""), int(sample.value)
                if path and step >= checkpoints.get(stage, ("", -1))[1]:
                    checkpoints[stage] = (path, step)
            elif key == "stage_result":
                value = _finite(sample.value)
                if value is not None:
                    results.setdefault(stage, {})[labels.get("metric", "")] = value
            elif key in ("step", "total_steps", "loss", "tokens_per_second"):
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
    ckpt_stage = next(
        (s for s in [current, *reversed(known)] if s in checkpoints),
        None,
    )
    path, ckpt_step = checkpoints.get(ckpt_stage, ("", 0)) if ckpt_stage else ("", 0)
    stages = tuple(
        StageReport(
            name=s,
            phase=phases.get(s, "Pending"),
            checkpoint=checkpoints[s][0] if s in checkpoints else None,
            metrics=results.get(s, {}),
        )
        for s in stage_order
    )
    return Progress(
        stage=current,
        step=int(values.get("step", 0)),
        total_steps=int(values.get("total_steps", 0)),
        loss=_finite(values["loss"]) if "loss" in values else None,
        tokens_per_second=_finite(values["tokens_per_second"])
        if "tokens_per_second" in values
        else None,
        world_size=world_size,
        checkpoint_path=path,
        checkpoint_step=ckpt_step,
        stages=stages,
    )


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", errors="replace")


async def scrape_progress(
    pods: Sequence[PodView],
    port: int,
    stage_order: Sequence[str],
    timeout: float,
    preferred: str = "",
) -> tuple[Progress | None, str]:
    """(progress, name of the pod that had it); (None, "") when no pod answered with it."""
    candidates = sorted(
        (p for p in pods if p.is_worker and p.phase == "Running" and p.pod_ip and p.live),
        key=lambda p: (p.name != preferred, p.index or 0),
    )
    for pod in candidates:
        host = f"[{pod.pod_ip}]" if ":" in pod.pod_ip else pod.pod_ip
        try:
            text = await asyncio.to_thread(_fetch, f"http://{host}:{port}/metrics", timeout)
        except (OSError, ValueError) as err:
            log.debug("no metrics from %s: %s", pod.name, err)
            continue
        try:
            progress = parse_progress(text, stage_order)
        except ValueError as err:
            log.warning("unparseable metrics from %s: %s", pod.name, err)
            continue
        if progress is not None:
            return progress, pod.name
    return None, ""


def final_stages(
    pods: Sequence[PodView], stage_order: Sequence[str]
) -> tuple[StageReport, ...] | None:
    """Every stage's final results from the termination message of the finished worker
    that ran global rank 0 (newest rendezvous round first); None when no pod left one."""
    finished = sorted(
        (p for p in pods if p.is_worker and p.finished and p.message),
        key=lambda p: (-(p.rendezvous_round or 0), p.index or 0),
    )
    for pod in finished:
        stages = decode_stages(pod.message)
        if stages is None:
            continue
        by_name = {s["name"]: s for s in stages}
        return tuple(
            StageReport(name, s["phase"], s["checkpoint"], s["metrics"])
            if (s := by_name.get(name))
            else StageReport(name)
            for name in stage_order
        )
    return None
