"""Operator benchmarks on the real control plane (lmjob_cli.localcluster): create latency, API calls, memory.

    python benchmarks/operator_bench.py [--workers 8 64] [--repeats 3] [--jobs 200]

1. Time from `create` to every pod of the job existing (watched, not polled), for N workers.
2. API requests the operator makes per job, from the API server's audit log: from create
   until the job is Running (the test plays kubelet), by verb and resource.
3. The operator's RSS when it handles --jobs jobs of 2 workers each (cluster-wide).

The operator runs as `python -m lmjob_operator` with its own ServiceAccount bound to the
chart's rules, exactly as in the tests. Prints a Markdown section for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import use_checkout

use_checkout()

from kubernetes import client, watch  # noqa: E402

from lmjob_cli.localcluster.controlplane import ControlPlane, Options  # noqa: E402
from tests.operator.harness import (  # noqa: E402
    OPERATOR_ENV,
    OperatorProcess,
    create_job,
    job_status,
    live_pod_names,
    provision_operator_account,
    run_pods,
    wait_for,
)
from tests.support.clients import build_kube_clients  # noqa: E402

OPERATOR_USER = "system:serviceaccount:lmjob-operator-tests:lmjob-operator"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def create_latency(kube, namespace: str, name: str, workers: int) -> float:
    """Seconds from the create call to all `workers` worker pods existing."""
    seen: set[str] = set()
    done = threading.Event()
    ready = threading.Event()

    def watch_pods() -> None:
        stream = watch.Watch()
        ready.set()
        for event in stream.stream(
            kube.core.list_namespaced_pod,
            namespace,
            label_selector=f"lmjob.dev/job-name={name},lmjob.dev/role=worker",
            timeout_seconds=120,
        ):
            if event["type"] == "ADDED":
                seen.add(event["object"].metadata.name)
                if len(seen) == workers:
                    done.set()
                    stream.stop()

    thread = threading.Thread(target=watch_pods, daemon=True)
    thread.start()
    ready.wait()
    time.sleep(0.3)  # the watch request is on the wire
    started = time.perf_counter()
    create_job(
        kube.custom, namespace, name, {"command": ["train"], "workers": {"replicas": workers}}
    )
    if not done.wait(120):
        raise RuntimeError(f"{name}: only {len(seen)}/{workers} pods after 120s")
    return time.perf_counter() - started


def api_calls(plane: ControlPlane, since: int, namespace: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for event in plane.audit_events(since):
        if event.get("user", {}).get("username") != OPERATOR_USER:
            continue
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace:
            continue
        resource = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        counts[(event["verb"], resource)] += 1
    return counts


def bench_jobs(
    plane: ControlPlane, kube, operator: OperatorProcess, sizes: list[int], repeats: int
) -> list[str]:
    lines = [
        f"| workers | create → all pods exist (median of {repeats}) | min | max "
        "| API requests per job (create → Running) |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for workers in sizes:
        times, per_job = [], []
        for r in range(repeats):
            namespace = f"bench-{workers}-{r}"
            kube.core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
            wait_for(lambda ns=namespace: _has_default_sa(kube, ns), timeout=30)
            since = plane.audit_offset()
            name = f"j{workers}"
            times.append(create_latency(kube, namespace, name, workers))
            wait_for(
                lambda ns=namespace, n=name: (
                    len(live_pod_names(kube.core, ns, n, "rendezvous")) == 1
                )
            )
            run_pods(kube.core, namespace, name)
            wait_for(
                lambda ns=namespace, n=name: (
                    job_status(kube.custom, ns, n).get("phase") == "Running"
                ),
                timeout=60,
            )
            time.sleep(3)  # let any trailing writes land in the audit log
            per_job.append(api_calls(plane, since, namespace))
            kube.core.delete_namespace(namespace)
        total = statistics.median(sum(c.values()) for c in per_job)
        breakdown = collections.Counter()
        for c in per_job:
            breakdown.update(c)
        detail = ", ".join(
            f"{verb} {res} {n / len(per_job):g}"
            for (verb, res), n in sorted(breakdown.items(), key=lambda kv: -kv[1])
        )
        lines.append(
            f"| {workers} | {statistics.median(times):.2f} s | {min(times):.2f} s | {max(times):.2f} s | "
            f"{total:g} ({detail}) |"
        )
    return lines


def _has_default_sa(kube, namespace: str) -> bool:
    try:
        kube.core.read_namespaced_service_account("default", namespace)
        return True
    except client.exceptions.ApiException:
        return False


def bench_memory(kube, operator: OperatorProcess, jobs: int) -> list[str]:
    namespace = "bench-rss"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for(lambda: _has_default_sa(kube, namespace), timeout=30)
    assert operator.proc is not None
    idle = rss_mib(operator.proc.pid)
    started = time.perf_counter()
    for i in range(jobs):
        create_job(
            kube.custom, namespace, f"m{i}", {"command": ["train"], "workers": {"replicas": 2}}
        )
    issued_s = time.perf_counter() - started

    def all_created() -> bool:
        pods = kube.core.list_namespaced_pod(
            namespace, label_selector="lmjob.dev/role=worker"
        ).items
        return len(pods) >= 2 * jobs

    wait_for(all_created, timeout=600, interval=1.0)
    created_s = time.perf_counter() - started

    def all_pending_reported() -> bool:
        items = kube.custom.list_namespaced_custom_object(
            "lmjob.dev", "v1alpha1", namespace, "largemodeljobs"
        )["items"]
        return (
            sum(1 for o in items if (o.get("status") or {}).get("workers", {}).get("active") == 2)
            == jobs
        )

    wait_for(all_pending_reported, timeout=600, interval=1.0)
    settled_s = time.perf_counter() - started
    time.sleep(5)
    busy = rss_mib(operator.proc.pid)
    return [
        f"| operator RSS, no jobs | {idle:.0f} MiB |",
        f"| operator RSS, {jobs} jobs × 2 workers ({3 * jobs} pods) | {busy:.0f} MiB |",
        f"| {jobs} job creations issued by the client (sequential) | {issued_s:.1f} s |",
        f"| {jobs} jobs created → all {2 * jobs} worker pods exist | {created_s:.1f} s |",
        f"| {jobs} jobs created → every status reports its workers | {settled_s:.1f} s |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="*", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="lmjob-bench-"))
    plane = ControlPlane(state / "cp", Options(unlimited_inflight=True))
    plane.start()
    operator = None
    try:
        kube = build_kube_clients(plane.kubeconfig)
        kubeconfig = provision_operator_account(plane, state / "operator.kubeconfig")
        env = {**OPERATOR_ENV, "LMJOB_RESYNC_SECONDS": "15"}
        operator = OperatorProcess(kubeconfig, [], state / "operator.log", env)  # cluster-wide
        operator.start()
        job_lines = bench_jobs(plane, kube, operator, args.workers, args.repeats)
        memory_lines = bench_memory(kube, operator, args.jobs)
    finally:
        if operator is not None:
            operator.stop()
        plane.stop()

    cpu = platform.processor() or platform.machine()
    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({cpu}), Python "
        f"{platform.python_version()}, control plane from lmjob_cli.localcluster (unlimited in-flight), "
        "operator cluster-wide under its own ServiceAccount.\n"
    )
    print("\n".join(job_lines))
    print()
    print("| measure | value |\n| --- | ---: |")
    print("\n".join(memory_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
