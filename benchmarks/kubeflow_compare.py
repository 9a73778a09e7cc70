"""lmjob's operator and Kubeflow's training-operator v1.8.1, side by side on one control plane.

    python benchmarks/kubeflow_compare.py [--workers 8 64] [--repeats 3] [--jobs 200]
        [--job-workers 8] [--scale 1000]

Builds what it needs first (`scripts/build-k8s` and `scripts/build-k8s kubeflow`: Kubeflow's
operator from its Go module as shipped, and rebuilt without client-go's 20 QPS / burst 30
limit), starts the control plane of lmjob_cli.localcluster with both CRD sets, then runs the
three operators one at a time, each under its own ServiceAccount bound to the rules it ships,
cluster-wide and without leader election. Trials are interleaved (trial 1 of every operator,
then trial 2, ...); every figure carries the 1-minute load average seen while it was taken.

- create → first pod and → all pods of one job with N pods (lmjob: N workers; Kubeflow: a
  PyTorchJob of 1 Master + N-1 Workers), from the audit log's microsecond stamps;
- API writes per job by the operator (audit log): create until a few seconds after all pods;
- --jobs jobs × --job-workers pods created at once (16 client threads): → all pods, writes
  per job, the operator's peak RSS (VmHWM) and idle RSS.
- --scale N (lmjob only, kwok nodes and the scheduler: pods reach Running): N jobs × 8,
  operator RSS, reconcile latency percentiles (create → status reports all workers
  Running), API server request rate.

Pods need no node for the comparison (no scheduler runs then); both operators only create
them. Prints the ratio table lmjob/Kubeflow in Markdown for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import REPO as REPO_ROOT
from harness import use_checkout

use_checkout()

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from lmjob_cli.localcluster.controlplane import ControlPlane, Options  # noqa: E402
from lmjob_cli.localcluster.kwok import Kwok, build_fake_node  # noqa: E402
from tests.operator.harness import (  # noqa: E402
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OperatorProcess,
    free_port,
    job_body,
    provision_operator_account,
    wait_for,
)
from tests.support.clients import build_kube_clients, provision_service_account  # noqa: E402

BUILD_K8S = REPO_ROOT / "scripts" / "build-k8s"
KUBEFLOW_NAMESPACE = "kubeflow"  # the release's namespace: its cert rotator's Secret lives here
KUBEFLOW_ACCOUNT = "training-operator"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
IMAGE = "registry.example/trainer:bench"


def load() -> float:
    return os.getloadavg()[0]


def proc_status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the operators -------------------------------------------------------------------------


@dataclass
class Flavour:
    """One operator under test: how to start it and what its jobs and pods look like."""

    name: str
    user: str  # audit username
    start: Callable[[], Any]  # returns an object with .proc (Popen) and .stop()
    create: Callable[[Any, str, str, int], None]  # kube, namespace, name, pods
    pod_selector: str  # the training pods of every job in a namespace
    job_resource: str  # plural of its job kind
    is_training_pod: Callable[[str], bool]  # by pod name
    results: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def record(self, measure: str, value: float) -> None:
        self.results.setdefault(measure, []).append((value, load()))


def create_lmjob(kube: Any, namespace: str, name: str, pods: int) -> None:
    body = job_body(name, {"command": ["train"], "image": IMAGE, "workers": {"replicas": pods}})
    kube.custom.create_namespaced_custom_object(
        "lmjob.dev", "v1alpha1", namespace, "largemodeljobs", body
    )


def create_pytorchjob(kube: Any, namespace: str, name: str, pods: int) -> None:
    def replicas(n: int) -> dict:
        container = {"name": "pytorch", "image": IMAGE, "command": ["train"]}
        return {
            "replicas": n,
            "restartPolicy": "OnFailure",
            "template": {"spec": {"containers": [container]}},
        }

    specs = {"Master": replicas(1)}
    if pods > 1:
        specs["Worker"] = replicas(pods - 1)
    body = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": specs},
    }
    kube.custom.create_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", body
    )


# Where its webhook server reads the certificates its cert rotator keeps in a Secret; in
# its Deployment that Secret is mounted here. Fixed in its source (pkg/cert).
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
WEBHOOK_SECRET = "training-operator-webhook-cert"


def mount_webhook_secret(kube: Any, stop: threading.Event) -> None:
    """Play the kubelet's Secret volume: copy the rotator's certificates into the cert dir."""
    while not stop.is_set():
        try:
            data = kube.core.read_namespaced_secret(WEBHOOK_SECRET, KUBEFLOW_NAMESPACE).data or {}
        except ApiException:
            data = {}
        if "tls.crt" in data and "tls.key" in data:
            WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (WEBHOOK_CERT_DIR / key).write_bytes(base64.b64decode(value))
            return
        stop.wait(0.2)


class GoOperator:
    """Kubeflow's training-operator binary, as its Deployment runs it (default flags), with
    free local ports and a kubeconfig holding its ServiceAccount's token."""

    def __init__(self, binary: Path, kubeconfig: Path, log_path: Path, kube: Any) -> None:
        self.binary, self.kubeconfig, self.log_path = binary, kubeconfig, log_path
        self.kube = kube
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GoOperator:
        metrics, health, webhook = free_port(), free_port(), free_port()
        args = [
            str(self.binary),
            f"--kubeconfig={self.kubeconfig}",
            f"--metrics-bind-address=127.0.0.1:{metrics}",
            f"--health-probe-bind-address=127.0.0.1:{health}",
            f"--webhook-server-port={webhook}",
        ]
        env = {**os.environ, "MY_POD_NAMESPACE": KUBEFLOW_NAMESPACE}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            # readyz answers once its certificates exist and the controllers are set up.
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"training-operator exited {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        stop = threading.Event()
        threading.Thread(target=mount_webhook_secret, args=(self.kube, stop), daemon=True).start()
        try:
            # Its cert rotator looks for the mounted files with backoff (1, 2, 4... s).
            wait_for(ready, timeout=120, what="training-operator readyz")
        finally:
            stop.set()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def provision_kubeflow_account(plane: ControlPlane, share: Path, kubeconfig: Path) -> Path:
    """Kubeflow's ServiceAccount bound to the ClusterRole its release ships (rbac/role.yaml)."""
    return provision_service_account(
        plane,
        namespace=KUBEFLOW_NAMESPACE,
        account=KUBEFLOW_ACCOUNT,
        role=yaml.safe_load((share / "rbac" / "role.yaml").read_text()),
        binding_name="training-operator-bench",
        kubeconfig_path=kubeconfig,
        # The release's overlays generate it empty; the rotator fills it.
        secrets=(client.V1Secret(metadata=client.V1ObjectMeta(name=WEBHOOK_SECRET)),),
    )


