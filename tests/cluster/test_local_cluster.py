"""`lmjob cluster up|down|status`: the control plane plus local nodes, where the real
kube-scheduler places pods against each Node's capacity and the node process runs them.

One cluster for the module, driven through the real command line; the tests run in file
order (the last one takes it down).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from lmjob_cli.localcluster import lifecycle
from tests.operator.harness import (
    OPERATOR_ENV,
    OperatorProcess,
    create_job,
    free_port,
    phase_is,
)

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
SHAKESPEARE = REPO_ROOT / "examples" / "data" / "tinyshakespeare.txt"


def lmjob_cluster(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    source = os.pathsep.join(str(REPO_ROOT / d) for d in ("api", "cli", "operator", "trainer"))
    return subprocess.run(
        [sys.executable, "-m", "lmjob_cli.main", "cluster", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONPATH=source),
    )


def eventually(check: Callable[[], object], what: str, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return result


def running(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("local-cluster")
    up = lmjob_cluster(state_dir, "up")
    if up.returncode != 0:
        pytest.fail(f"lmjob cluster up failed:\n{up.stderr}", pytrace=False)
    yield state_dir
    lmjob_cluster(state_dir, "down")


@pytest.fixture(scope="module")
def core(cluster: Path) -> Iterator[client.CoreV1Api]:
    api = config.new_client_from_config(config_file=str(cluster / "admin.kubeconfig"))
    yield client.CoreV1Api(api)
    api.close()


def create_pod(
    core: client.CoreV1Api, name: str, code: str, *, gpus: int = 0, node: str | None = None
) -> None:
    container = {
        "name": "main",
        "image": "python:3.12",  # unused: the node runs this machine's python
        "command": ["python", "-c", code],
        # A mount path in an env var reaches the process as the pod's own folder.
        "env": [{"name": "MESSAGE_FILE", "value": "/dev/termination-log"}],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    core.create_namespaced_pod(
        NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [container],
                "nodeSelector": {"kubernetes.io/hostname": node} if node else None,
            },
        },
    )


def events(core: client.CoreV1Api, pod: str) -> list[tuple[str, str]]:
    found = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={pod}")
    return [(e.reason, e.message or "") for e in found.items]


def phase(core: client.CoreV1Api, pod: str) -> str:
    return core.read_namespaced_pod(pod, NAMESPACE).status.phase


HELLO = "import os; print('hello'); open(os.environ['MESSAGE_FILE'], 'w').write('done')"


def test_up_twice_is_idempotent(cluster: Path) -> None:
    before = lifecycle.pids(cluster)
    again = lmjob_cluster(cluster, "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"export KUBECONFIG={cluster / 'admin.kubeconfig'}\n"
    assert lifecycle.pids(cluster) == before, "a second up restarted something"
    status = lmjob_cluster(cluster, "status")
    assert status.returncode == 0 and "node local-0" in status.stdout, status.stdout


def test_scheduler_places_a_pod_on_the_local_node_which_runs_it(
    cluster: Path, core: client.CoreV1Api
) -> None:
    create_pod(core, "hello", HELLO)
    eventually(lambda: phase(core, "hello") == "Succeeded", "pod hello to succeed")
    pod = core.read_namespaced_pod("hello", NAMESPACE)
    assert pod.spec.node_name == "local-0"
    # Bound by the scheduler, not by the node: the Scheduled event is the scheduler's.
    assert ("Scheduled", "Successfully assigned default/hello to local-0") in events(core, "hello")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (0, "done")
    # `kubectl logs` goes through the API server to the node's log endpoint.
    assert core.read_namespaced_pod_log("hello", NAMESPACE) == "hello\n"


# What the trainer is told: no device is visible, whatever the node advertises.
SEES_GPUS = (
    "import os; open(os.environ['MESSAGE_FILE'], 'w')"
    ".write(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"
)


def test_gpu_pod_pends_until_a_node_with_gpus_joins(cluster: Path, core: client.CoreV1Api) -> None:
    create_pod(core, "gpu", SEES_GPUS, gpus=1)
    eventually(
        lambda: any(
            reason == "FailedScheduling" and "Insufficient nvidia.com/gpu" in message
            for reason, message in events(core, "gpu")
        ),
        "the scheduler's FailedScheduling: Insufficient nvidia.com/gpu",
    )
    assert phase(core, "gpu") == "Pending"
    grown = lmjob_cluster(cluster, "up", "--nodes", "2", "--gpus", "1")
    assert grown.returncode == 0, grown.stderr
    capacity = core.read_node("local-1").status.capacity
    assert capacity["nvidia.com/gpu"] == "1" and "nvidia.com/gpu" not in (
        core.read_node("local-0").status.capacity
    )
    eventually(lambda: phase(core, "gpu") == "Succeeded", "pod gpu to succeed")
    pod = core.read_namespaced_pod("gpu", NAMESPACE)
    assert pod.spec.node_name == "local-1"
    assert pod.status.container_statuses[0].state.terminated.message == "''"


def test_claims_of_the_default_class_and_host_paths_are_folders(
    cluster: Path, core: client.CoreV1Api, tmp_path: Path
) -> None:
    """`up`'s StorageClass: the node provisions a claim, the real controller-manager binds it,
    so the scheduler places its pod; that volume and a hostPath are folders the pod writes."""
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}
    core.create_namespaced_persistent_volume_claim(
        NAMESPACE, {"metadata": {"name": "scratch"}, "spec": claim}
    )
    host = tmp_path / "host"
    code = "import os; [open(os.environ[v], 'w').write(v) for v in ('CLAIM', 'HOST')]"
    pod = {
        "metadata": {"name": "writer"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.12",
                    "command": ["python", "-c", code],
                    "env": [
                        {"name": "CLAIM", "value": "/scratch/out"},
                        {"name": "HOST", "value": "/host/out"},
                    ],
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/scratch"},
                        {"name": "host", "mountPath": "/host"},
                    ],
                }
            ],
            "volumes": [
                {"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch"}},
                {"name": "host", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
            ],
        },
    }
    core.create_namespaced_pod(NAMESPACE, pod)
    eventually(lambda: phase(core, "writer") == "Succeeded", "pod writer to succeed")
    bound = core.read_namespaced_persistent_volume_claim("scratch", NAMESPACE)
    volume = core.read_persistent_volume(bound.spec.volume_name)
    assert (bound.status.phase, volume.spec.storage_class_name) == ("Bound", "local-path")
    folder = Path(volume.spec.host_path.path)
    assert folder.parent == cluster / "volumes"
    assert ((folder / "out").read_text(), (host / "out").read_text()) == ("CLAIM", "HOST")
    # The example data `up` put on the cluster's storage, for examples/*local-cluster*.yaml.
    examples = core.read_persistent_volume("lmjob-examples").spec.host_path.path
    assert (Path(examples) / "tinyshakespeare.txt").read_bytes() == SHAKESPEARE.read_bytes()
    # Reclaim policy Delete: the claim gone, its volume and folder go too.
    core.delete_namespaced_pod("writer", NAMESPACE)
    core.delete_namespaced_persistent_volume_claim("scratch", NAMESPACE)
    eventually(lambda: not folder.exists(), "the released volume's folder to go")
    eventually(
        lambda: (
            volume.metadata.name
            not in {v.metadata.name for v in core.list_persistent_volume().items}
        ),
        f"volume {volume.metadata.name} to go",
    )


@pytest.mark.slow
def test_operator_job_trains_on_scheduler_placed_pods(
    cluster: Path, core: client.CoreV1Api, tmp_path: Path
) -> None:
    """The operator (here a process on this machine) makes the pods; the scheduler places them
    on a local node, which runs the rendezvous store and a worker's torchrun to Succeeded."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:50_000])
    spec = {
        "workers": {"replicas": 1, "procsPerWorker": 2},
        "training": {
            "model": {"layers": 1, "heads": 2, "hidden": 16, "seqLen": 16},
            "data": {"source": str(corpus)},
            "steps": 10,
            "batch": {"microBatchSize": 2, "globalBatchSize": 4},
            "evaluation": {"everySteps": 10, "steps": 1},
        },
        "metrics": {"port": free_port()},
    }
    operator = OperatorProcess(
        cluster / "admin.kubeconfig", [NAMESPACE], tmp_path / "operator.log", OPERATOR_ENV
    )
    operator.start()
    api = config.new_client_from_config(config_file=str(cluster / "admin.kubeconfig"))
    try:
        custom = client.CustomObjectsApi(api)
        create_job(custom, NAMESPACE, "tiny", spec)
        final = eventually(phase_is(custom, NAMESPACE, "tiny", "Succeeded"), "job tiny", 180)
    finally:
        operator.stop()
        api.close()
    assert final["stages"][0]["phase"] == "Succeeded", final
    worker = core.read_namespaced_pod("tiny-worker-0", NAMESPACE)
    assert worker.spec.node_name in ("local-0", "local-1")
    assert any(reason == "Scheduled" for reason, _ in events(core, "tiny-worker-0"))


