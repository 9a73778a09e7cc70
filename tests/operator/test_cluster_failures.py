"""Failures driven through real pod statuses (the tests play kubelet): retryable and permanent
exit codes, backoffLimit, disruptions, a lost rendezvous store, specs that cannot run."""

from __future__ import annotations

import pytest

from tests.operator.harness import (
    condition,
    create_job,
    job_status,
    live_pod_names,
    phase_is,
    pods_of,
    run_pods,
    set_pod_status,
    wait_for,
)

JOB = "ft"


def spec(**run_policy: object) -> dict:
    return {"command": ["python", "train.py"], "workers": {"replicas": 2}, "runPolicy": run_policy}


def start(kube, namespace: str, job_spec: dict) -> dict[str, str]:
    """Create the job, let its pods run; returns worker name → uid."""
    create_job(kube.custom, namespace, JOB, job_spec)
    wait_for(lambda: len(live_pod_names(kube.core, namespace, JOB)) == 2, what="2 workers")
    wait_for(lambda: live_pod_names(kube.core, namespace, JOB, "rendezvous"), what="store")
    run_pods(kube.core, namespace, JOB)
    wait_for(phase_is(kube.custom, namespace, JOB, "Running"))
    return uids(kube, namespace)


def uids(kube, namespace: str) -> dict[str, str]:
    return {
        p.metadata.name: p.metadata.uid
        for p in pods_of(kube.core, namespace, JOB)
        if not p.metadata.deletion_timestamp
    }


def rdzv_ids(kube, namespace: str) -> set[str]:
    out = set()
    for pod in pods_of(kube.core, namespace, JOB):
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        out.add(env["PET_RDZV_ID"].rsplit("-", 1)[1])
    return out


def all_replaced(kube, namespace: str, before: dict[str, str]) -> dict[str, str]:
    now = uids(kube, namespace)
    fresh = len(now) == len(before) and all(now[n] != before[n] for n in before if n in now)
    return now if fresh else {}


def events(kube, namespace: str) -> list[tuple[str, str]]:
    items = kube.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={JOB}"
    ).items
    return [(e.type, e.reason) for e in items]


def test_retryable_then_permanent_exit_code(operator, kube, namespace) -> None:
    before = start(kube, namespace, spec(restartPolicy="ExitCode", backoffLimit=3))
    set_pod_status(
        kube.core, namespace, f"{JOB}-worker-1", "Failed", exit_code=137, reason="OOMKilled"
    )

    status = wait_for(
        lambda: (s := job_status(kube.custom, namespace, JOB)).get("restarts") == 1 and s
    )
    assert condition(status, "Restarting")["reason"] == "WorkerFailed"
    assert "exited with code 137" in condition(status, "Restarting")["message"]
    # The whole group restarts into a fresh rendezvous round.
    after = wait_for(lambda: all_replaced(kube, namespace, before), what="all workers replaced")
    assert rdzv_ids(kube, namespace) == {"1"}
    assert job_status(kube.custom, namespace, JOB)["phase"] == "Restarting"
    run_pods(kube.core, namespace, JOB)
    status = wait_for(phase_is(kube.custom, namespace, JOB, "Running"))
    assert condition(status, "Restarting")["status"] == "False"

    set_pod_status(kube.core, namespace, f"{JOB}-worker-0", "Failed", exit_code=1)
    status = wait_for(phase_is(kube.custom, namespace, JOB, "Failed"))
    failed = condition(status, "Failed")
    assert failed["reason"] == "PermanentExitCode"
    assert f"{JOB}-worker-0 exited with code 1" in failed["message"]
    assert status["restarts"] == 1
    # cleanPodPolicy Running: the still-running worker goes, the failed one stays for its logs.
    wait_for(
        lambda: live_pod_names(kube.core, namespace, JOB) == [f"{JOB}-worker-0"], what="cleanup"
    )
    assert uids(kube, namespace)[f"{JOB}-worker-0"] == after[f"{JOB}-worker-0"]
    assert ("Warning", "PermanentExitCode") in wait_for(lambda: events(kube, namespace))