# -- measurements --------------------------------------------------------------------------


def wait_for_pods(kube: Any, namespace: str, selector: str, expected: int, timeout: float) -> None:
    """Until `expected` pods match (a list of names only, raw JSON: cheap next to the run)."""

    def count() -> int:
        resp = kube.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        return len(json.loads(resp.data)["items"])

    wait_for(lambda: count() >= expected, timeout=timeout, interval=0.2, what="pods")


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pod_times(
    plane: ControlPlane, since: int, flavour: Flavour, namespace: str
) -> tuple[float, float]:
    """(first, last) training pod created, in seconds after the first job's create, both from
    the API server's audit log (microsecond stamps): the create's request received, and each
    pod create's response. A client-side watch falls behind (and is closed by the API server)
    when a burst makes thousands of pods on two cores; the audit log is written in line."""
    job_created = None
    done: list[float] = []
    for event in plane.audit_events(since):
        ref = event.get("objectRef") or {}
        if event.get("stage") != "ResponseComplete" or ref.get("namespace") != namespace:
            continue
        if event.get("verb") != "create" or (event.get("responseStatus") or {}).get("code") != 201:
            continue
        if ref.get("resource") == flavour.job_resource and job_created is None:
            job_created = _stamp(event["requestReceivedTimestamp"])
        elif (
            ref.get("resource") == "pods"
            and event.get("user", {}).get("username") == flavour.user
            and flavour.is_training_pod(ref.get("name", ""))
        ):
            done.append(_stamp(event["stageTimestamp"]))
    assert job_created is not None and done, f"no job or pod creates in {namespace}'s audit"
    return min(done) - job_created, max(done) - job_created