def test_killed_node_restarts_without_running_a_pod_twice(
    cluster: Path, core: client.CoreV1Api
) -> None:
    create_pod(core, "sleeper", "import time; time.sleep(600)", node="local-0")
    eventually(lambda: phase(core, "sleeper") == "Running", "pod sleeper to run")
    orphans = lifecycle.processes_under(cluster / "nodes" / "local-0" / "pods")
    (killed,) = [n for n in lifecycle.load_nodes(cluster) if n.name == "local-0"]
    os.kill(killed.pid, signal.SIGKILL)
    eventually(lambda: not running(killed.pid), "the node process to die")
    again = lmjob_cluster(cluster, "up", "--nodes", "2")
    assert again.returncode == 0, again.stderr
    (restarted,) = [n for n in lifecycle.load_nodes(cluster) if n.name == "local-0"]
    assert restarted.pid != killed.pid
    assert orphans and not [p for p in orphans if running(p)], "the old pod process survived"
    # Its process is gone with the node: the pod fails (as on a lost node), never runs twice.
    eventually(lambda: phase(core, "sleeper") == "Failed", "pod sleeper to fail")
    state = core.read_namespaced_pod("sleeper", NAMESPACE).status.container_statuses[0].state
    assert state.terminated.reason == "NodeRestarted"
    # The finished pod is left alone, and its log still served.
    assert phase(core, "hello") == "Succeeded"
    assert core.read_namespaced_pod_log("hello", NAMESPACE) == "hello\n"


def test_down_leaves_no_process(cluster: Path, core: client.CoreV1Api) -> None:
    create_pod(core, "sleeper2", "import time; time.sleep(600)")
    eventually(lambda: phase(core, "sleeper2") == "Running", "pod sleeper2 to run")
    pod_pids = eventually(
        lambda: lifecycle.processes_under(cluster / "nodes"), "sleeper2's process"
    )
    pids = lifecycle.pids(cluster) + list(pod_pids)
    assert len(pids) >= 4 + 2 + 1, pids  # 4 control plane components, 2 nodes, the pod
    down = lmjob_cluster(cluster, "down")
    assert down.returncode == 0, down.stderr
    eventually(lambda: not [p for p in pids if running(p)], f"every process of {pids} to end", 10)
    assert lmjob_cluster(cluster, "status").stdout == "stopped\n"
