"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and, optionally,
kube-controller-manager and kube-scheduler, run from the binaries scripts/build-k8s builds.

The pytest fixtures (tests/conftest.py) and `lmjob cluster up|down|status|env` (lifecycle.py,
also behind `scripts/dev-cluster`) both drive this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmjob_cli.localcluster.binaries import REPO_ROOT, find_binaries
from lmjob_cli.localcluster.certs import Pki, build_pki
from lmjob_cli.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig

log = logging.getLogger(__name__)

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the first address: the `kubernetes` Service
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
LOOPBACK = "127.0.0.1"
STOP_GRACE_S = 10.0

# Metadata for every request, so tests can count the API calls a component
# makes (per user, verb, resource); health probes are noise.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*"]},
        {"level": "Metadata"},
    ],
}


class ControlPlaneError(RuntimeError):
    """A component failed to start or became unhealthy; the message points at its log."""


@dataclass
class Options:
    """What to run besides etcd and kube-apiserver."""

    controller_manager: bool = True  # garbage collection, namespace deletion, SAs, tokens
    scheduler: bool = True  # binds pods to (fake or process-run) nodes
    crd_dir: Path | None = REPO_ROOT / "crds"  # every CRD YAML here is installed
    # Lifts the apiserver's request throttles, for scale tests with many clients.
    unlimited_inflight: bool = False
    extra_apiserver_args: list[str] = field(default_factory=list)
    # Kubernetes' own gang scheduling (1.36 alpha): the scheduling.k8s.io/v1alpha2 PodGroup
    # API and kube-scheduler's GangScheduling plugin. Pods without a schedulingGroup are
    # scheduled as without it.
    gang_scheduling: bool = False


