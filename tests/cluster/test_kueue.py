"""Real Kueue (built by scripts/build-k8s) on the test control plane.

1. Kueue itself: its controllers activate the queues, its webhook suspends a queued Job at
   creation, its scheduler admits Jobs up to the ClusterQueue's quota with the flavor's
   node labels, explains the one it holds back, and admits it once an eviction frees quota.
2. lmjob's side of the protocol (operator/lmjob_operator/kueue_workload.py), step by step
   without the operator: the Workload built for a LargeModelJob is accepted and admitted
   by Kueue, a higher-priority one preempts it, `decide` reads each verdict, and the status
   patches it prescribes move Kueue on (requeue, finish). The operator doing the same on
   its own: tests/operator/test_cluster_kueue.py.
3. `lmjob cluster up --kueue`: users get the same Kueue on their dev cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lmjob_cli.localcluster import lifecycle
from lmjob_operator.config import OperatorConfig
from lmjob_operator.kueue_workload import (
    QUEUE_LABEL,
    RESOURCE_IN_USE_FINALIZER,
    WORKERS,
    Action,
    Priority,
    build_workload,
    decide,
    finish_status,
    kueue_workload_name,
    placements,
    requeue_status,
)
from lmjob_operator.plan import parse_job
from lmjob_operator.rendezvous import build_rendezvous_pod
from lmjob_operator.worker_pod import build_worker_pod
from tests.operator.factories import TRAINING
from tests.operator.harness import wait_for
from tests.support.clients import KubeClients
from tests.support.kueue_queues import GPU, Queues, gpu_queues, kueue_object

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
FLAVOR_LABEL = "lmjob.dev/test-flavor"


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


@pytest.fixture
def queues(kueue, kube: KubeClients, namespace: str, request) -> Iterator[Queues]:
    gpus, extra = getattr(request, "param", (2, {}))
    flavor = {"nodeLabels": {FLAVOR_LABEL: f"{namespace}-gpu"}}
    with gpu_queues(
        kube.custom, namespace, gpus=gpus, flavor_spec=flavor, cpu="10", memory="64Gi", **extra
    ) as q:
        yield q


def gpu_job(name: str, queue: str) -> client.V1Job:
    """A one-pod Job asking for one GPU, queued in `queue` and not suspended by its author."""
    container = client.V1Container(
        name="train",
        image="registry.example/none:1",
        command=["true"],
        resources=client.V1ResourceRequirements(
            requests={"cpu": "100m", GPU: "1"}, limits={GPU: "1"}
        ),
    )
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels={QUEUE_LABEL: queue}),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(restart_policy="Never", containers=[container])
            ),
        ),
    )


def owned_workload(custom, namespace: str, owner: str) -> dict[str, Any]:
    for w in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]:
        if any(o["name"] == owner for o in w["metadata"].get("ownerReferences", [])):
            return w
    return {}


def test_kueue_admits_jobs_up_to_quota_and_explains_the_rest(
    queues: Queues, kube: KubeClients
) -> None:
    custom, batch, namespace = kube.custom, client.BatchV1Api(kube.api), queues.namespace
    names = [f"job-{i}" for i in range(3)]
    for name in names:
        created = batch.create_namespaced_job(namespace, gpu_job(name, queues.local_queue))
        # Kueue's mutating webhook (reached by URL with our CA) suspends it on admission.
        assert created.spec.suspend is True, f"{name} was not suspended by Kueue's webhook"

    def running() -> list[str]:
        jobs = batch.list_namespaced_job(namespace).items
        return sorted(j.metadata.name for j in jobs if j.spec.suspend is False)

    # Two GPUs of quota: two jobs admitted and unsuspended, the third held back.
    admitted = wait_for(lambda: len(running()) == 2 and running(), timeout=30,
                        what="two jobs admitted")  # fmt: skip
    (held,) = set(names) - set(admitted)
    for name in admitted:
        job = batch.read_namespaced_job(name, namespace)
        # The admitted flavor's node labels reach the pods' node selector.
        assert job.spec.template.spec.node_selector == {FLAVOR_LABEL: queues.flavor}

    pending = wait_for(
        lambda: (w := owned_workload(custom, namespace, held))
        and condition(w, "QuotaReserved").get("status") == "False" and w,
        timeout=30, what=f"{held}'s workload pending",
    )  # fmt: skip
    reason = condition(pending, "QuotaReserved")
    assert reason["reason"] == "Pending", reason
    assert "insufficient unused quota" in reason["message"], reason
    assert GPU in reason["message"] and queues.flavor in reason["message"], reason
    assert batch.read_namespaced_job(held, namespace).spec.suspend is True
    # lmjob names its Workloads by Kueue's scheme: check it against Kueue's own naming.
    held_uid = batch.read_namespaced_job(held, namespace).metadata.uid
    assert pending["metadata"]["name"] == kueue_workload_name("Job", "batch", held, held_uid)

    admission = owned_workload(custom, namespace, admitted[0])["status"]["admission"]
    assert admission["clusterQueue"] == queues.cluster_queue
    assert admission["podSetAssignments"][0]["flavors"][GPU] == queues.flavor

    # An admin deactivates an admitted job's Workload: Kueue evicts it (suspends the Job
    # again) and the quota it frees admits the held job. (Deleting the Job would wait for
    # the garbage collector, which notices a new CRD's objects only at its next 30 s
    # discovery resync.)
    evicted = owned_workload(custom, namespace, admitted[0])
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "workloads", evicted["metadata"]["name"],
        {"spec": {"active": False}},
    )  # fmt: skip
    wait_for(lambda: held in running() and admitted[0] not in running(), timeout=30,
             what=f"{admitted[0]} evicted and {held} admitted")  # fmt: skip
    reason = condition(owned_workload(custom, namespace, admitted[0]), "Evicted")
    assert (reason.get("status"), reason.get("reason")) == ("True", "Deactivated"), reason


PREEMPTING = (8, {"preemption": {"withinClusterQueue": "LowerPriority"}})


@pytest.mark.parametrize("queues", [PREEMPTING], indirect=True)
def test_largemodeljob_workload_admitted_preempted_requeued_finished(
    queues: Queues, kube: KubeClients
) -> None:
    custom, namespace = kube.custom, queues.namespace
    config = OperatorConfig(trainer_image="registry.example/lmjob-trainer:1")
    classes = {"low": 10, "high": 1000}
    for level, value in classes.items():
        custom.create_cluster_custom_object(
            GROUP, VERSION, "workloadpriorityclasses",
            kueue_object("WorkloadPriorityClass", f"{namespace}-{level}", value=value),
        )  # fmt: skip

    def submit(name: str, level: str) -> dict[str, Any]:
        """The job (no operator runs: it only owns the Workload) and its Workload, built by
        lmjob's pure builder from the pods the operator would create."""
        body = custom.create_namespaced_custom_object(
            "lmjob.dev", "v1alpha1", namespace, "largemodeljobs",
            {"apiVersion": "lmjob.dev/v1alpha1", "kind": "LargeModelJob",
             "metadata": {"name": name, "labels": {QUEUE_LABEL: queues.local_queue}},
             "spec": {"workers": {"replicas": 1, "resources": {"limits": {GPU: 8}}},
                      "training": TRAINING}},
        )  # fmt: skip
        job = parse_job(body)
        priority = Priority(f"{namespace}-{level}", classes[level], kueue_class=True)
        workload = build_workload(
            job, build_worker_pod(job, 0, 0, config), build_rendezvous_pod(job, config), priority
        )
        return custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "workloads", workload
        )

    def read(workload: dict[str, Any]) -> dict[str, Any]:
        name = workload["metadata"]["name"]
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workloads", name)

    def decision(workload: dict[str, Any], *, pods_active: bool = False):
        return decide(read(workload), pods_active=pods_active, finished=False)

    def patch_status(workload: dict[str, Any], patch: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "workloads", workload["metadata"]["name"], patch
        )

    try:
        low = submit("low", "low")
        wait_for(lambda: decision(low).action == Action.START, timeout=30, what="low admitted")
        flavor = custom.get_cluster_custom_object(GROUP, VERSION, "resourceflavors", queues.flavor)
        placement = placements(read(low), {queues.flavor: flavor})[WORKERS]
        assert placement.node_selector == {FLAVOR_LABEL: queues.flavor}
        assert placement.count == 1

        # A higher-priority job needs the same 8 GPUs: Kueue evicts the low one.
        high = submit("high", "high")
        stop = wait_for(
            lambda: (d := decision(low, pods_active=True)).action == Action.STOP and d,
            timeout=30, what="low evicted",
        )  # fmt: skip
        assert stop.queued and stop.reason == "EvictedPreempted", stop
        # Kueue waits for the job to stop: nothing is admitted while low holds the quota.
        assert decision(high).action == Action.WAIT
        # The pods are gone (graceful stop): give the reservation back as Kueue's job
        # reconciler would, and the high job is admitted while the low one waits, saying why.
        requeue = decision(low)
        assert requeue.action == Action.REQUEUE
        patch_status(low, requeue_status(read(low), datetime.now(UTC)))
        wait_for(lambda: decision(high).action == Action.START, timeout=30, what="high admitted")
        # First Kueue still says why it was preempted, then why it cannot be admitted now.
        waiting = wait_for(
            lambda: (d := decision(low)).action == Action.WAIT and d.reason == "Pending"
            and GPU in d.message and d,
            timeout=60, what="low pending on the GPU quota",
        )  # fmt: skip
        assert GPU in waiting.message, waiting
        assert condition(read(low), "Requeued").get("status") == "True"

        # The high job finishes: its Workload is marked Finished and let go; the low one is
        # admitted again (and would resume from its checkpoint).
        patch_status(high, finish_status(read(high), succeeded=True, message="done",
                                         now=datetime.now(UTC)))  # fmt: skip
        assert decide(read(high), pods_active=False, finished=True).action == Action.RELEASE
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "workloads", high["metadata"]["name"],
            {"metadata": {"finalizers": [
                f for f in read(high)["metadata"]["finalizers"] if f != RESOURCE_IN_USE_FINALIZER
            ]}},
        )  # fmt: skip
        wait_for(lambda: decision(low).action == Action.START, timeout=30, what="low readmitted")
    finally:
        for level in classes:
            custom.delete_cluster_custom_object(
                GROUP, VERSION, "workloadpriorityclasses", f"{namespace}-{level}"
            )


