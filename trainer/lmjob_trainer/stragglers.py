"""Which ranks are stragglers: each rank's own step time, a rolling window, and the verdict.

Every rank measures, each step, its *own* time: from the step's start until it is ready to
synchronise gradients (its batch fetch, the data-wait part, plus its forward/backward work
before the gradient all-reduce). Time spent waiting for other ranks is left out on purpose:
after the all-reduce every rank's wall time is the slowest one's, which names nobody. The
numbers ride on the step's one existing collective (loop.train_step), so global rank 0
holds every rank's times and `RankWindow` keeps the last `windowSteps` of them.

A rank is a straggler when its median over the window exceeds `threshold` × the median of
all ranks' medians, and by at least `minExcessSeconds` (docs/operator.md). Medians, not means: one slow step (a checkpoint, a
page fault, an evaluation) moves neither. Under FSDP or tensor parallelism the forward's
own collectives pace every rank together, so there the measure sees mostly data waits.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmjob_api.env import NODE_NAME_ENV, POD_NAME_ENV

TEST_SLOW_RANK_ENV = "LMJOB_TEST_SLOW_RANK"
"""TEST HOOK, not a feature: `RANK:SECONDS` makes global rank RANK sleep SECONDS in every
training step's own (non-waiting) part, so tests can make a straggler (docs/testing.md)."""


@dataclass(frozen=True)
class Verdict:
    """The window's medians and who is slower than threshold × their median."""

    step_seconds: tuple[float, ...]
    """Per rank, the median of its step times over the window."""
    data_wait_seconds: tuple[float, ...]
    median_seconds: float
    """The median of `step_seconds` over ranks."""
    stragglers: tuple[int, ...]


def find_stragglers(
    step_seconds: Sequence[float], threshold: float, min_excess: float = 0.0
) -> tuple[float, list[int]]:
    """(median over ranks, ranks slower than threshold × it and than it + min_excess); pure."""
    if not step_seconds:
        return 0.0, []
    median = float(torch.tensor(list(step_seconds), dtype=torch.float64).median())
    # torch's median of an even count is the lower middle; a pair of ranks then compares
    # the slower against the faster, which is what "slower than the others" means.
    if median <= 0:
        return median, []
    limit = max(threshold * median, median + min_excess)
    return median, [r for r, s in enumerate(step_seconds) if s > limit]


class RankWindow:
    """The last `window` steps' (own time, data wait) of every rank; a ring buffer.

    Tensors rather than Python lists: rank 0 of a job with thousands of ranks takes the
    per-rank median every few steps, which must stay well under a millisecond per rank.
    """

    def __init__(
        self, world_size: int, window: int, threshold: float, min_excess: float = 0.0
    ) -> None:
        self.threshold, self.min_excess = threshold, min_excess
        self._times = torch.zeros(window, world_size, 2, dtype=torch.float64)
        self._seen = 0

    def observe(self, step_seconds: Sequence[float], data_wait_seconds: Sequence[float]) -> None:
        row = self._seen % self._times.shape[0]
        self._times[row, :, 0] = torch.tensor(list(step_seconds), dtype=torch.float64)
        self._times[row, :, 1] = torch.tensor(list(data_wait_seconds), dtype=torch.float64)
        self._seen += 1

    @property
    def full(self) -> bool:
        return self._seen >= self._times.shape[0]

    def verdict(self) -> Verdict | None:
        """None until the window is full: no verdict from a handful of warm-up steps."""
        if not self.full:
            return None
        medians = self._times.median(dim=0).values  # (world, 2)
        steps, waits = medians[:, 0].tolist(), medians[:, 1].tolist()
        median, slow = find_stragglers(steps, self.threshold, self.min_excess)
        return Verdict(tuple(steps), tuple(waits), median, tuple(slow))


def slow_rank_delay(rank: int, value: str | None = None) -> float:
    """Seconds this rank sleeps per step under the test hook TEST_SLOW_RANK_ENV (else 0)."""
    value = os.environ.get(TEST_SLOW_RANK_ENV, "") if value is None else value
    if not value:
        return 0.0
    try:
        target, seconds = value.split(":")
        return float(seconds) if int(target) == rank else 0.0
    except ValueError as err:
        raise ValueError(f"{TEST_SLOW_RANK_ENV}={value!r}: expected RANK:SECONDS") from err


def placements() -> list[tuple[str, str]]:
    """(pod, node) of every rank, indexed by global rank: a collective, once per stage.

    The operator passes each pod its own and its node's names through the downward API
    (lmjob_api.env); a local run has no pod, and its node is this machine."""
    mine = (os.environ.get(POD_NAME_ENV, ""), os.environ.get(NODE_NAME_ENV) or socket.gethostname())
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    out: list[tuple[str, str]] = [("", "")] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out
