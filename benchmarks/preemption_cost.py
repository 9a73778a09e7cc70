"""What a preemption costs a job: lmjob's save on SIGTERM vs a periodic-checkpoint-only restart.

    python benchmarks/preemption_cost.py [--preemptions 4] [--every 250] [--out DIR]

The Shakespeare example's model, batch and checkpoint interval (examples/shakespeare-cpu.yaml:
checkpoint.everySteps 250, asynchronous saves) under the entrypoint the operator gives a
worker pod (`python -m lmjob_trainer.launch -- <torchrun args>`, 2 processes). Each run is
preempted `--preemptions` times and started again, as Kueue re-admits an evicted job; the
preemptions fall at offsets spread evenly across the checkpoint interval (interval i, offset
(i + 0.5) / n of it), the same steps in both variants:

- `lmjob`: SIGTERM to the container's main process, as a kubelet sends it when Kueue evicts
  the pod or a node drains; the trainer saves the step in flight and exits (the benchmark
  SIGKILLs what is left after a 30 s grace period, as a kubelet would);
- `periodic`: the same moment, but the processes end without saving (SIGKILL to all):
  what a job whose script only checkpoints every N steps gets on preemption — Kubeflow
  PyTorchJob's behaviour with such a script — resuming from its last periodic checkpoint.

Per preemption, from the run's history.jsonl: the steps done twice, and the seconds from the
signal to the first step past the last one done before it (the stop's whole cost: the save,
process start and imports, rendezvous, checkpoint load, and the redone steps).
Prints a markdown table (also `<out>/results.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from harness import REPO, SHAKESPEARE, machine, scratch_dir, worker_env

from lmjob_trainer.launch import descendants
from lmjob_trainer.local_run import TORCHRUN_ENV

EXAMPLE = REPO / "examples" / "shakespeare-cpu.yaml"
GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds


def training(every: int) -> dict[str, Any]:
    """The example's training section, endless, with no evaluation in the way."""
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]["training"]
    spec["data"] = {**spec["data"], "source": str(SHAKESPEARE)}
    spec["steps"] = 1_000_000
    spec["evaluation"] = {"everySteps": 1_000_000, "steps": 1}
    spec["checkpoint"] = {**spec["checkpoint"], "everySteps": every}
    return spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def history(root: Path) -> list[dict[str, Any]]:
    path = root / "train" / "history.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if "loss" in row:
                rows.append(row)
    return rows


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def start(config: Path, root: Path, logs: Path) -> subprocess.Popen[bytes]:
    """The worker pod's command, in a session of its own (a container)."""
    cmd = [
        sys.executable, "-m", "lmjob_trainer.launch", "--",
        "--nnodes=1", "--nproc-per-node=2", "--standalone",
        "-m", "lmjob_trainer", "--config", str(config), "--checkpoint-dir", str(root),
        "--metrics-port", str(free_port()),
    ]  # fmt: skip
    out = logs.open("ab")
    return subprocess.Popen(
        cmd,
        env=worker_env(**TORCHRUN_ENV, OMP_NUM_THREADS="1"),
        stdout=out,
        stderr=out,
        start_new_session=True,
    )


def kill_all(proc: subprocess.Popen[bytes]) -> None:
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


def stop(proc: subprocess.Popen[bytes], variant: str) -> None:
    if variant == "periodic":
        kill_all(proc)
        return
    proc.send_signal(signal.SIGTERM)  # the container's main process, as a kubelet does
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        kill_all(proc)


def run_variant(out: Path, variant: str, preemptions: int, every: int) -> list[dict[str, Any]]:
    work = out / variant
    work.mkdir(parents=True, exist_ok=True)
    root, config, logs = work / "run", work / "trainer.yaml", work / "launch.log"
    config.write_text(
        yaml.safe_dump({"jobName": f"preempt-{variant}", "training": training(every)})
    )
    samples = []
    proc = start(config, root, logs)
    try:
        for i in range(preemptions):
            target = (i + 1) * every + int(every * (i + 0.5) / preemptions)
            wait(lambda t=target: len(history(root)) and history(root)[-1]["step"] >= t,
                 3600, f"step {target}")  # fmt: skip
            done = history(root)[-1]["step"]
            signalled = time.time()
            stop(proc, variant)
            before = len(history(root))
            proc = start(config, root, logs)
            wait(lambda d=done, b=before: any(r["step"] > d for r in history(root)[b:]),
                 1800, f"a step past {done}")  # fmt: skip
            after = history(root)[before:]
            redone = [r["step"] for r in after if r["step"] <= done]
            first_new = next(r for r in after if r["step"] > done)
            sample = {
                "variant": variant,
                "preemption": i + 1,
                "stepsDoneBefore": done,
                "resumedAt": min(redone, default=done + 1),
                "stepsRedone": len(redone),
                "secondsLost": round(first_new["time"] - signalled, 1),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    finally:
        kill_all(proc)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preemptions", type=int, default=4)
    parser.add_argument("--every", type=int, default=250, help="checkpoint.everySteps")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = (args.out or scratch_dir("preemption")).resolve()
    results = []
    for variant in ("lmjob", "periodic"):
        results += run_variant(out, variant, args.preemptions, args.every)
    lines = [
        f"machine: {machine()}",
        f"checkpoint.everySteps {args.every}, {args.preemptions} preemptions per variant",
        "",
        "| variant | preemption | steps done before | resumed at | steps redone | seconds lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['preemption']} | {r['stepsDoneBefore']} | {r['resumedAt']} "
            f"| {r['stepsRedone']} | {r['secondsLost']} |"
        )
    lines.append("")
    for variant in ("lmjob", "periodic"):
        mine = [r for r in results if r["variant"] == variant]
        lines.append(
            f"{variant}: mean {statistics.mean(r['stepsRedone'] for r in mine):.1f} steps redone, "
            f"median {statistics.median(r['secondsLost'] for r in mine):.1f} s lost per preemption"
        )
    text = "\n".join(lines)
    print(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
