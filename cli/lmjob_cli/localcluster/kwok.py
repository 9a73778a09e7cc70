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

import yaml

from lmjob_cli.localcluster.binaries import find_binaries
from lmjob_cli.localcluster.controlplane import Component, ControlPlane, ControlPlaneError
from lmjob_cli.localcluster.node import build_capacity

log = logging.getLogger(__name__)

ANNOTATION = "kwok.x-k8s.io/node"
TAINT = {"key": ANNOTATION, "value": "fake", "effect": "NoSchedule"}
TOLERATION = {"key": ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}
"""What a pod needs to be placed on a fake node."""


# kwok acts only through Stages (its own resource, read here from its config file): the few
# a scheduling test needs. A node turns Ready and keeps reporting so (else the node lifecycle
# controller taints it unreachable); a bound pod turns Running with an IP; a deleted pod goes.
_NODE = {"apiGroup": "v1", "kind": "Node"}
_POD = {"apiGroup": "v1", "kind": "Pod"}
_READY_STATUS = '.status.conditions.[] | select( .type == "Ready" ) | .status'
_NODE_CONDITIONS = """{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ or $.metadata.creationTimestamp $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
phase: Running
"""
_POD_RUNNING = """{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: true, restartCount: 0,
   state: {running: {startedAt: {{ $now | Quote }}}}}
{{ end }}
{{ with PodIPWith .spec.nodeName false ( or .metadata.uid "" ) .metadata.name .metadata.namespace }}
podIP: {{ . | Quote }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _stage(name: str, ref: dict, match: list[dict], then: dict, **extra: Any) -> dict:
    spec = {"resourceRef": ref, "selector": {"matchExpressions": match}, "next": then, **extra}
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


STAGES = [
    _stage(
        "node-ready",
        _NODE,
        [{"key": _READY_STATUS, "operator": "NotIn", "values": ["True"]}],
        {"statusTemplate": _NODE_CONDITIONS},
    ),
    _stage(
        "node-heartbeat",
        _NODE,
        [{"key": _READY_STATUS, "operator": "In", "values": ["True"]}],
        {"statusTemplate": _NODE_CONDITIONS},
        delay={"durationMilliseconds": 10000},
        immediateNextStage=True,
    ),
    _stage(
        "pod-running",
        _POD,
        [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
        ],
        {"statusTemplate": _POD_RUNNING},
    ),
    _stage(
        "pod-delete",
        _POD,
        [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
        {"delete": True},
    ),
]


def build_fake_node(
    name: str,
    *,
    gpus: int,
    cpus: int = 64,
    memory: int = 512 * 2**30,
    pods: int | None = None,
    tainted: bool = True,
) -> dict:
    """A Node kwok takes over: its annotation, its taint (unless `tainted` is false: a
    cluster of fake nodes only, as in a benchmark), and the given capacity."""
    capacity = build_capacity(gpus=gpus, cpus=cpus, memory=memory)
    if pods is not None:
        capacity["pods"] = str(pods)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {ANNOTATION: "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [TAINT] if tainted else []},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class Kwok:
    """One kwok process against a control plane, managing the nodes with its annotation."""

    def __init__(
        self,
        plane: ControlPlane,
        state_dir: Path,
        *,
        cidr: str = "10.244.0.0/16",
        node_ip: str = "10.0.0.1",
    ) -> None:
        """`cidr`/`node_ip`: the pod and node addresses kwok hands out (a benchmark puts them
        on loopback, where a scrape of a fake pod is refused at once instead of timing out)."""
        self.plane = plane
        self.state_dir = Path(state_dir)
        self.cidr, self.node_ip = cidr, node_ip
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
            f"--cidr={self.cidr}",
            f"--node-ip={self.node_ip}",
        ]
        (self.state_dir / "kwok.yaml").write_text(yaml.safe_dump_all(STAGES))
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
