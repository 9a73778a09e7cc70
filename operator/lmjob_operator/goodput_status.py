"""status.goodput from the trainer's exported goodput seconds and the job's own times (pure).

The trainer measures what its ledger records (lmjob_api.goodput); the operator adds the wait
from the job's creation to its first launch (scheduling, Kueue queueing) and the wall time.
Once the job has finished, the last scraped numbers stand and the wall time stops at
completion: the tail after the last scrape (final save, exports) counts as `other`.
"""

from __future__ import annotations

from datetime import datetime

from lmjob_api import LargeModelJob, LargeModelJobStatus
from lmjob_api.goodput import TRAINER_KINDS, breakdown
from lmjob_api.status import GoodputStatus
from lmjob_api.trainer_metrics import TrainerProgress
from lmjob_operator.pod_view import parse_time


def goodput_status(
    job: LargeModelJob,
    progress: TrainerProgress | None,
    previous: LargeModelJobStatus,
    *,
    finished: bool,
    now: datetime,
) -> GoodputStatus | None:
    """The new status.goodput; `previous.goodput` when there is nothing newer to say."""
    created_at = parse_time((job.metadata.model_extra or {}).get("creationTimestamp"))
    created = created_at.timestamp() if created_at is not None else None
    old = previous.goodput
    if progress is not None and progress.goodput_seconds and not previous.phase.finished:
        trainer, first_launch = progress.goodput_seconds, progress.started_at
        if old is not None and not finished and _same(trainer, old):
            return old  # nothing new measured: status is not rewritten for the clock alone
    elif old is not None and finished and not previous.phase.finished and created is not None:
        # The finishing pass: freeze at completion with what the last scrape said.
        trainer = {k: old.seconds.get(k, 0.0) for k in TRAINER_KINDS}
        first_launch = created + old.seconds.get("scheduling", 0.0)
    else:
        return old
    result = breakdown(trainer, first_launch=first_launch, created=created, end=now.timestamp())
    return GoodputStatus(
        ratio=round(min(1.0, result.ratio), 4),
        wall_seconds=round(result.wall_seconds, 1),
        seconds={k: round(v, 1) for k, v in result.seconds.items()},
    )


def _same(trainer: dict[str, float], old: GoodputStatus) -> bool:
    return all(round(trainer.get(k, 0.0), 1) == old.seconds.get(k) for k in TRAINER_KINDS)
