"""Rank 0's goodput ledger: appends timed events to `<storage>/goodput.jsonl` and keeps the
running tally (lmjob_api.goodput) that the metrics export.

The ledger is read once when the process starts (earlier incarnations' time, so restarts
and re-done steps count) and then folded record by record as they are written. Other ranks
hold a `GoodputLedger` that does nothing, so callers need not check ranks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from lmjob_api.goodput import LEDGER, Tally
from lmjob_trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


def process_start_time(pid: int | str = "self") -> float | None:
    """When process `pid` started (Unix seconds), from Linux's /proc; None elsewhere.

    torch's import alone takes seconds; starting the clock at `main` would hide them. The
    process's age comes from its start in clock ticks since boot against /proc/uptime (both
    to 10 ms), not /proc/stat's boot time, which is whole seconds: a restart of under a
    second would otherwise read as none."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        now = time.time()
        return now - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class GoodputLedger:
    """Appends records and exports the tally (global rank 0); a no-op elsewhere."""

    def __init__(self, root: Path, metrics: TrainerMetrics, *, enabled: bool) -> None:
        self.metrics = metrics
        self.tally = Tally()
        self._file = None
        if not enabled:
            return
        path = root / LEDGER
        self.tally = Tally.of_file(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", buffering=1)
        except OSError as err:
            # Goodput is worth a warning, never a failed training run.
            log.warning("no goodput ledger", extra={"path": str(path), "error": str(err)})

    def record(self, event: str, *, at: float | None = None, **fields: Any) -> None:
        if self._file is None:
            return
        entry = {"event": event, "time": time.time() if at is None else at, **fields}
        try:
            self._file.write(json.dumps(entry) + "\n")
        except OSError as err:
            log.warning("goodput ledger write failed", extra={"error": str(err)})
        self.tally.fold(entry)
        self.metrics.record_goodput(self.tally.seconds, self.tally.first_launch)

    def launched(self) -> None:
        """This process started; its parent, the launcher (torchrun's agent), formed the
        group before that: the ledger splits the gap since its last record at the parent's
        start into restart and rendezvous."""
        started = process_start_time() or time.time()
        agent = process_start_time(os.getppid())
        self.record("launch", at=started, **({"agent": agent} if agent is not None else {}))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
