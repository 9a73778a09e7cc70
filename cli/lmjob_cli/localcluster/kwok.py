"""Fake nodes for scheduling tests: kwok (kubernetes-sigs/kwok, built by scripts/build-k8s)
keeps Nodes that carry its annotation Ready and plays the kubelet for the pods bound to them
(Running, then gone when deleted), without running anything.

Each fake node is tainted so that only pods tolerating it land there: a test's fake GPU
capacity never attracts another test's pods.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lmjob_cli.localcluster.binaries import find_binaries
from lmjob_cli.localcluster.controlplane import Component, ControlPlane, ControlPlaneError
from lmjob_cli.localcluster.node import build_capacity

log = logging.getLogger(__name__)

ANNOTATION = "kwok.x-k8s.io/node"
TAINT = {"key": ANNOTATION, "value": "fake", "effect": "NoSchedule"}
TOLERATION = {"key": ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}
"""What a pod needs to be placed on a fake node."""


def build_fake_node(name: str, *, gpus: int, cpus: int = 64, memory: int = 512 * 2**30) -> dict:
    """A Node kwok takes over: its annotation, its taint, and the given capacity."""
    capacity = build_capacity(gpus=gpus, cpus=cpus, memory=memory)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {ANNOTATION: "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [TAINT]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class Kwok:
    """One kwok process against a control plane, managing the nodes with its annotation."""

    def __init__(self, plane: ControlPlane, state_dir: Path) -> None:
        self.plane = plane
        self.state_dir = Path(state_dir)
        self.component: Component | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kwok.log"

    def start(self) -> None:
        binary = find_binaries(["kwok"])["kwok"]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            f"--kubeconfig={self.plane.kubeconfig}",
            f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
            # Its default config path is under $HOME: never read a user's.
            f"--config={self.state_dir / 'kwok.yaml'}",
            "--cidr=10.244.0.0/16",
            "--node-ip=10.0.0.1",
        ]
        (self.state_dir / "kwok.yaml").write_text("")
        self.component = Component("kwok", argv, self.log_path)
        self.component.start(bind_to_parent=True)

    def stop(self) -> None:
        if self.component is not None:
            self.component.stop()

    def check(self) -> None:
        if self.component is None:
            raise ControlPlaneError("kwok was not started")
        self.component.check()

    def wait_ready(self, core: Any, name: str, timeout: float = 30) -> None:
        """Wait until kwok reports node `name` Ready (the scheduler skips it before)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            node = core.read_node(name)
            conditions = node.status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"kwok did not make node {name} Ready; log {self.log_path}")
            time.sleep(0.1)
