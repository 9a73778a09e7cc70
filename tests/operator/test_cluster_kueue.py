"""LargeModelJobs as Kueue workloads, end to end: the operator (under the chart's RBAC) owns
one Workload per queued job and follows the real Kueue's verdicts on the real control plane
(docs/kueue.md).

1. Quota and bad input, in one session: a ClusterQueue with 2 GPUs of quota and three
   1-GPU jobs → two admitted and started on the admitted flavor's node (its node labels and
   toleration, nothing in the jobs' own templates), the third `Queued` with Kueue's reason;
   when one finishes its Workload is Finished and the third starts; all three succeed.
   Next to them, a job naming a queue no LocalQueue serves and one asking for more GPUs than
   the flavor ever holds show Kueue's reason in their conditions at once. The operator
   resyncs only every 120 s here: the Workload events alone bring Kueue's verdicts.
   The pods' statuses are played (as in the other operator tests) on a Node that advertises
   nvidia.com/gpu: two jobs at once cannot run as processes on this machine, which gives
   every pod the same loopback and so the same rendezvous port.
2. Preemption round trip with real training (process kubelet, torchrun, the built-in
   trainer): a low-priority job trains; a high-priority one arrives; Kueue evicts the low
   one, the operator stops its pod (SIGTERM: the trainer checkpoints the step it is on),
   shows `Queued` and gives the reservation back; the high one runs and succeeds; the low
   one is admitted again, resumes from its checkpoint and completes, its history redoing
   at most one step, and no restart counted against backoffLimit.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from lmjob_cli.localcluster.kubelet_node import TAINT, KubeletNode
from lmjob_cli.localcluster.node import build_capacity
from lmjob_operator.kueue_workload import (
    POD_SET_LABEL,
    PRIORITY_CLASS_LABEL,
    QUEUE_LABEL,
    RESOURCE_IN_USE_FINALIZER,
)
from lmjob_trainer.stragglers import TEST_SLOW_RANK_ENV
from tests.operator.harness import (
    GROUP as LMJOB_GROUP,
)
from tests.operator.harness import (
    OPERATOR_ENV,
    PLURAL,
    OperatorProcess,
    condition,
    free_port,
    job_status,
    live_pod_names,
    pods_of,
    set_pod_status,
    wait_for,
)
from tests.operator.harness import (
    VERSION as LMJOB_VERSION,
)
from tests.support.kueue_queues import GPU, gpu_queues, kueue_object

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KUEUE, V = "kueue.x-k8s.io", "v1beta2"
TOLERATION = {"key": TAINT["key"], "operator": "Exists", "effect": TAINT["effect"]}


def queues(kube, namespace: str, node: str, gpus: int, **extra: Any) -> Any:
    """Queues whose flavor places pods on test node `node` (its hostname label and a
    toleration of its taint), with `gpus` of quota."""
    flavor = {"nodeLabels": {"kubernetes.io/hostname": node}, "tolerations": [TOLERATION]}
    return gpu_queues(kube.custom, namespace, gpus=gpus, flavor_spec=flavor, **extra)


def submit(kube, namespace: str, name: str, spec: dict, labels: dict[str, str]) -> None:
    kube.custom.create_namespaced_custom_object(
        LMJOB_GROUP, LMJOB_VERSION, namespace, PLURAL,
        {"apiVersion": f"{LMJOB_GROUP}/{LMJOB_VERSION}", "kind": "LargeModelJob",
         "metadata": {"name": name, "labels": labels}, "spec": spec},
    )  # fmt: skip


def workload_of(kube, namespace: str, job: str) -> dict[str, Any]:
    for w in kube.custom.list_namespaced_custom_object(KUEUE, V, namespace, "workloads")["items"]:
        if any(o["name"] == job for o in w["metadata"].get("ownerReferences", [])):
            return w
    return {}


def phase(kube, namespace: str, job: str) -> str:
    return job_status(kube.custom, namespace, job).get("phase", "")


def queued_because(kube, namespace: str, job: str) -> dict[str, Any]:
    """The job's Queued condition while it is in phase Queued, else {}."""
    status = job_status(kube.custom, namespace, job)
    if status.get("phase") != "Queued":
        return {}
    return condition(status, "Queued")