def test_backoff_limit_exhausted(operator, kube, namespace) -> None:
    before = start(kube, namespace, spec(restartPolicy="OnFailure", backoffLimit=1))
    set_pod_status(kube.core, namespace, f"{JOB}-worker-0", "Failed", exit_code=2)
    wait_for(lambda: all_replaced(kube, namespace, before), what="group restart")
    run_pods(kube.core, namespace, JOB)
    wait_for(phase_is(kube.custom, namespace, JOB, "Running"))

    set_pod_status(kube.core, namespace, f"{JOB}-worker-1", "Failed", exit_code=2)
    status = wait_for(phase_is(kube.custom, namespace, JOB, "Failed"))
    assert status["restarts"] == 1
    assert condition(status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "1 restart(s) used of backoffLimit 1" in condition(status, "Failed")["message"]
    kinds = wait_for(
        lambda: (e := events(kube, namespace)) and ("Warning", "BackoffLimitExceeded") in e and e
    )
    assert ("Warning", "WorkerFailed") in kinds


def test_never_fails_on_first_failure(operator, kube, namespace) -> None:
    start(kube, namespace, spec(restartPolicy="Never"))
    set_pod_status(kube.core, namespace, f"{JOB}-worker-1", "Failed", exit_code=143)
    status = wait_for(phase_is(kube.custom, namespace, JOB, "Failed"))
    assert condition(status, "Failed")["reason"] == "WorkerFailed"
    assert status["restarts"] == 0


def test_deleted_and_evicted_pods_are_replaced_alone(operator, kube, namespace) -> None:
    before = start(kube, namespace, spec(backoffLimit=0))
    kube.core.delete_namespaced_pod(f"{JOB}-worker-1", namespace)
    now = wait_for(
        lambda: (
            (u := uids(kube, namespace)).get(f"{JOB}-worker-1")
            not in (None, before[f"{JOB}-worker-1"])
            and u
        ),
        what="deleted pod replaced",
    )
    assert now[f"{JOB}-worker-0"] == before[f"{JOB}-worker-0"]  # the survivor keeps running
    assert rdzv_ids(kube, namespace) == {"0"}  # and the replacement joins its rendezvous
    run_pods(kube.core, namespace, JOB)
    wait_for(phase_is(kube.custom, namespace, JOB, "Running"))

    set_pod_status(
        kube.core, namespace, f"{JOB}-worker-0", "Failed", reason="Evicted", disruption=True
    )
    after = wait_for(
        lambda: (
            (u := uids(kube, namespace)).get(f"{JOB}-worker-0")
            not in (None, now[f"{JOB}-worker-0"])
            and u
        ),
        what="evicted pod replaced",
    )
    assert after[f"{JOB}-worker-1"] == now[f"{JOB}-worker-1"]
    status = job_status(kube.custom, namespace, JOB)
    # Disruptions are not the job's failures: not counted, even with backoffLimit 0.
    assert status["restarts"] == 0 and status["phase"] in ("Restarting", "Pending", "Running")
    run_pods(kube.core, namespace, JOB)
    status = wait_for(phase_is(kube.custom, namespace, JOB, "Running"))
    assert condition(status, "Restarting")["reason"] == "WorkersRecovered"


def test_lost_rendezvous_store_restarts_the_group(operator, kube, namespace) -> None:
    before = start(kube, namespace, spec(backoffLimit=2))
    store_uid = pods_of(kube.core, namespace, JOB, "rendezvous")[0].metadata.uid
    kube.core.delete_namespaced_pod(f"{JOB}-rendezvous", namespace)
    status = wait_for(
        lambda: (s := job_status(kube.custom, namespace, JOB)).get("restarts") == 1 and s
    )
    assert condition(status, "Restarting")["reason"] == "RendezvousLost"
    wait_for(lambda: all_replaced(kube, namespace, before), what="group restarted")
    wait_for(
        lambda: (
            [p.metadata.uid for p in pods_of(kube.core, namespace, JOB, "rendezvous")]
            not in ([], [store_uid])
        ),
        what="a new store",
    )


def test_reserved_env_in_template_is_refused_at_admission(operator, kube, namespace) -> None:
    """The rule lives in the CRD: the API server refuses the job, so no pod is ever tried."""
    from kubernetes.client.rest import ApiException

    bad = spec()
    bad["workers"]["template"] = {
        "spec": {"containers": [{"name": "worker", "env": [{"name": "PET_NNODES", "value": "9"}]}]}
    }
    with pytest.raises(ApiException) as refused:
        create_job(kube.custom, namespace, JOB, bad)
    assert refused.value.status == 422
    assert "spec.workers.template.spec.containers[0].env[0].name" in refused.value.body
    assert pods_of(kube.core, namespace, JOB) == []


def test_pod_the_api_server_rejects_fails_the_job(operator, kube, namespace) -> None:
    bad = spec()
    bad["workers"]["template"] = {"spec": {"nodeSelector": {"bad key!": "x"}}}
    create_job(kube.custom, namespace, JOB, bad)
    status = wait_for(phase_is(kube.custom, namespace, JOB, "Failed"))
    assert condition(status, "Failed")["reason"] == "PodRejected"
    assert "nodeSelector" in condition(status, "Failed")["message"]


def test_quota_exceeded_is_a_condition_until_it_is_raised(operator, kube, namespace) -> None:
    from kubernetes import client

    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="pods"),
        spec=client.V1ResourceQuotaSpec(hard={"pods": "2"}),
    )
    kube.core.create_namespaced_resource_quota(namespace, quota)
    wait_for(
        lambda: (kube.core.read_namespaced_resource_quota("pods", namespace).status.hard or {}).get(
            "pods"
        ),
        what="quota tracked",
    )
    create_job(kube.custom, namespace, JOB, {"command": ["t"], "workers": {"replicas": 3}})
    created = wait_for(
        lambda: (
            (c := condition(job_status(kube.custom, namespace, JOB), "Created")).get("status")
            == "False"
            and c
        ),
        what="Created=False",
    )
    assert created["reason"] == "PodCreationForbidden"
    assert "exceeded quota" in created["message"]
    assert (
        len(pods_of(kube.core, namespace, JOB))
        + len(pods_of(kube.core, namespace, JOB, "rendezvous"))
        == 2
    )

    kube.core.patch_namespaced_resource_quota("pods", namespace, {"spec": {"hard": {"pods": "10"}}})
    wait_for(
        lambda: len(live_pod_names(kube.core, namespace, JOB)) == 3, timeout=40, what="all workers"
    )
    wait_for(
        lambda: (
            condition(job_status(kube.custom, namespace, JOB), "Created").get("status") == "True"
        ),
        timeout=40,
    )
