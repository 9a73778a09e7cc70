"""What the operator's cluster tests need besides the control plane: the operator as a process
under its own ServiceAccount, a stand-in kubelet that sets pod statuses, jobs, and waiting.

There is no kubelet: the tests play it, writing pod phases and container exit codes through
the pods' status subresource, exactly what the operator would observe from a real node.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.rest import ApiException

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO_ROOT / "examples" / "data" / "tinyshakespeare.txt"
SOURCE_DIRS = [str(REPO_ROOT / d) for d in ("api", "cli", "operator", "trainer")]
GROUP, VERSION, PLURAL = "lmjob.dev", "v1alpha1", "largemodeljobs"
RULES_FILE = REPO_ROOT / "charts" / "lmjob" / "files" / "operator-rules.yaml"
OPERATOR_NAMESPACE = (
    "lmjob-operator-tests"  # not the chart's namespace: no clash with a helm install
)
OPERATOR_ACCOUNT = "lmjob-operator"
# Short timings so the tests see resyncs, scrapes and forced deletions in seconds.
OPERATOR_ENV = {
    "LMJOB_TRAINER_IMAGE": "registry.example/lmjob-trainer:test",
    "LMJOB_RESYNC_SECONDS": "1",
    "LMJOB_SCRAPE_TIMEOUT_SECONDS": "0.5",
    "LMJOB_FORCE_DELETE_AFTER_SECONDS": "2",
}

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T], timeout: float = 60.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `probe` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: last {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provision_operator_account(control_plane: Any, kubeconfig_path: Path) -> Path:
    """The operator's ServiceAccount, a ClusterRole holding exactly the chart's rules file, the
    binding, and a kubeconfig with a minted token for it; returns the kubeconfig."""
    import yaml

    from tests.support.clients import provision_service_account

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "lmjob-operator-test"},
        "rules": yaml.safe_load(RULES_FILE.read_text()),
    }
    return provision_service_account(
        control_plane,
        namespace=OPERATOR_NAMESPACE,
        account=OPERATOR_ACCOUNT,
        role=role,
        binding_name="lmjob-operator-test",
        kubeconfig_path=kubeconfig_path,
    )


class OperatorProcess:
    """`python -m lmjob_operator --namespace NS` acting as its own ServiceAccount."""

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: list[str],
        log_path: Path,
        env: dict[str, str],
        extra_args: list[str] | None = None,
    ) -> None:
        self.extra_args = ["--standalone"] if extra_args is None else extra_args
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0

    def start(self) -> None:
        self.metrics_port, health = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join(SOURCE_DIRS),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        args = [sys.executable, "-m", "lmjob_operator", *self.extra_args, "--log-format", "plain"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        args += [
            "--liveness",
            f"http://127.0.0.1:{health}/healthz",
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-address",
            "127.0.0.1",
        ]
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        wait_for(lambda: self._healthy(health), timeout=30, what="operator liveness")

    def _healthy(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node or the container runtime dies."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()


# --- jobs ---------------------------------------------------------------------------------


def on_node(node: str) -> dict:
    """workers.template placing the job's pods (the store's too) on test node `node` only
    (the `kubelet` fixture's node: tainted, so no other test's pods land there)."""
    from lmjob_cli.localcluster.kubelet_node import TAINT

    toleration = {"key": TAINT["key"], "operator": "Exists", "effect": TAINT["effect"]}
    selector = {"kubernetes.io/hostname": node}
    return {"spec": {"tolerations": [toleration], "nodeSelector": selector}}


def job_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LargeModelJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_job(custom: client.CustomObjectsApi, ns: str, name: str, spec: dict) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job_body(name, spec))


def get_job(custom: client.CustomObjectsApi, ns: str, name: str) -> dict | None:
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def patch_spec(custom: client.CustomObjectsApi, ns: str, name: str, spec: dict) -> dict:
    return custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec})


def job_status(custom: client.CustomObjectsApi, ns: str, name: str) -> dict:
    return (get_job(custom, ns, name) or {}).get("status") or {}


def phase_is(custom: client.CustomObjectsApi, ns: str, name: str, phase: str) -> Callable[[], dict]:
    def probe() -> dict:
        status = job_status(custom, ns, name)
        return status if status.get("phase") == phase else {}

    return probe


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


# --- pods and the stand-in kubelet --------------------------------------------------------


def pods_of(core: client.CoreV1Api, ns: str, job: str, role: str = "worker") -> list[Any]:
    selector = f"lmjob.dev/job-name={job},lmjob.dev/role={role}"
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    return sorted(pods, key=lambda p: p.metadata.name)


def live_pod_names(core: client.CoreV1Api, ns: str, job: str, role: str = "worker") -> list[str]:
    return [
        p.metadata.name for p in pods_of(core, ns, job, role) if not p.metadata.deletion_timestamp
    ]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_pod_status(
    core: client.CoreV1Api,
    ns: str,
    name: str,
    phase: str,
    *,
    exit_code: int | None = None,
    reason: str = "",
    ip: str = "127.0.0.1",
    disruption: bool = False,
) -> None:
    """Write what a kubelet would: phase, IP, readiness and the main container's state."""
    container = "rendezvous" if name.endswith("-rendezvous") else "worker"
    if phase == "Running":
        state: dict[str, Any] = {"running": {"startedAt": _now()}}
    elif phase in ("Succeeded", "Failed") and exit_code is not None:
        term_reason = (
            reason if reason in ("OOMKilled",) else ("Completed" if exit_code == 0 else "Error")
        )
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": term_reason,
                "startedAt": _now(),
                "finishedAt": _now(),
            }
        }
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status: dict[str, Any] = {
        "phase": phase,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": _now(),
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if phase == "Running" else "False",
                "lastTransitionTime": _now(),
            }
        ],
        "containerStatuses": [
            {
                "name": container,
                "ready": phase == "Running",
                "restartCount": 0,
                "image": "trainer:test",
                "imageID": "",
                "state": state,
            }
        ],
    }
    if reason and exit_code is None:
        status["reason"] = reason
        status["message"] = f"the test set {reason}"
    if disruption:
        status["conditions"].append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": reason or "EvictionByEvictionAPI",
                "lastTransitionTime": _now(),
            }
        )
    core.patch_namespaced_pod_status(name, ns, {"status": status})


def run_pods(core: client.CoreV1Api, ns: str, job: str, *, with_store: bool = True) -> list[str]:
    """Mark every live worker (and the store) Running; returns the worker names."""
    names = live_pod_names(core, ns, job)
    for name in names:
        set_pod_status(core, ns, name, "Running")
    if with_store:
        for name in live_pod_names(core, ns, job, "rendezvous"):
            set_pod_status(core, ns, name, "Running")
    return names