def kueues_verdict(kube, namespace: str, job: str) -> dict[str, Any]:
    """The job's Queued condition once it carries Kueue's word, not the operator's own
    placeholder from before Kueue looked at the new Workload."""
    cond = queued_because(kube, namespace, job)
    if not cond or cond["reason"] == "WorkloadCreated" or "waiting for Kueue" in cond["message"]:
        return {}
    return cond


# -- 1. quota and bad input ----------------------------------------------------------------


@pytest.fixture
def gpu_node(kube, namespace: str, tmp_path: Path) -> Iterator[str]:
    """A Ready, tainted Node with 4 nvidia.com/gpu and no process kubelet behind it: the
    scheduler binds pods there and the test plays their statuses."""
    node = KubeletNode(
        kube.core, namespace, tmp_path / "node", lambda *_: None, taint=True,
        capacity=build_capacity(gpus=4),
    )  # fmt: skip
    node.start()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(Exception):
                node.heartbeat()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield namespace
    stop.set()
    thread.join(5)
    node.stop()
    with contextlib.suppress(ApiException):
        kube.core.delete_node(namespace)


@pytest.fixture
def event_driven_operator(kueue, operator_kubeconfig: Path, namespace: str, tmp_path: Path):
    """The operator with a 120 s resync: what happens sooner comes from watch events."""
    env = {**OPERATOR_ENV, "LMJOB_RESYNC_SECONDS": "120"}
    process = OperatorProcess(operator_kubeconfig, [namespace], tmp_path / "operator.log", env)
    process.start()
    yield process
    process.stop()
    log = process.log()
    assert "Traceback" not in log, f"operator log has a traceback:\n{log[-5000:]}"


def one_gpu(gpus: int = 1) -> dict[str, Any]:
    return {"command": ["train"], "workers": {"replicas": 1, "resources": {"limits": {GPU: gpus}}}}


