"""Finding a torchrun worker process of a process-kubelet pod, to freeze or kill it the way a
hung or crashed rank would be (the hang tests and benchmarks/hang_recovery.py)."""

from __future__ import annotations

from pathlib import Path

from lmjob_cli.localcluster.process_kubelet import ProcessKubelet
from lmjob_trainer.launch import descendants


def rank_pid(kubelet: ProcessKubelet, pod: str, rank: int) -> int:
    """The pid of torchrun's worker process of global rank `rank` in pod `pod` (its
    environment says RANK; its own children, if any, inherit it and are skipped)."""
    [running] = [r for r in kubelet.pods.values() if r.name == pod]

    def rank_of(pid: int) -> int | None:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        value = next((e[5:] for e in env if e.startswith(b"RANK=")), None)
        return int(value) if value is not None else None

    found = sorted(p for p in descendants(running.proc.pid) if rank_of(p) == rank)
    if not found:
        raise LookupError(f"no process of rank {rank} under {pod}")
    return found[0]  # its children (data loaders, compile workers) start after it
