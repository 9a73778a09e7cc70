"""Goodput: what fraction of a job's wall time went to steps that count, and where the rest went.

The trainer's global rank 0 appends a ledger of timed events to `<storage>/goodput.jsonl`
(docs/contracts.md); it outlives every process, so restarts and re-done steps show up in it.
`Tally.fold` reads it one record at a time: the trainer keeps a live tally (exported as
`lmjob_trainer_goodput_seconds{kind}`), `lmjob run` folds the file once at the end, and the
operator turns the exported seconds into `status.goodput` with `breakdown`. No torch, no kopf.

Records (`event`, `time` = Unix seconds at its end, `seconds` = its duration):
- `launch`: a rank-0 process started (`time` is its start; `agent`, where known, when its
  launcher, torchrun's agent, started): from the ledger's last record to the launcher's
  start is a restart (failure detection, pod deletion and creation, scheduling, a
  preemption or suspension), from there to the process's start the launcher's rendezvous.
- `start` (`stage`, `step`): a stage's loop begins at `step` (its resumed checkpoint): steps
  of that stage after it were done before and are done again, so their time was lost.
- `step` (`stage`, `step`, `seconds`): an optimiser step; productive until re-done.
- `evaluation` / `checkpoint` (`stage`, `step`, `seconds`): time training waited for them.

Kinds of time, which add up to the wall time: productive, redone, checkpoint, evaluation,
setup (a launch to its first step: imports, data, model, checkpoint load), rendezvous (a
launcher's start, or the last record, to its worker's start), restart, scheduling (job
created to the first launcher's start; the operator's part), other (the rest: stage
transitions, exports, logging, the tail after the last record).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEDGER = "goodput.jsonl"

# The kinds the trainer measures, in the order status and tables list them.
TRAINER_KINDS = (
    "productive",
    "redone",
    "checkpoint",
    "evaluation",
    "setup",
    "rendezvous",
    "restart",
)
KINDS = (*TRAINER_KINDS, "scheduling", "other")


@dataclass
class Tally:
    """Seconds of each trainer-measured kind so far, folded from ledger records."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TRAINER_KINDS, 0.0))
    first_launch: float | None = None
    """When the job's first rank-0 process, or its launcher where known, started (Unix s)."""
    last_time: float | None = None
    """The newest record's time: where the ledger's coverage ends."""
    _steps: dict[tuple[str, int], float] = field(default_factory=dict)
    """Productive steps that a resume could still re-do: those after the second-newest
    checkpoint of their stage (older ones can never be re-done, so they are dropped)."""
    _checkpoints: dict[str, list[int]] = field(default_factory=dict)
    _awaiting_first_step: float | None = None

    def fold(self, record: dict[str, Any]) -> None:
        """Account one ledger record; malformed ones are ignored (a torn last line)."""
        try:
            event, at = record["event"], float(record["time"])
        except (KeyError, TypeError, ValueError):
            return
        if event == "launch":
            agent = _number(record.get("agent"))
            agent = agent if agent is not None and agent <= at else None
            if self.first_launch is None:
                self.first_launch = agent if agent is not None else at
                began = self.first_launch
            else:
                previous = self.last_time if self.last_time is not None else at
                # A launcher started after the last record (a new pod) ends the restart
                # there; one that was already running (torchrun restarting its workers
                # in the same pod) forms the new group from the last record on.
                began = max(agent, previous) if agent is not None else at
                self.seconds["restart"] += max(0.0, min(began, at) - previous)
            self.seconds["rendezvous"] += max(0.0, at - began)
            self._awaiting_first_step = at
        elif event in ("step", "evaluation", "checkpoint", "start"):
            stage, step = str(record.get("stage", "")), int(record.get("step", 0))
            seconds = max(0.0, float(record.get("seconds", 0.0)))
            if event == "start":
                self._redo_after(stage, step)
            elif event == "step":
                if self._awaiting_first_step is not None:
                    began = at - seconds
                    self.seconds["setup"] += max(0.0, began - self._awaiting_first_step)
                    self._awaiting_first_step = None
                self.seconds["productive"] += seconds
                self._steps[(stage, step)] = seconds
            elif event == "checkpoint":
                self.seconds["checkpoint"] += seconds
                self._checkpointed(stage, step)
            else:
                self.seconds["evaluation"] += seconds
        else:
            return
        self.last_time = at if self.last_time is None else max(self.last_time, at)

    def _redo_after(self, stage: str, step: int) -> None:
        for key in [k for k in self._steps if k[0] == stage and k[1] > step]:
            lost = self._steps.pop(key)
            self.seconds["productive"] -= lost
            self.seconds["redone"] += lost

    def _checkpointed(self, stage: str, step: int) -> None:
        saved = self._checkpoints.setdefault(stage, [])
        saved.append(step)
        if len(saved) > 2:
            safe = saved.pop(0)
            for key in [k for k in self._steps if k[0] == stage and k[1] <= safe]:
                del self._steps[key]

    @classmethod
    def of_file(cls, path: Path) -> Tally:
        """The tally of a whole ledger file (empty when there is none)."""
        tally = cls()
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    tally.fold(json.loads(line))
                except ValueError:
                    continue
        return tally


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Breakdown:
    """A job's wall time split into KINDS; `ratio` is productive / wall."""

    wall_seconds: float
    seconds: dict[str, float]

    @property
    def ratio(self) -> float:
        return (
            self.seconds.get("productive", 0.0) / self.wall_seconds
            if self.wall_seconds > 0
            else 0.0
        )


def breakdown(
    trainer_seconds: dict[str, float],
    *,
    first_launch: float | None,
    created: float | None,
    end: float,
) -> Breakdown:
    """Split the wall time from `created` (or the first launch) to `end` into KINDS.

    `trainer_seconds` are a Tally's (or their exported copy); scheduling is the wait from
    `created` to the first launch; `other` takes what no record explains, never below 0
    (a clock a little behind another's must not make time negative)."""
    start = created if created is not None else first_launch
    if start is None:
        start = end
    seconds = {k: max(0.0, float(trainer_seconds.get(k, 0.0))) for k in TRAINER_KINDS}
    seconds["scheduling"] = (
        max(0.0, first_launch - start) if first_launch is not None else max(0.0, end - start)
    )
    wall = max(0.0, end - start)
    explained = sum(seconds.values())
    wall = max(wall, explained)
    seconds["other"] = wall - explained
    return Breakdown(wall_seconds=wall, seconds=seconds)


def describe(result: Breakdown) -> str:
    """One line for people: `goodput 87.1 % of 5m12s (productive 4m32s, ...)`."""
    parts = ", ".join(f"{k} {_duration(v)}" for k, v in result.seconds.items() if v >= 0.05)
    return f"goodput {100 * result.ratio:.1f} % of {_duration(result.wall_seconds)} ({parts})"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