def test_quota_admits_two_queues_the_third_with_kueues_reason_and_explains_bad_input(
    event_driven_operator, gpu_node: str, kube, namespace: str
) -> None:
    core = kube.core
    with queues(kube, namespace, gpu_node, gpus=2) as q:
        names = ["a", "b", "c"]
        for name in names:
            submit(kube, namespace, name, one_gpu(), {QUEUE_LABEL: q.local_queue})
        # Bad input: no LocalQueue "nope" (through spec.scheduling.queue); 3 GPUs of a flavor
        # that holds 2. Each shows Kueue's reason within a pass, not a silent wait.
        submitted = time.monotonic()
        submit(kube, namespace, "lost", {**one_gpu(), "scheduling": {"queue": "nope"}}, {})
        submit(kube, namespace, "huge", one_gpu(3), {QUEUE_LABEL: q.local_queue})

        def started() -> list[str]:
            return sorted(n for n in names if live_pod_names(core, namespace, n))

        running = wait_for(lambda: len(started()) == 2 and started(), timeout=30,
                           what="two jobs admitted and started")  # fmt: skip
        (held,) = set(names) - set(running)
        reason = wait_for(lambda: kueues_verdict(kube, namespace, held), timeout=15,
                          what=f"{held} Queued with Kueue's reason")  # fmt: skip
        assert reason["status"] == "True" and reason["reason"] == "Pending", reason
        assert "insufficient unused quota" in reason["message"], reason
        assert GPU in reason["message"] and q.flavor in reason["message"], reason
        assert not pods_of(core, namespace, held) and not pods_of(
            core, namespace, held, "rendezvous"
        )

        lost = wait_for(lambda: kueues_verdict(kube, namespace, "lost"), timeout=15,
                        what="lost Queued with Kueue's reason")  # fmt: skip
        huge = wait_for(lambda: kueues_verdict(kube, namespace, "huge"), timeout=15,
                        what="huge Queued with Kueue's reason")  # fmt: skip
        seconds = time.monotonic() - submitted
        assert seconds < 15, "Kueue's verdicts must reach status without waiting for a resync"
        assert lost["reason"] == "Inadmissible" and "nope" in lost["message"], lost
        assert huge["reason"] == "Pending" and q.flavor in huge["message"], huge
        for job in ("lost", "huge"):
            assert not pods_of(core, namespace, job), job

        for name in running:
            # The pods go where Kueue admitted them: the scheduler binds them to the GPU node
            # through the flavor's node labels and toleration (the jobs name neither).
            for role in ("worker", "rendezvous"):
                (pod,) = pods_of(core, namespace, name, role)
                assert pod.spec.node_selector == {"kubernetes.io/hostname": gpu_node}, pod.spec
                assert any(t.key == TAINT["key"] for t in pod.spec.tolerations), pod.spec
                assert not [k for k in pod.metadata.labels if k.startswith(f"{KUEUE}/")
                            and k != POD_SET_LABEL], pod.metadata.labels  # fmt: skip
            wait_for(lambda n=name: all(p.spec.node_name == gpu_node
                                        for p in pods_of(core, namespace, n)),
                     timeout=30, what=f"{name}'s worker bound")  # fmt: skip
            status = job_status(kube.custom, namespace, name)
            assert condition(status, "Queued")["reason"] == "Admitted", status

        def finish(name: str) -> None:
            for pod in live_pod_names(core, namespace, name, "rendezvous"):
                set_pod_status(core, namespace, pod, "Running")
            (worker,) = live_pod_names(core, namespace, name)
            set_pod_status(core, namespace, worker, "Running")
            wait_for(lambda: phase(kube, namespace, name) == "Running", timeout=15,
                     what=f"{name} Running")  # fmt: skip
            set_pod_status(core, namespace, worker, "Succeeded", exit_code=0)
            wait_for(lambda: phase(kube, namespace, name) == "Succeeded", timeout=15,
                     what=f"{name} Succeeded")  # fmt: skip
            # The store is still running: its quota is not handed on until it is gone.
            assert condition(workload_of(kube, namespace, name)["status"], "Finished") == {}
            # The operator deletes the store; as its kubelet, stop it and remove the pod.
            (store,) = wait_for(
                lambda: [p for p in pods_of(core, namespace, name, "rendezvous")
                         if p.metadata.deletion_timestamp],
                timeout=15, what=f"{name}'s store deleted",
            )  # fmt: skip
            core.delete_namespaced_pod(store.metadata.name, namespace, grace_period_seconds=0)

        # One finishes: its Workload is Finished and let go, which admits the held job.
        finish(running[0])
        done = wait_for(
            lambda: (w := workload_of(kube, namespace, running[0]))
            and condition(w.get("status") or {}, "Finished").get("status") == "True"
            and RESOURCE_IN_USE_FINALIZER not in w["metadata"].get("finalizers", []) and w,
            timeout=15, what=f"{running[0]}'s Workload Finished and released",
        )  # fmt: skip
        assert condition(done["status"], "Finished")["reason"] == "Succeeded", done
        wait_for(lambda: live_pod_names(core, namespace, held), timeout=30,
                 what=f"{held} started once quota is free")  # fmt: skip
        for name in (running[1], held):
            finish(name)
        assert [phase(kube, namespace, n) for n in names] == ["Succeeded"] * 3
        # The bad ones still wait, still saying why.
        assert queued_because(kube, namespace, "lost")["reason"] == "Inadmissible"
        for name in names:
            status = job_status(kube.custom, namespace, name)
            assert status["restarts"] == 0, status


# -- 2. preemption round trip with real training ---------------------------------------------


STEPS = 60
STEP_SECONDS = 0.15  # the trainer's test hook slows each step: eviction lands mid-training