def new_namespace(kube: Any, name: str) -> str:
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def delete_namespace(kube: Any, name: str) -> None:
    """Delete and wait until it is gone, so the next trial does not share the API server with
    the garbage collector."""
    kube.core.delete_namespace(name)

    def gone() -> bool:
        try:
            kube.core.read_namespace(name)
        except ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=600, interval=0.5, what=f"namespace {name} deleted")


def writes(plane: ControlPlane, since: int, user: str, namespace: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for event in plane.audit_events(since):
        if event.get("user", {}).get("username") != user or event.get("verb") not in WRITE_VERBS:
            continue
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace:
            continue
        resource = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        counts[(event["verb"], resource)] += 1
    return counts


SETTLE_S = 5.0  # after all pods exist: the status writes that follow still count


def trial_one_job(
    plane: ControlPlane, kube: Any, flavour: Flavour, pods: int, trial: int
) -> collections.Counter:
    namespace = new_namespace(kube, f"{flavour.name}-{pods}-{trial}")
    wait_for(lambda: _has_default_sa(kube, namespace), timeout=30)
    since = plane.audit_offset()
    flavour.create(kube, namespace, "job", pods)
    wait_for_pods(kube, namespace, flavour.pod_selector, pods, 180)
    time.sleep(SETTLE_S)
    first, last = pod_times(plane, since, flavour, namespace)
    flavour.record(f"first pod, {pods} pods", first)
    flavour.record(f"all pods, {pods} pods", last)
    counts = writes(plane, since, flavour.user, namespace)
    flavour.record(f"API writes per job, {pods} pods", sum(counts.values()))
    delete_namespace(kube, namespace)
    return counts


def trial_many_jobs(
    plane: ControlPlane,
    kube: Any,
    flavour: Flavour,
    operator: Any,
    jobs: int,
    pods: int,
    trial: int,
) -> str:
    """The burst; returns its namespace for the caller to delete."""
    namespace = new_namespace(kube, f"{flavour.name}-many-{trial}")
    wait_for(lambda: _has_default_sa(kube, namespace), timeout=30)
    flavour.record("RSS idle (MiB)", proc_status_mib(operator.proc.pid, "VmRSS"))
    since = plane.audit_offset()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: flavour.create(kube, namespace, f"j{i}", pods), range(jobs)))
    wait_for_pods(kube, namespace, flavour.pod_selector, jobs * pods, 1800)
    time.sleep(SETTLE_S)
    _, last = pod_times(plane, since, flavour, namespace)
    flavour.record(f"all pods, {jobs} jobs × {pods}", last)
    counts = writes(plane, since, flavour.user, namespace)
    flavour.record(f"API writes per job, {jobs} jobs × {pods}", sum(counts.values()) / jobs)
    flavour.record(
        f"peak RSS, {jobs} jobs × {pods} (MiB)", proc_status_mib(operator.proc.pid, "VmHWM")
    )
    return namespace


def _has_default_sa(kube: Any, namespace: str) -> bool:
    try:
        kube.core.read_namespaced_service_account("default", namespace)
        return True
    except ApiException:
        return False


# -- scale: lmjob alone, pods Running through kwok ----------------------------------------

KWOK_NODES = 10  # the scheduler spreads the pods; each fake node takes up to 1M


