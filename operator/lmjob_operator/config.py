"""The operator's own configuration, read once from its environment (set by the chart).

Defaults suit a real cluster; tests shorten the timings through the same variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_TRAINER_IMAGE = "ghcr.io/lmjob/trainer:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of jobs without spec.image (LMJOB_TRAINER_IMAGE)."""
    rendezvous_image: str = ""
    """Image of the rendezvous store pods (LMJOB_RENDEZVOUS_IMAGE); empty: trainer_image.
    It must provide `python -m lmjob_trainer.rendezvous_store`."""
    resync_seconds: float = 15.0
    """How often a running job is reconciled without any event; also the progress-scrape period."""
    scrape_timeout_seconds: float = 2.0
    """Timeout of one metrics request to a worker."""
    force_delete_after_seconds: float = 60.0
    """A pod still Terminating this long after its grace period ended is force-deleted: its
    node is gone or unresponsive, and the pod's name is needed for its replacement."""

    create_concurrency: int = 16
    """Pods of one job created in parallel (LMJOB_CREATE_CONCURRENCY)."""

    @property
    def rendezvous_store_image(self) -> str:
        return self.rendezvous_image or self.trainer_image


def load_config(environ: dict[str, str] | None = None) -> OperatorConfig:
    """OperatorConfig from environment variables; raises ValueError naming a bad variable."""
    env = os.environ if environ is None else environ

    def number(name: str, default: float) -> float:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {raw!r}")
        return value

    return OperatorConfig(
        trainer_image=env.get("LMJOB_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
        rendezvous_image=env.get("LMJOB_RENDEZVOUS_IMAGE", ""),
        resync_seconds=number("LMJOB_RESYNC_SECONDS", 15.0),
        scrape_timeout_seconds=number("LMJOB_SCRAPE_TIMEOUT_SECONDS", 2.0),
        force_delete_after_seconds=number("LMJOB_FORCE_DELETE_AFTER_SECONDS", 60.0),
        create_concurrency=int(number("LMJOB_CREATE_CONCURRENCY", 16)),
    )
