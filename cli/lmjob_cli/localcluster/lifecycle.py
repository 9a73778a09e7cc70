"""Up, down and status of a local cluster: the control plane plus its node processes, all
detached from the command that started them and found again through the state folder.

`state.json` (controlplane.py) records the control plane's components and `nodes.json` the
node processes; `nodes/<name>/` holds each node's pods (folders, logs, claims) and
`volumes/` the cluster's PersistentVolumes (storage.py), kept by `down` as disks are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmjob_cli.localcluster.binaries import REPO_ROOT
from lmjob_cli.localcluster.controlplane import ControlPlane, Options
from lmjob_cli.localcluster.node import MODULE as NODE_MODULE
from lmjob_cli.localcluster.node import node_root
from lmjob_cli.localcluster.process_kubelet import POD_DIR_ENV

log = logging.getLogger(__name__)

NODE_STOP_GRACE_S = 15.0
NODE_READY_TIMEOUT_S = 60.0
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


@dataclass
class NodeProcess:
    """One node process as `nodes.json` records it."""

    name: str
    gpus: int
    pid: int
    log: str


def node_name(index: int) -> str:
    return f"local-{index}"


def _nodes_file(state_dir: Path) -> Path:
    return state_dir / "nodes.json"


def load_nodes(state_dir: Path) -> list[NodeProcess]:
    try:
        return [NodeProcess(**n) for n in json.loads(_nodes_file(state_dir).read_text())]
    except (OSError, json.JSONDecodeError, TypeError):
        return []


def _save_nodes(state_dir: Path, nodes: list[NodeProcess]) -> None:
    _nodes_file(state_dir).write_text(json.dumps([asdict(n) for n in nodes], indent=2))


def node_alive(node: NodeProcess) -> bool:
    """True while `node.pid` is that node's process (not a reused pid, not a zombie)."""
    try:
        stat = Path(f"/proc/{node.pid}/stat").read_text()
        argv = Path(f"/proc/{node.pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
    return not zombie and NODE_MODULE in argv and node.name in argv


def processes_under(folder: Path) -> list[int]:
    """Pids of pod processes whose pod folder lies under `folder`: a node gives each pod's
    process its folder in LMJOB_POD_DIR, which torchrun's workers inherit, so this finds every
    process of its pods even when the node process itself was killed (and never a shell that
    merely sits in a pod's folder)."""
    folder = folder.resolve()
    marker = POD_DIR_ENV.encode() + b"="
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for var in environ:
            if var.startswith(marker):
                pod_dir = Path(var[len(marker) :].decode(errors="replace"))
                if folder in pod_dir.parents:
                    found.append(int(entry.name))
                break
    return found


def _python_path() -> str:
    # The node process imports this package from wherever this process found it (a checkout
    # on PYTHONPATH or an install).
    import lmjob_cli

    package_parent = str(Path(lmjob_cli.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (package_parent, rest) if p)


def start_node(state_dir: Path, name: str, gpus: int) -> NodeProcess:
    log_path = state_dir / "logs" / f"node-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", NODE_MODULE, "--state-dir", str(state_dir), "--name", name]
    argv += ["--gpus", str(gpus)]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `lmjob cluster up`, deaf to its terminal's ^C
            env=dict(os.environ, PYTHONPATH=_python_path()),
        )
    return NodeProcess(name, gpus, proc.pid, str(log_path))


def stop_node(node: NodeProcess) -> None:
    """SIGTERM (the node stops its pods and deletes its Node), SIGKILL if it lingers."""
    if not node_alive(node):
        return
    os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + NODE_STOP_GRACE_S
    while node_alive(node) and time.monotonic() < deadline:
        time.sleep(0.05)
    if node_alive(node):
        log.warning("node %s ignored SIGTERM; killing it", node.name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)