class JobWatch:
    """When each job's status first reports all its workers Ready: list, then watch from the
    list's resourceVersion; when the API server ends the watch (a slow reader during a burst),
    list and watch again (raw JSON: no model decoding on our side)."""

    def __init__(self, kube: Any, namespace: str, workers: int) -> None:
        self.kube, self.namespace, self.workers = kube, namespace, workers
        self.settled: dict[str, float] = {}
        self._stop = threading.Event()
        self._resp: Any = None
        threading.Thread(target=self._run, daemon=True).start()

    def _see(self, obj: dict) -> None:
        name = (obj.get("metadata") or {}).get("name")
        ready = ((obj.get("status") or {}).get("workers") or {}).get("ready", 0)
        if name and name not in self.settled and ready >= self.workers:
            self.settled[name] = time.perf_counter()

    def _run(self) -> None:
        args = ("lmjob.dev", "v1alpha1", self.namespace, "largemodeljobs")
        custom = self.kube.custom
        while not self._stop.is_set():
            try:
                listed = json.loads(
                    custom.list_namespaced_custom_object(*args, _preload_content=False).data
                )
                for obj in listed["items"]:
                    self._see(obj)
                self._resp = custom.list_namespaced_custom_object(
                    *args,
                    watch=True,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=3600,
                    _preload_content=False,
                )
                buffer = b""
                for chunk in self._resp.stream(65536):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._see(json.loads(line).get("object") or {})
            except Exception:  # a watch ended mid-chunk, or closed by close(): list again
                time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        if self._resp is not None:
            self._resp.release_conn()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_scale(state: Path, jobs: int, workers: int = 8) -> list[str]:
    """N jobs × 8 workers created at once; pods scheduled onto kwok nodes and Running."""
    plane = ControlPlane(state / "scale-cp", Options(unlimited_inflight=True))
    plane.start()
    kwok = operator = None
    try:
        kube = build_kube_clients(plane.kubeconfig)
        # Pod IPs on loopback: the operator's progress scrape of a Running worker is refused
        # at once (kwok pods serve no metrics); unroutable IPs would hold each scrape for its
        # whole timeout and the status of 1,000 jobs behind them.
        kwok = Kwok(plane, state / "kwok", cidr="127.128.0.0/12", node_ip="127.127.0.1")
        kwok.start()
        for i in range(KWOK_NODES):
            # Untainted: every pod of the benchmark lands on them.
            node = build_fake_node(
                f"kwok-{i}", gpus=0, cpus=1000, memory=2**40, pods=1_000_000, tainted=False
            )
            kube.core.create_node(node)
        for i in range(KWOK_NODES):
            kwok.wait_ready(kube.core, f"kwok-{i}", timeout=60)
        lmjob_kubeconfig = provision_operator_account(plane, state / "scale-lmjob.kubeconfig")
        operator = OperatorProcess(
            lmjob_kubeconfig, [], state / "scale-lmjob.log", {"LMJOB_TRAINER_IMAGE": IMAGE}
        )
        operator.start()
        namespace = new_namespace(kube, "scale")
        wait_for(lambda: _has_default_sa(kube, namespace), timeout=30)
        time.sleep(2)
        idle = proc_status_mib(operator.proc.pid, "VmRSS")
        load_before = load()
        watch = JobWatch(kube, namespace, workers)
        since = plane.audit_offset()
        created: dict[str, float] = {}
        started = time.perf_counter()

        def create(i: int) -> None:
            created[f"s{i}"] = time.perf_counter()
            create_lmjob(kube, namespace, f"s{i}", workers)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(jobs)))
        issued = time.perf_counter() - started
        peak = 0.0
        deadline = time.monotonic() + 3600
        while len(watch.settled) < jobs and time.monotonic() < deadline:
            peak = max(peak, proc_status_mib(operator.proc.pid, "VmRSS"))
            time.sleep(1)
        elapsed = time.perf_counter() - started
        watch.close()
        load_after = load()
        hwm = proc_status_mib(operator.proc.pid, "VmHWM")
        latencies = [watch.settled[n] - created[n] for n in watch.settled]
        events = list(plane.audit_events(since))
        user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
        by_operator = [e for e in events if e.get("user", {}).get("username") == user]
        op_writes = sum(1 for e in by_operator if e.get("verb") in WRITE_VERBS)
    finally:
        if operator is not None:
            operator.stop()
        if kwok is not None:
            kwok.stop()
        plane.stop()
    lines = [
        f"Scale: {jobs} jobs × {workers} workers created at once ({jobs * (workers + 1)} pods with "
        f"the rendezvous pods) on {KWOK_NODES} kwok nodes, scheduler on, pods Running and Ready "
        f"through kwok; load average {load_before:.1f} before, {load_after:.1f} after.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| jobs whose status reports all {workers} workers Ready | {len(watch.settled)} / {jobs} |",
        f"| create calls issued (16 client threads) | {issued:.1f} s |",
        f"| first create → last job settled | {elapsed:.1f} s |",
    ]
    if latencies:
        for q in (0.5, 0.9, 0.99):
            lines.append(
                f"| create → status all workers Ready, p{int(q * 100)} | {percentile(latencies, q):.1f} s |"
            )
        lines.append(f"| … max | {max(latencies):.1f} s |")
    lines += [
        f"| operator RSS idle / peak (sampled) / VmHWM | {idle:.0f} / {peak:.0f} / {hwm:.0f} MiB |",
        f"| API server requests (all clients), per second | {len(events) / elapsed:.0f} |",
        f"| operator requests per second (writes per job) | {len(by_operator) / elapsed:.0f} "
        f"({op_writes / jobs:.1f}) |",
    ]
    return lines


