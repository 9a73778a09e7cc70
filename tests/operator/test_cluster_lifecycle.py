"""Elastic scaling, suspend/resume, deadlines, TTL and garbage collection on the real API server."""

from __future__ import annotations

import pytest
from kubernetes.client.rest import ApiException

from tests.operator.harness import (
    GROUP,
    PLURAL,
    VERSION,
    condition,
    create_job,
    get_job,
    job_status,
    live_pod_names,
    patch_spec,
    phase_is,
    pods_of,
    run_pods,
    set_pod_status,
    wait_for,
)

ELASTIC = {
    "command": ["python", "train.py"],
    "workers": {"replicas": 2, "minReplicas": 2, "maxReplicas": 4},
}


def workers(kube, namespace: str, job: str = "el") -> list[str]:
    return live_pod_names(kube.core, namespace, job)


def expect_workers(kube, namespace: str, count: int, job: str = "el") -> list[str]:
    expected = [f"{job}-worker-{i}" for i in range(count)]
    return wait_for(
        lambda: workers(kube, namespace, job) == expected and expected, what=f"{count} workers"
    )


def test_scale_within_bounds(operator, kube, namespace, kubectl) -> None:
    create_job(kube.custom, namespace, "el", ELASTIC)
    expect_workers(kube, namespace, 2)
    run_pods(kube.core, namespace, "el")
    wait_for(phase_is(kube.custom, namespace, "el", "Running"))
    first_uids = {p.metadata.name: p.metadata.uid for p in pods_of(kube.core, namespace, "el")}

    kubectl("scale", "lmj/el", "--replicas=4", "-n", namespace)
    expect_workers(kube, namespace, 4)
    run_pods(kube.core, namespace, "el")
    status = wait_for(
        lambda: (s := job_status(kube.custom, namespace, "el"))["workers"]["summary"] == "4/4" and s
    )
    assert status["phase"] == "Running" and status["restarts"] == 0
    # Scaling adds pods: the running ones are untouched.
    uids = {p.metadata.name: p.metadata.uid for p in pods_of(kube.core, namespace, "el")}
    assert {k: uids[k] for k in first_uids} == first_uids

    kubectl("scale", "lmj/el", "--replicas=3", "-n", namespace)
    expect_workers(kube, namespace, 3)
    status = wait_for(
        lambda: (s := job_status(kube.custom, namespace, "el"))["workers"]["summary"] == "3/3" and s
    )
    assert status["phase"] == "Running" and status["restarts"] == 0

    for replicas in (5, 1):
        out = kubectl("scale", "lmj/el", f"--replicas={replicas}", "-n", namespace, check=False)
        assert out.returncode != 0
        assert "Replicas" in out.stderr or "replicas" in out.stderr
    scale = kube.custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "el")
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "lmjob.dev/job-name=el,lmjob.dev/role=worker"


def test_suspend_resize_resume(operator, kube, namespace) -> None:
    create_job(kube.custom, namespace, "el", ELASTIC)
    expect_workers(kube, namespace, 2)
    run_pods(kube.core, namespace, "el")
    wait_for(phase_is(kube.custom, namespace, "el", "Running"))

    patch_spec(kube.custom, namespace, "el", {"runPolicy": {"suspend": True}})
    status = wait_for(phase_is(kube.custom, namespace, "el", "Suspended"))
    wait_for(
        lambda: (
            not workers(kube, namespace)
            and not live_pod_names(kube.core, namespace, "el", "rendezvous")
        )
    )
    assert condition(status, "Suspended")["status"] == "True"
    # The job's other objects (and its storage) stay.
    kube.core.read_namespaced_service("el", namespace)

    patch_spec(kube.custom, namespace, "el", {"workers": {"replicas": 3}})
    status = wait_for(
        lambda: (s := job_status(kube.custom, namespace, "el"))["workers"]["desired"] == 3 and s
    )
    assert status["phase"] == "Suspended" and workers(kube, namespace) == []

    patch_spec(kube.custom, namespace, "el", {"runPolicy": {"suspend": False}})
    expect_workers(kube, namespace, 3)
    wait_for(lambda: live_pod_names(kube.core, namespace, "el", "rendezvous"))
    run_pods(kube.core, namespace, "el")
    status = wait_for(phase_is(kube.custom, namespace, "el", "Running"))
    assert condition(status, "Suspended") | {"lastTransitionTime": None} == {
        "type": "Suspended",
        "status": "False",
        "reason": "JobResumed",
        "message": "runPolicy.suspend is false",
        "lastTransitionTime": None,
    }
    assert status["restarts"] == 0


