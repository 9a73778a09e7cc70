"""Training progress from the rank-0 worker's Prometheus endpoint (docs/contracts.md), read
with the one parser of the trainer's series (lmjob_api.trainer_metrics).

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

from lmjob_api.status import StageStatus
from lmjob_api.termination import decode_stages
from lmjob_api.trainer_metrics import TrainerProgress, parse_scrape
from lmjob_operator.pod_view import PodView

log = logging.getLogger(__name__)


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", errors="replace")


async def scrape_progress(
    pods: Sequence[PodView],
    port: int,
    stage_order: Sequence[str],
    timeout: float,
    preferred: str = "",
    job: str | None = None,
) -> tuple[TrainerProgress | None, str]:
    """(progress, name of the pod that had it); (None, "") when no pod answered with it.
    With `job`, only that job's series count (parse_scrape)."""
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
            progress = parse_scrape(text, stage_order, job)
        except ValueError as err:
            log.warning("unparseable metrics from %s: %s", pod.name, err)
            continue
        if progress is not None:
            return progress, pod.name
    return None, ""


def final_stages(
    pods: Sequence[PodView], stage_order: Sequence[str]
) -> tuple[StageStatus, ...] | None:
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
        by_name = {s.name: s for s in stages}
        return tuple(by_name.get(name) or StageStatus(name=name) for name in stage_order)
    return None