# -- the run -------------------------------------------------------------------------------


def build_binaries() -> Path:
    """scripts/build-k8s for the control plane and kwok, then its optional kubeflow target;
    returns the bin dir (both are no-ops when the stamps are current)."""
    for args in ([], ["kubeflow"]):
        subprocess.run([sys.executable, str(BUILD_K8S), *args], check=True)
    out = subprocess.run(
        [sys.executable, str(BUILD_K8S), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def build_flavours(plane: ControlPlane, bin_dir: Path, state: Path) -> list[Flavour]:
    lmjob_kubeconfig = provision_operator_account(plane, state / "lmjob.kubeconfig")
    share = bin_dir.parent / "share" / "training-operator"
    kubeflow_kubeconfig = provision_kubeflow_account(plane, share, state / "kubeflow.kubeconfig")

    def start_lmjob() -> OperatorProcess:
        env = {"LMJOB_TRAINER_IMAGE": IMAGE}  # everything else at the operator's defaults
        # --standalone: no peering, as Kubeflow runs without leader election by default.
        operator = OperatorProcess(lmjob_kubeconfig, [], state / "lmjob.log", env)
        operator.start()
        return operator

    shutil.rmtree(WEBHOOK_CERT_DIR, ignore_errors=True)  # a previous run's certificates
    kube = build_kube_clients(plane.kubeconfig)

    def start_go(binary: str) -> Callable[[], GoOperator]:
        return lambda: GoOperator(
            bin_dir / binary, kubeflow_kubeconfig, state / f"{binary}.log", kube
        ).start()

    kubeflow_user = f"system:serviceaccount:{KUBEFLOW_NAMESPACE}:{KUBEFLOW_ACCOUNT}"
    kubeflow_pods = "training.kubeflow.org/operator-name=pytorchjob-controller"
    return [
        Flavour(
            "lmjob",
            f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}",
            start_lmjob,
            create_lmjob,
            "lmjob.dev/role=worker",
            "largemodeljobs",
            lambda name: "-worker-" in name,  # not the rendezvous store
        ),
        Flavour(
            "kubeflow",
            kubeflow_user,
            start_go("training-operator"),
            create_pytorchjob,
            kubeflow_pods,
            "pytorchjobs",
            lambda name: True,  # Master and Workers
        ),
        Flavour(
            "kubeflow-unlimited",
            kubeflow_user,
            start_go("training-operator-unlimited"),
            create_pytorchjob,
            kubeflow_pods,
            "pytorchjobs",
            lambda name: True,
        ),
    ]


def run_comparison(
    plane: ControlPlane, kube: Any, flavours: list[Flavour], args: argparse.Namespace
) -> dict[str, dict[str, collections.Counter]]:
    breakdown: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter)
    )
    for trial in range(args.repeats):
        for flavour in flavours:
            print(
                f"-- trial {trial + 1}/{args.repeats}: {flavour.name}", file=sys.stderr, flush=True
            )
            operator = flavour.start()
            time.sleep(2)  # informers synced, first list handled
            try:
                for pods in args.workers:
                    counts = trial_one_job(plane, kube, flavour, pods, trial)
                    breakdown[flavour.name][f"{pods} pods"].update(counts)
                namespace = ""
                if args.jobs and trial < args.burst_repeats:
                    namespace = trial_many_jobs(
                        plane, kube, flavour, operator, args.jobs, args.job_workers, trial
                    )
                if namespace:
                    # With the operator still running: lmjob's finalizers need it.
                    delete_namespace(kube, namespace)
            finally:
                operator.stop()
    return breakdown


