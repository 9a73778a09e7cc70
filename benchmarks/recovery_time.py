"""Time from a killed worker to the next completed training step (CPU, 2 processes).

    python benchmarks/recovery_time.py [--kills 2]

The trainer runs under torchrun with restarts, its rendezvous served by lmjob's standalone
store (as the operator deploys it). After each complete checkpoint the benchmark SIGKILLs
one worker and measures until the restarted group logs its next finished step: failure
detection, tear-down, re-rendezvous, process start and imports, data, checkpoint load and
one step. Goal ≤ 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from harness import SHAKESPEARE, machine, scratch_dir, worker_env

from lmjob_trainer.local_run import TORCHRUN_ENV

TRAINING = {
    "model": {"layers": 4, "heads": 4, "hidden": 128, "seqLen": 64},
    "data": {"source": str(SHAKESPEARE)},
    "schedule": {"warmupSteps": 10},
    "steps": 100_000,
    "batch": {"microBatchSize": 16, "globalBatchSize": 32},
    "evaluation": {"everySteps": 1_000_000, "steps": 1},
    "checkpoint": {"everySteps": 20, "keep": 2, "async": True},
}


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _history(root: Path) -> list[dict]:
    path = root / "train" / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if '"loss"' in line]


def _wait(predicate: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=2)
    args = parser.parse_args()
    print(machine())
    work = scratch_dir("recovery")
    root = work / "run"
    config = work / "trainer.yaml"
    config.write_text(yaml.safe_dump({"jobName": "bench", "training": TRAINING}))
    env = worker_env(**TORCHRUN_ENV)  # as the operator and `lmjob run` set it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = subprocess.Popen(
        [sys.executable, "-m", "lmjob_trainer.rendezvous_store", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert store.stderr is not None and "serving" in store.stderr.readline()
    launcher = subprocess.Popen(
        [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
            f"--max-restarts={args.kills}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=recovery", "--rdzv-conf=is_host=false",
            f"--log-dir={work / 'logs'}", "--redirects=3",
            "-m", "lmjob_trainer", "--config", str(config), "--checkpoint-dir", str(root),
        ],
        env=env,
    )  # fmt: skip
    samples = []
    try:
        for kill in range(args.kills):
            done = max((r["step"] for r in _history(root)), default=0)
            # Kill a few steps after the next checkpoint (every 20 steps).
            target = (done // 20 + 1) * 20 + 3
            _wait(lambda t=target: max((r["step"] for r in _history(root)), default=0) >= t)
            workers = _children(launcher.pid)
            killed_at = time.time()
            os.kill(workers[-1], signal.SIGKILL)
            _wait(lambda t=killed_at: any(r["time"] > t for r in _history(root)[-3:]))
            first = next(r for r in _history(root) if r["time"] > killed_at)
            samples.append(first["time"] - killed_at)
            print(
                f"kill {kill + 1}: next step ({first['step']}) finished {samples[-1]:.1f} s later"
            )
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=180)
        store.terminate()
        store.wait(timeout=30)
    print(
        f"median time from kill to the next completed step: {statistics.median(samples):.1f} s (goal <= 30 s)"
    )


if __name__ == "__main__":
    main()
