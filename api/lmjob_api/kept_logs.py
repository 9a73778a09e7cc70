"""The kept record of workers' logs, the `<job>-logs` ConfigMap: its key names, its bounds and
which key `lmjob logs` shows. One home for the operator that writes it and the CLI that reads it.

The operator reads a worker pod's log tail before it deletes the pod (group restart, failure,
cleanPodPolicy, scale-down, suspension) and when the worker ends, and keeps it under the key
`worker-<i>.attempt-<round>.log` (`.failed.log` when the worker failed), where `<round>` is the
rendezvous round the pod joined (status.restarts when it was created). The ConfigMap is owned
by the job: it goes with the job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A worker pod's attempt: the rendezvous round it joined (the operator's label on it).
ATTEMPT_LABEL = "lmjob.dev/rendezvous-round"
# One tail at most; fewer bytes each when the job has many workers (tail_bytes).
TAIL_BYTES = 64 * 1024
MIN_TAIL_BYTES = 4 * 1024
# The whole record: a ConfigMap's data may hold 1 MiB, and its metadata (managedFields
# lists every key) needs room too.
TOTAL_BYTES = 768 * 1024
# Lines asked of the API server (pods/log tailLines); the byte bound is applied after.
TAIL_LINES = 2000
DROPPED_MARK = "[lmjob: earlier lines not kept]\n"

_KEY = re.compile(r"^worker-(?P<worker>\d+)\.attempt-(?P<attempt>\d+)(?P<failed>\.failed)?\.log$")


def kept_logs_name(job_name: str) -> str:
    return f"{job_name}-logs"


@dataclass(frozen=True)
class KeptKey:
    """One kept tail: which worker, which attempt (rendezvous round), whether it failed."""

    worker: int
    attempt: int
    failed: bool = False

    @property
    def key(self) -> str:
        return f"worker-{self.worker}.attempt-{self.attempt}{'.failed' if self.failed else ''}.log"

    @property
    def keep_rank(self) -> tuple[int, bool, int]:
        """Larger is kept longer: newer attempts, then failed workers, then lower indexes."""
        return (self.attempt, self.failed, -self.worker)


def parse_key(key: str) -> KeptKey | None:
    """The KeptKey a ConfigMap key names; None for a key of another shape."""
    found = _KEY.match(key)
    if found is None:
        return None
    return KeptKey(int(found["worker"]), int(found["attempt"]), bool(found["failed"]))


def tail_bytes(num_workers: int) -> int:
    """Bytes kept of one worker's log: two attempts of every worker fit the record, each tail
    between MIN_TAIL_BYTES and TAIL_BYTES (a large job keeps its failed workers' tails first)."""
    share = TOTAL_BYTES // (2 * max(1, num_workers))
    return max(MIN_TAIL_BYTES, min(TAIL_BYTES, share))


def bound_tail(text: str, limit: int) -> str:
    """The end of `text` in at most `limit` UTF-8 bytes, starting on a line when the cut falls
    inside one, marked when something was dropped."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    room = max(0, limit - len(DROPPED_MARK.encode()))
    tail = raw[len(raw) - room :] if room else b""
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]
    return DROPPED_MARK + tail.decode("utf-8", errors="ignore")


def _size(key: str, value: str) -> int:
    return len(key.encode()) + len(value.encode("utf-8"))


def build_kept_data(
    current: Mapping[str, str], additions: Mapping[KeptKey, str], budget: int = TOTAL_BYTES
) -> dict[str, str]:
    """The record after `additions` (pure): a worker's attempt is kept under one key (a new
    tail replaces the old, failed or not), keys of another shape are dropped, and while the
    record is over `budget` the tails kept least long (KeptKey.keep_rank) go first."""
    entries: dict[tuple[int, int], tuple[KeptKey, str]] = {}
    for key, value in current.items():
        parsed = parse_key(key)
        if parsed is not None:
            entries[(parsed.worker, parsed.attempt)] = (parsed, value)
    for parsed, value in additions.items():
        entries[(parsed.worker, parsed.attempt)] = (parsed, value)
    ordered = sorted(entries.values(), key=lambda e: e[0].keep_rank, reverse=True)
    kept: dict[str, str] = {}
    used = 0
    for parsed, value in ordered:
        size = _size(parsed.key, value)
        if used + size > budget:
            break  # everything after ranks lower: dropped, oldest attempts first
        kept[parsed.key] = value
        used += size
    return kept


def select_kept(keys: Iterable[str], worker: int) -> str | None:
    """The key `lmjob logs --previous` shows for `worker`: its latest kept attempt. A tail is
    only kept once its pod has ended or is being deleted, so while a newer pod of the worker
    runs, that is the one before it: the previous round after a group restart, the same
    round after a suspension or a disrupted pod's replacement."""
    found = [k for k in (parse_key(key) for key in keys) if k is not None and k.worker == worker]
    return max(found, key=lambda k: k.attempt).key if found else None


def logs_hint(job_name: str, worker: int | None) -> str:
    """The command that shows a failed worker's kept last lines (named in the job's
    Failed and Restarting conditions)."""
    which = f" --worker {worker}" if worker else ""
    return f"lmjob logs {job_name}{which} --previous"
