"""TensorBoard event files of a stage's curves, written by rank 0 beside its history:
`<root>/tensorboard/<stage>/` (`tensorboard --logdir runs/<job>/tensorboard`: one run per
stage, so a fine-tune's curve sits beside training's).

Scalars: `loss`, `lr`, `grad_norm`, `tokens_per_second` (and `mfu` on GPUs) per optimiser
step, `eval_loss` per evaluation, `skipped_steps` when a non-finite step was skipped. After
a restart the steps since the last checkpoint are trained again: the writer's first step
purges what an earlier session wrote from that step on, so each step has one value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FOLDER = "tensorboard"
FLUSH_SECONDS = 10


def event_dir(root: Path, stage: str) -> Path:
    return root / FOLDER / stage


class EventLog:
    """Scalars of one stage; opened at the first write, with that step as the purge point."""

    def __init__(self, root: Path, stage: str) -> None:
        self.folder = event_dir(root, stage)
        self._writer: Any = None
        self._unavailable = False

    def _open(self, step: int) -> Any:
        if self._writer is None and not self._unavailable:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # a trainer build without tensorboard: curves stay in history
                self._unavailable = True
                log.warning("tensorboard is not installed: no event files")
                return None
            self._writer = SummaryWriter(
                str(self.folder), purge_step=step, flush_secs=FLUSH_SECONDS
            )
        return self._writer

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        writer = self._open(step)
        if writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