def _kill_leftover_pods(folder: Path) -> None:
    for pid in processes_under(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_nodes_ready(plane: ControlPlane, nodes: list[NodeProcess], timeout: float) -> None:
    """Until every node is Ready and untainted, so the scheduler places pods on it."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    try:
        for node in nodes:
            while True:
                if not node_alive(node):
                    raise RuntimeError(f"node {node.name} exited; log {node.log}")
                with contextlib.suppress(client.ApiException):
                    obj = core.read_node(node.name)
                    ready = any(
                        c.type == "Ready" and c.status == "True"
                        for c in obj.status.conditions or []
                    )
                    tainted = any(t.key == NOT_READY_TAINT for t in obj.spec.taints or [])
                    if ready and not tainted:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"node {node.name} not Ready in {timeout:.0f}s; log {node.log}"
                    )
                time.sleep(0.2)
    finally:
        api.close()


def running_plane(state_dir: Path) -> ControlPlane | None:
    plane = ControlPlane.attach(state_dir)
    return plane if plane is not None and plane.healthy() else None


def up(
    state_dir: Path, options: Options, *, num_nodes: int, gpus: int, kueue: bool = False
) -> ControlPlane:
    """Start what is not running: the control plane, Kueue if asked, then nodes
    local-0..N-1 (`gpus` each).

    Running nodes are kept as they are (their GPUs included); after a crash, whatever is left
    of the previous cluster is stopped first."""
    plane = running_plane(state_dir)
    nodes = load_nodes(state_dir)
    if plane is None:
        for node in nodes:  # they served a control plane that is gone
            stop_node(node)
        _kill_leftover_pods(state_dir / "nodes")
        nodes = []
        stale = ControlPlane.attach(state_dir)
        if stale is not None:
            stale.stop()
        plane = ControlPlane(state_dir, options)
        plane.start(bind_to_parent=False)
        log.info("control plane started in %.1fs at %s", plane.startup_s, plane.server)
    if kueue and not any(c.name == "kueue" and c.alive() for c in plane.components):
        from lmjob_cli.localcluster.kueue import Kueue

        manager = Kueue(plane, state_dir / "kueue")
        manager.start(bind_to_parent=False, record=True)
        log.info("kueue started in %.1fs", manager.startup_s)
    by_name = {n.name: n for n in nodes if node_alive(n)}
    for node in nodes:
        if node.name not in by_name:
            # Killed without stopping its pods: their processes are orphans; the restarted node
            # fails the pods they ran (process_kubelet's _adopt) rather than run them twice.
            _kill_leftover_pods(node_root(state_dir, node.name))
    for index in range(num_nodes):
        name = node_name(index)
        if name not in by_name:
            by_name[name] = start_node(state_dir, name, gpus)
            log.info("node %s started (pid %d, %d GPUs)", name, by_name[name].pid, gpus)
    nodes = sorted(by_name.values(), key=lambda n: n.name)
    _save_nodes(state_dir, nodes)
    wait_nodes_ready(plane, nodes, NODE_READY_TIMEOUT_S)
    _ensure_storage(plane, state_dir)
    return plane


def _ensure_storage(plane: ControlPlane, state_dir: Path) -> None:
    from kubernetes import config

    from lmjob_cli.localcluster.storage import ensure_storage

    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    try:
        ensure_storage(api, state_dir, REPO_ROOT / "examples" / "data")
    finally:
        api.close()


def down(state_dir: Path) -> bool:
    """Stop the nodes (and their pods), then the control plane; False if nothing ran."""
    nodes = load_nodes(state_dir)
    for node in nodes:
        stop_node(node)
    _kill_leftover_pods(state_dir / "nodes")
    _nodes_file(state_dir).unlink(missing_ok=True)
    plane = ControlPlane.attach(state_dir)
    if plane is not None:
        plane.stop()
    return plane is not None or bool(nodes)


def describe(state_dir: Path) -> tuple[list[str], bool]:
    """Lines saying what runs, and whether the whole cluster is healthy."""
    plane = ControlPlane.attach(state_dir)
    if plane is None:
        return ["stopped"], False
    lines = [
        f"{c.name:<24} pid {c.pid:<8} {'running' if c.alive() else 'DEAD'}  {c.log_path}"
        for c in plane.components
    ]
    nodes = load_nodes(state_dir)
    for node in nodes:
        state = "running" if node_alive(node) else "DEAD"
        lines.append(
            f"node {node.name:<19} pid {node.pid:<8} {state}  {node.gpus} GPUs  {node.log}"
        )
    healthy = plane.healthy()
    lines.append(f"apiserver {plane.server}: {'ready' if healthy else 'NOT READY'}")
    lines.append(f"node folders: {state_dir / 'nodes'}")
    lines.append(f"volumes (claims, example data): {state_dir / 'volumes'}")
    return lines, healthy and all(node_alive(n) for n in nodes)


def pids(state_dir: Path) -> list[int]:
    """Every pid the cluster in `state_dir` recorded, for checks that nothing is left."""
    plane = ControlPlane.attach(state_dir)
    recorded = [c.pid for c in plane.components if c.pid] if plane else []
    return recorded + [n.pid for n in load_nodes(state_dir)]
