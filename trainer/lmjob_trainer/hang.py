"""A hang watchdog per rank: when the training step stops advancing, save this rank's stacks.

A job rarely dies cleanly: one rank stuck (a dead NIC, a frozen process) leaves every other
rank waiting in a collective, burning accelerators with no error until torch's 30-minute
collective timeout. Each rank runs a `HangWatchdog` thread that the loop feeds a heartbeat
after every step. When no heartbeat came for the timeout, it writes every Python thread's
stack of this rank (faulthandler) to `<storage>/hangs/<stage>-step-<next step>/rank-<r>.txt`
and, on CUDA, torch's NCCL flight-recorder dump beside it where torch has one. It exports
`lmjob_trainer_stalled_seconds` throughout, and the timeout in effect once armed
(`lmjob_trainer_hang_timeout_seconds`). The ranks that still run write their stacks; the
frozen one cannot, and its absence names it. It never stops the process: the operator
compares the two series and restarts the group (docs/operator.md, "Hangs").

The timeout (`training.hang.timeoutSeconds`): as set, or derived: `max(5 min, 3 × the
longest step-to-step interval seen in the stage)`. The interval includes checkpoint saves
and evaluations, which run between two heartbeats, so the derived timeout is never shorter
than either; it is armed from the stage's second step on (start-up, resume and the first
step's warm-up take unknown time and do not count). An explicit timeout is armed from the
stage's start.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from lmjob_api.hangs import hang_folder

log = logging.getLogger(__name__)

DERIVED_FLOOR_SECONDS = 300.0
DERIVED_FACTOR = 3.0


def derived_timeout(longest_interval: float | None) -> float | None:
    """The default timeout from the longest step-to-step interval seen (None: not armed)."""
    if longest_interval is None:
        return None
    return max(DERIVED_FLOOR_SECONDS, DERIVED_FACTOR * longest_interval)


def hang_dir(root: Path, stage: str, step: int) -> Path:
    """Where every rank's stacks of one hang go: one folder per stuck step."""
    return Path(hang_folder(root, stage, step))


def peer_states() -> str:
    """This pod's worker processes (this one's siblings under torchrun's agent, from Linux's
    /proc) with their global rank and scheduler state: a rank that cannot save its own
    stacks (stopped, `T`; in uninterruptible I/O, `D`) is named here by another. One comment
    line per process; empty where /proc is not there."""
    lines = []
    try:
        parent = os.getppid()
        for entry in sorted(Path("/proc").iterdir(), key=lambda e: e.name):
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) != parent:
                    continue
                env = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            rank = next((v[5:].decode() for v in env if v.startswith(b"RANK=")), "?")
            state = _STATES.get(fields[0], fields[0])
            lines.append(f"# pod process: rank {rank} pid {entry.name} state {fields[0]} ({state})")
    except OSError:
        return ""
    return "".join(line + "\n" for line in lines)


_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "uninterruptible wait",
    "T": "stopped",
    "t": "traced",
    "Z": "zombie",
}


class HangWatchdog:
    """One daemon thread; `beat(step)` after each completed step, `close()` at the stage's end."""

    def __init__(
        self,
        root: Path,
        stage: str,
        rank: int,
        timeout: float | None,
        *,
        report: Callable[[str, float, float | None], None] = lambda stage, seconds, timeout: None,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root, self.stage, self.rank = root, stage, rank
        self.explicit_timeout = timeout
        self._report, self._poll, self._clock = report, poll_seconds, clock
        self._lock = threading.Lock()
        self._last = clock()
        self._step = 0
        self._longest: float | None = None
        self._beats = 0
        self._dumped_for: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmjob-hang-watchdog", daemon=True)

    def start(self, step: int) -> HangWatchdog:
        self._step, self._last = step, self._clock()
        self._thread.start()
        return self

    def beat(self, step: int) -> None:
        """The step `step` completed (and whatever evaluation or checkpoint followed it)."""
        now = self._clock()
        with self._lock:
            if self._beats:  # the first interval holds start-up and warm-up: not a step's
                interval = now - self._last
                self._longest = max(self._longest or 0.0, interval)
            self._beats += 1
            self._last, self._step = now, step

    @property
    def timeout(self) -> float | None:
        if self.explicit_timeout is not None:
            return self.explicit_timeout
        return derived_timeout(self._longest)

    def check(self) -> Path | None:
        """One look (the thread's body; callable from tests): export the stalled seconds and,
        past the timeout, dump once per stuck step. Returns the file written, if any."""
        with self._lock:
            stalled, step = self._clock() - self._last, self._step
        timeout = self.timeout
        self._report(self.stage, stalled, timeout)
        if timeout is None or stalled < timeout or self._dumped_for == step:
            return None
        self._dumped_for = step
        return self._dump(step + 1, stalled)

    def _dump(self, stuck_step: int, stalled: float) -> Path | None:
        folder = hang_dir(self.root, self.stage, stuck_step)
        path = folder / f"rank-{self.rank}.txt"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:  # a second hang at the same step appends
                f.write(
                    f"# lmjob hang watchdog: rank {self.rank}, stage {self.stage}, step "
                    f"{stuck_step} not done after {stalled:.1f}s (timeout {self.timeout:.1f}s), "
                    f"{datetime.now(UTC).isoformat()}\n"
                )
                f.write(peer_states())
                f.flush()
                faulthandler.dump_traceback(f, all_threads=True)
            self._dump_flight_recorder(folder)
        except OSError as err:
            log.warning("hang stacks not saved", extra={"path": str(path), "error": str(err)})
            return None
        log.error(
            "step not advancing: stacks saved",
            extra={"step": stuck_step, "stalled_s": round(stalled, 1), "path": str(path)},
        )
        return path

    def _dump_flight_recorder(self, folder: Path) -> None:
        """torch's NCCL flight recorder (TORCH_NCCL_TRACE_BUFFER_SIZE > 0): the collectives
        each rank last entered, which names the one a stuck rank never joined. CUDA only;
        not exercised by the CPU test suite."""
        if not torch.cuda.is_available():
            return
        try:
            from torch._C._distributed_c10d import _dump_nccl_trace

            trace = _dump_nccl_trace()
        except Exception as err:  # a private torch API: whatever it raises, stacks come first
            log.info("no NCCL flight recorder dump", extra={"error": str(err)})
            return
        (folder / f"rank-{self.rank}.nccl-trace.pkl").write_bytes(trace)

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.check()
            except Exception:  # a watchdog that died silently would watch nothing
                log.exception("hang watchdog check failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