def median(flavour: Flavour, measure: str) -> float | None:
    values = [v for v, _ in flavour.results.get(measure, [])]
    return statistics.median(values) if values else None


def fmt(value: float | None, measure: str) -> str:
    if value is None:
        return "—"
    if "MiB" in measure:
        return f"{value:.0f} MiB"
    if "writes" in measure:
        return f"{value:.1f}"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def ratio_table(flavours: list[Flavour]) -> list[str]:
    lmjob = flavours[0]
    if len(flavours) != 3:
        return [
            f"| {m} | {', '.join(f'{f.name} {fmt(median(f, m), m)}' for f in flavours)} |"
            for m in lmjob.results
        ]
    lines = [
        "| measure | lmjob | Kubeflow as shipped | Kubeflow unlimited | lmjob / shipped "
        "| lmjob / unlimited | load (1-min avg, min–max) | trials |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for measure in lmjob.results:
        values = [median(f, measure) for f in flavours]
        loads = [ld for f in flavours for _, ld in f.results.get(measure, [])]
        ratios = [
            f"{values[0] / other:.2f}×" if values[0] is not None and other else "—"
            for other in values[1:]
        ]
        lines.append(
            f"| {measure} | {' | '.join(fmt(v, measure) for v in values)} | {' | '.join(ratios)} "
            f"| {min(loads):.1f}–{max(loads):.1f} | {len(lmjob.results[measure])} |"
        )
    return lines


def describe_machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="*", default=[8, 64], help="pods per job")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=200, help="jobs created at once (0: skip)")
    parser.add_argument("--job-workers", type=int, default=8)
    parser.add_argument("--burst-repeats", type=int, default=1, help="trials that run the burst")
    parser.add_argument("--scale", type=int, default=0, help="lmjob alone: N jobs × 8 on kwok")
    parser.add_argument(
        "--operators",
        default="lmjob,kubeflow,kubeflow-unlimited",
        help="which to run (comma-separated; the ratio columns need all three)",
    )
    args = parser.parse_args()

    bin_dir = build_binaries()
    state = Path(tempfile.mkdtemp(prefix="lmjob-kubeflow-compare-"))
    print(f"state and logs in {state}", file=sys.stderr)
    started_load = load()
    lines: list[str] = []
    if args.repeats:
        plane = ControlPlane(state / "cp", Options(unlimited_inflight=True, scheduler=False))
        plane.start()
        try:
            plane.install_crds(
                bin_dir.parent / "share" / "training-operator" / "crd", time.monotonic() + 120
            )
            kube = build_kube_clients(plane.kubeconfig)
            chosen = args.operators.split(",")
            flavours = [f for f in build_flavours(plane, bin_dir, state) if f.name in chosen]
            breakdown = run_comparison(plane, kube, flavours, args)
        finally:
            plane.stop()
        lines += [
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {describe_machine()}; "
            f"load average {started_load:.1f} at the start. Control plane of lmjob_cli.localcluster "
            "(unlimited in-flight, no scheduler: pods stay Pending), each operator cluster-wide as "
            "its own ServiceAccount, no leader election; medians of interleaved trials.",
            "",
            *ratio_table(flavours),
            "",
            "API writes by kind (sum over trials):",
            "",
        ]
        for name, per_size in breakdown.items():
            for size, counts in per_size.items():
                detail = ", ".join(f"{verb} {res} {n}" for (verb, res), n in counts.most_common())
                lines.append(f"- {name}, {size}: {detail}")
    if args.scale:
        lines += ["", *run_scale(state, args.scale)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
