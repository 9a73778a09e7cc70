"""One local node as a long-running process: a Node with this machine's capacity whose pods,
as bound by kube-scheduler, run as processes (`python -m lmjob_cli.localcluster.node`).

`lmjob cluster up` starts one per node, detached; SIGTERM (`lmjob cluster down`) stops its
pods' processes, deletes its Node and exits. Each node also runs the provisioner of the
cluster's StorageClass (storage.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

MODULE = "lmjob_cli.localcluster.node"
GPU_RESOURCE = "nvidia.com/gpu"
MAX_PODS = 110  # the kubelet's default


def _memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


def build_capacity(*, gpus: int, cpus: int | None = None, memory: int | None = None) -> dict:
    """The Node's capacity (and allocatable): this machine's CPUs and memory unless given, and
    `gpus` of nvidia.com/gpu, which only the scheduler looks at: pods run on CPU either way."""
    capacity = {
        "cpu": str(cpus or os.cpu_count() or 1),
        "memory": str(memory or _memory_bytes()),
        "pods": str(MAX_PODS),
    }
    if gpus:
        capacity[GPU_RESOURCE] = str(gpus)
    return capacity


def node_root(state_dir: Path, name: str) -> Path:
    """Where node `name` keeps its pods' folders, logs and claim folders."""
    return state_dir / "nodes" / name


def run_node(kubeconfig: Path, state_dir: Path, name: str, capacity: dict) -> None:
    """Serve node `name` until SIGTERM or SIGINT."""
    from kubernetes import client, config

    from lmjob_cli.localcluster.process_kubelet import ProcessKubelet
    from lmjob_cli.localcluster.storage import Provisioner

    api = config.new_client_from_config(config_file=str(kubeconfig))
    kubelet = ProcessKubelet(
        client.CoreV1Api(api), node_root(state_dir, name), node_name=name, capacity=capacity
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kubelet.start()
    provisioner = Provisioner(client.CoreV1Api(api), state_dir).start()
    logging.getLogger(__name__).info("node %s up with capacity %s", name, capacity)
    stop.wait()
    provisioner.stop()
    kubelet.stop()
    api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--state-dir", type=Path, required=True, help="the cluster's folder")
    parser.add_argument("--name", required=True, help="the Node's name")
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu to advertise")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    state_dir = args.state_dir.resolve()
    capacity = build_capacity(gpus=args.gpus)
    run_node(state_dir / "admin.kubeconfig", state_dir, args.name, capacity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