def test_cluster_up_kueue_runs_kueue_until_down(tmp_path: Path) -> None:
    source = os.pathsep.join(str(Path(__file__).parents[2] / d) for d in ("api", "cli"))

    def lmjob_cluster(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lmjob_cli.main", "cluster", "--state-dir", str(tmp_path),
             *args],
            capture_output=True, text=True, timeout=240,
            env=dict(os.environ, PYTHONPATH=source),
        )  # fmt: skip

    try:
        up = lmjob_cluster("up", "--nodes", "0", "--kueue")
        assert up.returncode == 0, up.stderr
        status = lmjob_cluster("status")
        assert status.returncode == 0 and "kueue" in status.stdout, status.stdout
        # Kueue's mutating webhook answers: it gives a new ClusterQueue Kueue's finalizer.
        plane = lifecycle.running_plane(tmp_path)
        assert plane is not None
        created = plane.kubectl(
            "create", "-o", "json", "-f", "-",
            input=json.dumps(kueue_object("ClusterQueue", "cq", {"resourceGroups": []})),
        )  # fmt: skip
        finalizers = json.loads(created.stdout)["metadata"].get("finalizers", [])
        assert RESOURCE_IN_USE_FINALIZER in finalizers, created.stdout
        pids = lifecycle.pids(tmp_path)
    finally:
        lmjob_cluster("down")
    assert not [pid for pid in pids if running(pid)], "left running"


def running(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
