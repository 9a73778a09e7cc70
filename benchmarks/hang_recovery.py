"""What one hang costs a job: time from the hang to training again, and goodput with and without.

    python benchmarks/hang_recovery.py [--timeout 30] [--resync 15] [--freeze-at 300] [--out DIR]

The Shakespeare example's training (examples/shakespeare-cpu.yaml: its model, batch,
schedule and checkpoint interval of 250 steps with async saves; 400 steps, no compression or
exports) as a LargeModelJob on a real control plane, run by the operator (its own process,
`LMJOB_RESYNC_SECONDS` = --resync, the chart's default 15 s: the progress-scrape period) and
a process kubelet running the worker pod's real torchrun (2 processes), as the e2e tests do.
`training.hang.timeoutSeconds` = --timeout. Two runs side by side:

- `baseline`: no hang;
- `hang`: at step --freeze-at, rank 1's process is frozen with SIGSTOP (a rank stuck in a
  driver or on a dead NIC); rank 0 waits in its next collective. The operator sees rank 0's
  watchdog pass the timeout, reports `Stalled`, restarts the group (the frozen process
  SIGKILLed after the stall's grace period), which resumes from the step-250 checkpoint.

Per hang: detection (freeze to `Stalled` True, as the test polls status every 0.1 s), to
the restarted group's first step (from history.jsonl: the first step finished after the
freeze by the new incarnation), and the steps redone. Per run: wall time from creation to
`Succeeded` and status.goodput. Without hang detection the job would wait for torch's
collective timeout (30 min for gloo and NCCL), then fail the step and restart: the
comparison line says what that would have cost instead.
Prints a markdown table (also `<out>/results.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from harness import REPO, SHAKESPEARE, machine, use_checkout

use_checkout()

# ruff: noqa: E402 (the checkout's packages come first on sys.path, above)
from lmjob_cli.localcluster.controlplane import ControlPlane, Options
from lmjob_cli.localcluster.node import build_capacity
from lmjob_cli.localcluster.process_kubelet import ProcessKubelet
from tests.operator.harness import (
    OPERATOR_ENV,
    OperatorProcess,
    condition,
    create_job,
    free_port,
    job_status,
    on_node,
    provision_operator_account,
    wait_for,
)
from tests.support.claims import bind_host_claim
from tests.support.clients import build_kube_clients, wait_for_service_account
from tests.support.processes import rank_pid

EXAMPLE = REPO / "examples" / "shakespeare-cpu.yaml"
TORCH_COLLECTIVE_TIMEOUT = 1800.0  # torch.distributed's default for gloo and NCCL


def job_spec(node: str, steps: int, timeout: int, port: int) -> dict[str, Any]:
    example = yaml.safe_load(EXAMPLE.read_text())["spec"]
    training = example["training"]
    training["data"] = {**training["data"], "source": str(SHAKESPEARE)}
    training["steps"] = steps
    training["evaluation"] = {"everySteps": steps, "steps": 8}
    training["hang"] = {"timeoutSeconds": timeout}
    return {
        "workers": {"replicas": 1, "procsPerWorker": 2, "template": on_node(node)},
        "training": training,
        "metrics": {"port": port},
        "storage": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}},
    }


def history(storage: Path) -> list[dict[str, Any]]:
    path = storage / "train" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def last_step(storage: Path) -> int:
    steps = [h["step"] for h in history(storage) if "loss" in h]
    return steps[-1] if steps else 0


def run(
    name: str, plane: ControlPlane, kube: Any, account: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    namespace = f"hang-bench-{name}"
    kube.core.create_namespace({"metadata": {"name": namespace}})
    wait_for_service_account(kube.core, namespace)
    operator = OperatorProcess(
        account,
        [namespace],
        work / f"{name}-operator.log",
        {**OPERATOR_ENV, "LMJOB_RESYNC_SECONDS": str(args.resync)},
    )
    kubelet = ProcessKubelet(
        kube.core,
        work / f"{name}-node",
        node_name=namespace,
        capacity=build_capacity(gpus=0),
        taint=True,
    )
    operator.start()
    kubelet.start()
    try:
        storage = kubelet.claim_dir("ckpt", namespace)
        bind_host_claim(kube.core, namespace, storage)
        started = time.time()
        spec = job_spec(namespace, args.steps, args.timeout, free_port())
        create_job(kube.custom, namespace, "shakespeare", spec)
        result: dict[str, Any] = {"run": name}
        if name == "hang":
            wait_for(lambda: last_step(storage) >= args.freeze_at, 900, 0.05, "the freeze step")
            pid = rank_pid(kubelet, "shakespeare-worker-0", 1)
            os.kill(pid, signal.SIGSTOP)
            frozen = time.time()

            def stalled() -> bool:
                s = job_status(kube.custom, namespace, "shakespeare")
                return (condition(s, "Stalled") or {}).get("status") == "True"

            wait_for(stalled, args.timeout + 4 * args.resync + 60, 0.1, "Stalled")
            detected = time.time()
            # The last step done before the hang (rank 0 may finish the one rank 1 had done
            # its part of when it froze).
            frozen_step = max(
                h["step"] for h in history(storage) if "loss" in h and h["time"] <= detected
            )
            wait_for(
                lambda: any(
                    "loss" in h and h["time"] > detected and h["step"] <= frozen_step
                    for h in history(storage)
                ),
                600,
                0.1,
                "a step of the restarted group",
            )
            again = min(
                h["time"]
                for h in history(storage)
                if "loss" in h and h["time"] > detected and h["step"] <= frozen_step
            )
            resumed_at = min(
                h["step"] for h in history(storage) if "loss" in h and h["time"] > detected
            )
            result.update(
                frozen_step=frozen_step,
                detection_seconds=round(detected - frozen, 1),
                hang_to_training_seconds=round(again - frozen, 1),
                steps_redone=frozen_step - resumed_at + 1,
            )
        final = wait_for(
            lambda: (
                (s := job_status(kube.custom, namespace, "shakespeare")).get("phase")
                in ("Succeeded", "Failed")
                and s
            ),
            1800,
            0.5,
            "the job's end",
        )
        result.update(
            phase=final["phase"],
            restarts=final.get("restarts", 0),
            wall_seconds=round(time.time() - started, 1),
            goodput=final.get("goodput"),
        )
        return result
    finally:
        kubelet.stop()
        operator.stop()
        with contextlib.suppress(Exception):
            kube.core.delete_namespace(namespace)
            kube.core.delete_persistent_volume(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=int, default=30, help="training.hang.timeoutSeconds")
    parser.add_argument("--resync", type=float, default=15.0, help="LMJOB_RESYNC_SECONDS")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--freeze-at", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hang-bench-"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(work / "control-plane", Options())
    plane.start()
    try:
        kube = build_kube_clients(plane.kubeconfig)
        account = provision_operator_account(plane, work / "operator.kubeconfig")
        results = [run(name, plane, kube, account, work, args) for name in ("baseline", "hang")]
    finally:
        plane.stop()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}")
    print(f"timeout {args.timeout} s, resync {args.resync} s, {args.steps} steps\n")
    print("| run | phase | restarts | wall s | goodput | productive s | redone s | restart s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        g = r.get("goodput") or {"ratio": 0, "seconds": {}}
        s = g["seconds"]
        print(
            f"| {r['run']} | {r['phase']} | {r['restarts']} | {r['wall_seconds']} | "
            f"{100 * g['ratio']:.1f} % | {s.get('productive', 0)} | {s.get('redone', 0)} | "
            f"{s.get('restart', 0)} |"
        )
    hang = results[1]
    if "detection_seconds" in hang:
        print(
            f"\nhang at step {hang['frozen_step']}: Stalled after {hang['detection_seconds']} s, "
            f"training again after {hang['hang_to_training_seconds']} s "
            f"(restart and resume {hang['hang_to_training_seconds'] - hang['detection_seconds']:.1f} s) "
            f"({hang['steps_redone']} steps redone); without hang detection: "
            f"{TORCH_COLLECTIVE_TIMEOUT:.0f} s of torch's collective timeout before any restart "
            f"({TORCH_COLLECTIVE_TIMEOUT / hang['hang_to_training_seconds']:.0f}x longer)"
        )
        base, hung = results[0]["goodput"], hang["goodput"]
        if base and hung:
            print(f"goodput with one hang / without: {hung['ratio'] / base['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