def test_created_suspended_makes_no_pods(operator, kube, namespace) -> None:
    create_job(kube.custom, namespace, "q", {**ELASTIC, "runPolicy": {"suspend": True}})
    status = wait_for(phase_is(kube.custom, namespace, "q", "Suspended"))
    assert status["workers"]["summary"] == "0/2"
    assert pods_of(kube.core, namespace, "q") == []
    assert "startTime" not in status


def test_active_deadline(operator, kube, namespace) -> None:
    create_job(kube.custom, namespace, "dl", {**ELASTIC, "runPolicy": {"activeDeadlineSeconds": 3}})
    wait_for(lambda: len(workers(kube, namespace, "dl")) == 2)
    run_pods(kube.core, namespace, "dl")
    status = wait_for(phase_is(kube.custom, namespace, "dl", "Failed"), timeout=45)
    assert condition(status, "Failed")["reason"] == "DeadlineExceeded"
    assert status["completionTime"]
    # cleanPodPolicy Running (the default): running workers and the store are deleted.
    wait_for(lambda: not workers(kube, namespace, "dl"))
    wait_for(lambda: not live_pod_names(kube.core, namespace, "dl", "rendezvous"))


def test_succeeded_then_ttl_deletes_everything(operator, kube, namespace) -> None:
    spec = {**ELASTIC, "runPolicy": {"ttlSecondsAfterFinished": 2}}
    create_job(kube.custom, namespace, "done", spec)
    names = wait_for(
        lambda: len(workers(kube, namespace, "done")) == 2 and workers(kube, namespace, "done")
    )
    run_pods(kube.core, namespace, "done")
    wait_for(phase_is(kube.custom, namespace, "done", "Running"))
    for name in names:
        set_pod_status(kube.core, namespace, name, "Succeeded", exit_code=0)
    status = wait_for(phase_is(kube.custom, namespace, "done", "Succeeded"))
    assert condition(status, "Succeeded")["reason"] == "TrainingCompleted"
    assert status["workers"]["summary"] == "0/2"
    wait_for(
        lambda: get_job(kube.custom, namespace, "done") is None, timeout=20, what="TTL deletion"
    )


def test_deleting_the_job_collects_everything(operator, kube, namespace) -> None:
    create_job(kube.custom, namespace, "gc", ELASTIC)
    wait_for(lambda: len(workers(kube, namespace, "gc")) == 2)
    wait_for(lambda: _exists(lambda: kube.core.read_namespaced_service("gc", namespace)))
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gc")
    wait_for(lambda: get_job(kube.custom, namespace, "gc") is None, what="job gone")
    # Garbage collection (kube-controller-manager) follows the owner references.
    wait_for(lambda: pods_of(kube.core, namespace, "gc") == [], timeout=30, what="pods collected")
    wait_for(lambda: pods_of(kube.core, namespace, "gc", "rendezvous") == [], timeout=30)
    for read in (
        lambda: kube.core.read_namespaced_service("gc", namespace),
        lambda: kube.core.read_namespaced_service("gc-rendezvous", namespace),
    ):
        wait_for(lambda read=read: not _exists(read), timeout=30, what="service collected")


def _exists(read) -> bool:
    try:
        read()
        return True
    except ApiException as err:
        if err.status == 404:
            return False
        raise


@pytest.mark.parametrize("gang", [True])
def test_gang_without_podgroup_api_is_a_condition(operator, kube, namespace, gang: bool) -> None:
    # The test control plane serves Kubernetes' own PodGroup: ask for one it does not.
    scheduling = {"gang": gang, "gangApi": "SchedulerPlugins"}
    create_job(kube.custom, namespace, "g", {**ELASTIC, "scheduling": scheduling})
    wait_for(lambda: len(workers(kube, namespace, "g")) == 2, what="pods still created")
    status = wait_for(lambda: condition(job_status(kube.custom, namespace, "g"), "GangScheduling"))
    assert status["status"] == "False" and status["reason"] == "PodGroupAPIMissing"
    assert "scheduling.x-k8s.io/v1alpha1" in status["message"]