def training(text: Path, steps: int, node_storage: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workers": {"replicas": 1, "procsPerWorker": 1, "resources": {"limits": {GPU: 1}}},
        "training": {
            "model": {"layers": 2, "heads": 2, "hidden": 32, "seqLen": 32},
            "data": {"source": str(text)},
            "schedule": {"warmupSteps": 0, "decay": "constant"},
            "steps": steps,
            "batch": {"microBatchSize": 4, "globalBatchSize": 4},
            "evaluation": {"everySteps": 1000, "steps": 1},
            # No periodic checkpoint in the run: what resumes is the one SIGTERM writes.
            "checkpoint": {"everySteps": 1000},
        },
        "metrics": {"port": free_port()},
    }
    if node_storage:
        spec["storage"] = {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}
    return spec


@pytest.mark.parametrize("kubelet", [8], indirect=True)
def test_preempted_job_checkpoints_waits_queued_and_resumes_redoing_at_most_a_step(
    kueue,
    kubelet,
    storage: Path,
    kube,
    namespace: str,
    corpus: Path,
) -> None:
    custom = kube.custom
    kubelet.extra_env[TEST_SLOW_RANK_ENV] = f"0:{STEP_SECONDS}"
    classes = {"low": 10, "high": 1000}
    for level, value in classes.items():
        custom.create_cluster_custom_object(
            KUEUE, V, "workloadpriorityclasses",
            kueue_object("WorkloadPriorityClass", f"{namespace}-{level}", value=value),
        )  # fmt: skip
    preempting = {"preemption": {"withinClusterQueue": "LowerPriority"}}
    try:
        with queues(kube, namespace, namespace, gpus=1, **preempting) as q:

            def labels(level: str) -> dict[str, str]:
                return {QUEUE_LABEL: q.local_queue, PRIORITY_CLASS_LABEL: f"{namespace}-{level}"}

            submit(
                kube, namespace, "low", training(corpus, STEPS, node_storage=True), labels("low")
            )
            wait_for(
                lambda: (job_status(custom, namespace, "low").get("progress") or {}).get("step"),
                timeout=120, what="low training",
            )  # fmt: skip
            submit(
                kube, namespace, "high", training(corpus, 10, node_storage=False), labels("high")
            )
            evicted = wait_for(lambda: queued_because(kube, namespace, "low"), timeout=60,
                               what="low evicted and Queued")  # fmt: skip
            assert evicted["reason"].startswith("Evicted"), evicted
            wait_for(lambda: phase(kube, namespace, "high") == "Succeeded", timeout=180,
                     what="high Succeeded")  # fmt: skip
            final = wait_for(lambda: phase(kube, namespace, "low") == "Succeeded"
                             and job_status(custom, namespace, "low"),
                             timeout=180, what="low resumed and Succeeded")  # fmt: skip
    finally:
        for level in classes:
            with contextlib.suppress(ApiException):
                custom.delete_cluster_custom_object(
                    KUEUE, V, "workloadpriorityclasses", f"{namespace}-{level}"
                )
    assert kubelet.errors == [], kubelet.errors
    log = kubelet.log_of("low-worker-0", namespace)
    assert kubelet.exit_codes.get("low-worker-0") == [0], log[-3000:]
    # SIGTERM (the pod deleted as Kueue evicted the job): the step in flight finished and
    # was saved; the next incarnation continued from it.
    stopped = re.search(r"step=(\d+) msg=\"stopped by a signal; checkpoint saved\"", log)
    assert stopped, log[-3000:]
    assert f"msg=continuing from_step={stopped[1]} " in log, log[-3000:]
    # A stop, not a failure: nothing spent of backoffLimit, no restart round.
    assert final["restarts"] == 0, final
    assert condition(final, "Queued")["reason"] == "Admitted", final
    # The history: every step once, but the one in flight when SIGTERM came may be redone.
    lines = [json.loads(line) for line in (storage / "train" / "history.jsonl").read_text()
             .splitlines()]  # fmt: skip
    steps = [r["step"] for r in lines if "loss" in r]
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), steps
    redone = len(steps) - len(set(steps))
    assert redone <= 1, f"{redone} steps redone: {steps}"