GANG_FEATURE_GATES = "GenericWorkload=true,GangScheduling=true"
GANG_RUNTIME_CONFIG = "scheduling.k8s.io/v1alpha2=true"


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are chosen, so no port is handed out twice.
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a pytest run killed with SIGKILL must not leave an
    # apiserver and etcd behind holding ports and memory.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _tmpfs_dir(prefix: str) -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _pid_alive(pid: int, binary: str | None = None) -> bool:
    """True when `pid` runs and, if given, runs `binary` (guards against pid reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    if binary is None:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    # A zombie still answers kill(0); it no longer runs anything.
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and cmdline == binary


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Component:
    """One running binary: its argv, log file and process."""

    name: str
    argv: list[str]
    log_path: Path
    pid: int | None = None
    process: subprocess.Popen | None = None

    def start(self, *, bind_to_parent: bool) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches us, not etcd, so
                # shutdown happens in order (clients first, etcd last).
                start_new_session=True,
                preexec_fn=_die_with_parent if bind_to_parent else None,
            )
        self.pid = self.process.pid

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and _pid_alive(self.pid, self.argv[0])

    def check(self) -> None:
        if not self.alive():
            raise ControlPlaneError(
                f"{self.name} exited; log {self.log_path}:\n{_tail(self.log_path)}"
            )

    def stop(self) -> None:
        if self.pid is None or not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, STOP_GRACE_S)
            os.kill(self.pid, signal.SIGKILL)
            if self.process is not None:
                self.process.wait()


class ControlPlane:
    """etcd + kube-apiserver (+ controller-manager, scheduler) under one state directory.

    `state_dir` holds certificates, kubeconfigs, the audit log and every
    component's log; etcd's data lives on tmpfs when there is one.
    """

    def __init__(self, state_dir: Path, options: Options | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.options = options or Options()
        self.components: list[Component] = []
        self.ports: dict[str, int] = {}
        self.etcd_data_dir: Path | None = None
        self.crds: list[str] = []
        self.binaries: dict[str, Path] = {}
        self.startup_s: float | None = None
        # Seconds from start() to each milestone, for the docs and slow-start triage.
        self.milestones: dict[str, float] = {}

    # -- paths ---------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (user lmjob-test-admin in group system:masters)."""
        return self.state_dir / "admin.kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def audit_log(self) -> Path:
        return self.log_dir / "audit.log"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    @property
    def ca_file(self) -> Path:
        """CA that signed the apiserver's serving cert."""
        return self.state_dir / "pki" / "serving-ca.crt"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    # -- lifecycle -------------------------------------------------------------
    def start(self, *, timeout: float = 120.0, bind_to_parent: bool = True) -> None:
        """Start everything and wait until it serves; on failure stop what started.

        `bind_to_parent` kills the components when this process dies (tests);
        the dev cluster passes False so it outlives the command that started it.
        """
        started = self._t0 = time.monotonic()
        try:
            self._start(timeout=timeout, bind_to_parent=bind_to_parent)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        log.info("control plane up at %s in %.1fs", self.server, self.startup_s)

    def _start(self, *, timeout: float, bind_to_parent: bool) -> None:
        opts = self.options
        names = ["etcd", "kube-apiserver", "kubectl"]
        names += ["kube-controller-manager"] if opts.controller_manager else []
        names += ["kube-scheduler"] if opts.scheduler else []
        self.binaries = find_binaries(names)
        deadline = time.monotonic() + timeout

        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.log_dir.exists():
            # A reused state dir (the dev cluster): keep one previous run's logs,
            # and start a fresh audit log so call counts cover this run only.
            previous = self.state_dir / "logs.previous"
            shutil.rmtree(previous, ignore_errors=True)
            self.log_dir.rename(previous)
        self.log_dir.mkdir(parents=True)
        etcd_client, etcd_peer, api, kcm, sched = _free_ports(5)
        self.ports = {
            "etcd": etcd_client,
            "etcd-peer": etcd_peer,
            "apiserver": api,
            "kube-controller-manager": kcm,
            "kube-scheduler": sched,
        }
        self.etcd_data_dir = _tmpfs_dir("lmjob-etcd-")

        etcd = self._component("etcd", self._etcd_args())
        etcd.start(bind_to_parent=bind_to_parent)
        pki = build_pki(self.state_dir / "pki", service_ip=SERVICE_IP)
        self._write_configs(pki)
        self._save_state()
        self._wait(etcd, f"http://{LOOPBACK}:{etcd_client}/health", deadline, tls=None)
        self._milestone("etcd")

        apiserver = self._component("kube-apiserver", self._apiserver_args(pki))
        apiserver.start(bind_to_parent=bind_to_parent)
        self._save_state()
        self._wait(apiserver, f"{self.server}/readyz", deadline, tls=self._admin_tls())
        self._milestone("kube-apiserver")

        # Controllers and CRDs need only a ready apiserver: start them together.
        waits = []
        if opts.controller_manager:
            c = self._component("kube-controller-manager", self._controller_manager_args(pki))
            c.start(bind_to_parent=bind_to_parent)
            waits.append((c, f"https://{LOOPBACK}:{kcm}/healthz"))
        if opts.scheduler:
            c = self._component("kube-scheduler", self._scheduler_args())
            c.start(bind_to_parent=bind_to_parent)
            waits.append((c, f"https://{LOOPBACK}:{sched}/healthz"))
        self._save_state()
        if opts.crd_dir is not None and self.install_crds(opts.crd_dir, deadline):
            self._milestone("crds")
        # Their serving certs are self-signed: only liveness matters here.
        insecure = ssl._create_unverified_context()
        for component, url in waits:
            self._wait(component, url, deadline, tls=insecure)
            self._milestone(component.name)
        if opts.controller_manager:
            # Healthy is not working: controllers start seconds after /healthz
            # answers. The `default` SA appearing proves they run, and tests
            # then never race the controller manager's warm-up.
            controller_manager = waits[0][0]
            sa = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
            self._wait(controller_manager, sa, deadline, tls=self._admin_tls())
            self._milestone("controllers")
        self._save_state()

    def stop(self) -> None:
        """SIGTERM each component (clients first, etcd last), SIGKILL stragglers."""
        for component in reversed(self.components):
            with contextlib.suppress(ProcessLookupError):
                component.stop()
        if self.etcd_data_dir is not None:
            shutil.rmtree(self.etcd_data_dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        keep = os.environ.get("LMJOB_CP_LOG_DIR")
        if keep and self.log_dir.exists():
            # CI collects this folder as an artifact.
            target = Path(keep) / self.state_dir.name
            shutil.copytree(self.log_dir, target, dirs_exist_ok=True)
            log.info("control plane logs copied to %s", target)

    def healthy(self) -> bool:
        if not self.components or not all(c.alive() for c in self.components):
            return False
        try:
            self._get(f"{self.server}/readyz", self._admin_tls(), timeout=2)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- CRDs ------------------------------------------------------------------
    def install_crds(self, crd_dir: Path, deadline: float) -> list[str]:
        """Apply every CustomResourceDefinition in `crd_dir`, wait until Established."""
        files = sorted(p for p in Path(crd_dir).glob("*.y*ml") if p.is_file())
        names = []
        for path in files:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
            if not crds:
                continue
            names += [d["metadata"]["name"] for d in crds]
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        # Polled rather than one `kubectl wait`: under load that can exit early (seen
        # as exit 1 right after the apply) and fail a whole test session.
        pending = set(names)
        last_error = ""
        while pending:
            for name in sorted(pending):
                out = self.kubectl(
                    "get", f"crd/{name}", "-o",
                    "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                    check=False,
                )  # fmt: skip
                if out.returncode == 0 and out.stdout.strip() == "True":
                    pending.discard(name)
                else:
                    last_error = out.stderr.strip() or f"{name} not Established yet"
            if pending and time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"CRDs not Established in time: {sorted(pending)}: {last_error}"
                )
            if pending:
                time.sleep(0.2)
        self.crds += names
        return names

    # -- clients ---------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane (admin unless told)."""
        config = kubeconfig or self.kubeconfig
        env = dict(os.environ, KUBECONFIG=str(config))
        # Ports are reused across runs: keep discovery caches per control plane.
        env["KUBECACHEDIR"] = str(self.state_dir / "kubectl-cache")
        argv = [str(self.binaries["kubectl"]), f"--kubeconfig={config}", *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, argv, output=proc.stdout, stderr=proc.stderr
            )
        return proc

    def audit_events(self, since: int = 0) -> Iterator[dict]:
        """Audit events (Metadata level) written at or after byte offset `since`.

        The API server's write of a line can be seen half done, so a trailing line
        without its newline is left for a later read."""
        if not self.audit_log.exists():
            return
        with self.audit_log.open("rb") as f:
            f.seek(since)
            for line in f:
                if line.endswith(b"\n") and line.strip():
                    yield json.loads(line)

    def audit_offset(self) -> int:
        """End of the last complete line of the audit log: pass it to `audit_events` later
        to see only newer calls. (The file's size can fall inside a line being written.)"""
        if not self.audit_log.exists():
            return 0
        with self.audit_log.open("rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - 256 * 1024)
            f.seek(start)
            tail = f.read(size - start)
        return start + tail.rfind(b"\n") + 1 if b"\n" in tail else start

    # -- state for detached (dev-cluster) use -----------------------------------
    def _save_state(self) -> None:
        state = {
            "ports": self.ports,
            "etcd_data_dir": str(self.etcd_data_dir) if self.etcd_data_dir else None,
            "binaries": {k: str(v) for k, v in self.binaries.items()},
            "components": [
                {"name": c.name, "argv": c.argv, "log": str(c.log_path), "pid": c.pid}
                for c in self.components
            ],
            "crds": self.crds,
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, state_dir: Path) -> ControlPlane | None:
        """The control plane a previous `start` left running in `state_dir`, if any state."""
        plane = cls(state_dir)
        try:
            state = json.loads(plane.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        plane.ports = state["ports"]
        plane.etcd_data_dir = Path(state["etcd_data_dir"]) if state["etcd_data_dir"] else None
        plane.binaries = {k: Path(v) for k, v in state["binaries"].items()}
        plane.crds = state["crds"]
        plane.components = [
            Component(c["name"], c["argv"], Path(c["log"]), c["pid"]) for c in state["components"]
        ]
        return plane

    # -- internals -------------------------------------------------------------
    def _milestone(self, name: str) -> None:
        self.milestones[name] = round(time.monotonic() - self._t0, 2)
        log.debug("control plane: %s ready after %.1fs", name, self.milestones[name])

    def _component(self, name: str, args: list[str]) -> Component:
        c = Component(name, [str(self.binaries[name]), *args], self.log_dir / f"{name}.log")
        self.components.append(c)
        return c

    def _admin_tls(self) -> ssl.SSLContext:
        pki_dir = self.state_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki_dir / "serving-ca.crt"))
        ctx.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        return ctx

    @staticmethod
    def _get(url: str, tls: ssl.SSLContext | None, timeout: float) -> str:
        with urllib.request.urlopen(url, timeout=timeout, context=tls) as resp:
            return resp.read().decode()

    def _wait(
        self, component: Component, url: str, deadline: float, tls: ssl.SSLContext | None
    ) -> None:
        last: str = ""
        while time.monotonic() < deadline:
            component.check()
            try:
                self._get(url, tls, timeout=2)
                return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read().decode(errors='replace')[-2000:]}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{component.name} not ready at {url} in time ({last}); "
            f"log {component.log_path}:\n{_tail(component.log_path)}"
        )

    def _write_configs(self, pki: Pki) -> None:
        server = f"https://{LOOPBACK}:{self.ports['apiserver']}"
        ca = pki.serving_ca.cert_pem()
        for path, user, pair in (
            (self.kubeconfig, "lmjob-test-admin", pki.admin),
            (self.state_dir / "controller-manager.kubeconfig", "kcm", pki.controller_manager),
            (self.state_dir / "scheduler.kubeconfig", "scheduler", pki.scheduler),
        ):
            config = build_kubeconfig(
                server=server,
                ca_pem=ca,
                user=user,
                client_cert_pem=pair.cert_pem(),
                client_key_pem=pair.key_pem(),
            )
            write_kubeconfig(path, config)
        (self.state_dir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        scheduler_config = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.state_dir / "scheduler.kubeconfig")},
            "leaderElection": {"leaderElect": False},
        }
        (self.state_dir / "scheduler.yaml").write_text(yaml.safe_dump(scheduler_config))

    def _etcd_args(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.ports['etcd']}"
        peer = f"http://{LOOPBACK}:{self.ports['etcd-peer']}"
        return [
            "--name=lmjob-test",
            f"--data-dir={self.etcd_data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=lmjob-test={peer}",
            # Test data is disposable; fsync dominates etcd latency on VMs.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_args(self, pki: Pki) -> list[str]:
        opts = self.options
        args = [
            f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd']}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports['apiserver']}",
            # A loopback advertise address is only accepted without the
            # endpoint reconciler (which would publish it in the `kubernetes`
            # Service's endpoints for pods to dial).
            f"--advertise-address={LOOPBACK}",
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.client_ca.cert}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            "--allow-privileged=true",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--audit-policy-file={self.state_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=1",
            # Each event is on disk before its response is sent, so a test that has its
            # answer can count the call.
            "--audit-log-mode=blocking",
            "--profiling=false",
        ]
        if not opts.controller_manager:
            # The ServiceAccount plugin rejects pods until the SA controller has
            # created `default` in their namespace; without a controller manager
            # nothing ever does.
            args.append("--disable-admission-plugins=ServiceAccount")
        if opts.unlimited_inflight:
            args += [
                "--max-requests-inflight=0",
                "--max-mutating-requests-inflight=0",
                "--enable-priority-and-fairness=false",
            ]
        if opts.gang_scheduling:
            args += [
                f"--feature-gates={GANG_FEATURE_GATES}",
                f"--runtime-config={GANG_RUNTIME_CONFIG}",
            ]
        return args + list(opts.extra_apiserver_args)

    def _controller_manager_args(self, pki: Pki) -> list[str]:
        kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports['kube-controller-manager']}",
            f"--cert-dir={self.state_dir / 'controller-manager-certs'}",
            "--leader-elect=false",
            # Each controller acts as its own ServiceAccount under the bootstrap
            # RBAC roles, as in kubeadm clusters, so audit events name it.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_private}",
            f"--root-ca-file={pki.serving_ca.cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            *self._feature_gate_args(),
        ]

    def _scheduler_args(self) -> list[str]:
        kubeconfig = self.state_dir / "scheduler.kubeconfig"
        return [
            f"--config={self.state_dir / 'scheduler.yaml'}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports['kube-scheduler']}",
            f"--cert-dir={self.state_dir / 'scheduler-certs'}",
            *self._feature_gate_args(),
        ]

    def _feature_gate_args(self) -> list[str]:
        """The gates every component runs with (the apiserver adds its runtime-config)."""
        return [f"--feature-gates={GANG_FEATURE_GATES}"] if self.options.gang_scheduling else []
