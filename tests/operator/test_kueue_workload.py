"""The pure Kueue integration: a job's Workload, its admitted placement, and the decision
table that replays Kueue's jobframework for a LargeModelJob (docs/kueue.md). The same
functions run against real Kueue in tests/cluster/test_kueue.py."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from lmjob_api import LargeModelJob
from lmjob_operator.config import OperatorConfig
from lmjob_operator.kueue_workload import (
    JOB_UID_LABEL,
    POD_SET_LABEL,
    QUEUE_LABEL,
    RENDEZVOUS,
    RESOURCE_IN_USE_FINALIZER,
    WORKERS,
    Action,
    PlacementConflict,
    Priority,
    Resize,
    apply_placement,
    build_workload,
    decide,
    finish_status,
    placements,
    plan_resize,
    queue_name,
    requeue_status,
    workload_name,
)
from lmjob_operator.rendezvous import build_rendezvous_pod
from lmjob_operator.worker_pod import build_worker_pod
from tests.operator.factories import UID, job_manifest, make_job

CONFIG = OperatorConfig(trainer_image="registry.example/lmjob-trainer:1")
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
GPU = "nvidia.com/gpu"


def queued_job(spec: dict[str, Any] | None = None, labels: dict[str, str] | None = None):
    manifest = job_manifest({"scheduling": {"queue": "team"}, **(spec or {})})
    manifest["metadata"]["labels"] = labels or {}
    return LargeModelJob.model_validate(manifest)


def workload_for(job, priority: Priority | None = None) -> dict[str, Any]:
    return build_workload(
        job, build_worker_pod(job, 0, 0, CONFIG), build_rendezvous_pod(job, CONFIG), priority
    )


@pytest.mark.parametrize(
    ("spec", "labels", "expected"),
    [
        ({"scheduling": {"queue": "team"}}, {}, "team"),
        ({"scheduling": {"queue": "team"}}, {QUEUE_LABEL: "label-wins"}, "label-wins"),
        ({}, {QUEUE_LABEL: "only-label"}, "only-label"),
        # With Volcano, spec.scheduling.queue is a Volcano queue, not Kueue's.
        ({"scheduling": {"queue": "vq", "schedulerName": "volcano"}}, {}, None),
        ({}, {}, None),
    ],
)
def test_queue_name(spec: dict, labels: dict, expected: str | None) -> None:
    manifest = job_manifest(spec)
    manifest["metadata"]["labels"] = labels
    assert queue_name(LargeModelJob.model_validate(manifest)) == expected


def test_workload_name_follows_kueues_scheme() -> None:
    # Kueue: "<kind lowercased>-<owner>" + "-" + sha1("Kind\ngroup\nname\nuid")[:5].
    digest = hashlib.sha1(f"LargeModelJob\nlmjob.dev\ndemo\n{UID}".encode()).hexdigest()
    assert workload_name("demo", UID) == f"largemodeljob-demo-{digest[:5]}"
    long = workload_name("x" * 60, UID)
    assert len(long) == 63 and long.startswith("largemodeljob-xxx")
    assert workload_name("demo", "another-uid") != workload_name("demo", UID)


def test_workload_holds_the_gang_and_the_store() -> None:
    job = queued_job({"workers": {"replicas": 4, "resources": {"limits": {GPU: 8}}}})
    worker = build_worker_pod(job, 0, 0, CONFIG)
    wl = workload_for(job, Priority("high", 1000))

    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    meta = wl["metadata"]
    assert meta["namespace"] == "ns" and meta["labels"] == {JOB_UID_LABEL: UID}
    assert meta["finalizers"] == [RESOURCE_IN_USE_FINALIZER]
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("LargeModelJob", UID, True)
    spec = wl["spec"]
    assert spec["queueName"] == "team" and spec["active"] is True
    assert spec["priority"] == 1000
    assert spec["priorityClassRef"] == {
        "group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"
    }  # fmt: skip
    workers, store = spec["podSets"]
    assert (workers["name"], workers["count"], store["name"], store["count"]) == (
        WORKERS, 4, RENDEZVOUS, 1
    )  # fmt: skip
    assert "minCount" not in workers  # not elastic: all or nothing
    # Kueue sees the pods' real requests: the template is the worker pod, minus per-pod names.
    template = workers["template"]
    assert template["spec"]["containers"] == worker["spec"]["containers"]
    assert template["spec"]["containers"][0]["resources"]["limits"][GPU] == "8"
    assert "hostname" not in template["spec"]
    assert template["metadata"]["labels"] == worker["metadata"]["labels"]


def test_elastic_job_may_be_admitted_partially() -> None:
    job = queued_job({"workers": {"replicas": 6, "minReplicas": 2, "maxReplicas": 8}})
    workers = workload_for(job)["spec"]["podSets"][0]
    assert (workers["count"], workers["minCount"]) == (6, 2)


def test_kueue_priority_class_label() -> None:
    wl = workload_for(queued_job(), Priority("batch-low", 10, kueue_class=True))
    assert wl["spec"]["priorityClassRef"]["kind"] == "WorkloadPriorityClass"
    assert wl["spec"]["priorityClassRef"]["group"] == "kueue.x-k8s.io"


def test_unqueued_job_has_no_workload() -> None:
    job = make_job()
    with pytest.raises(ValueError, match="names no Kueue queue"):
        build_workload(job, build_worker_pod(job, 0, 0, CONFIG))


def admitted(
    flavors: dict[str, str], count: int | None = None, checks: list | None = None
) -> dict[str, Any]:
    wl = workload_for(queued_job({"workers": {"replicas": 4, "minReplicas": 2}}))
    assignment: dict[str, Any] = {"name": WORKERS, "flavors": flavors}
    if count is not None:
        assignment["count"] = count
    wl["status"] = {
        "admission": {"clusterQueue": "cq", "podSetAssignments": [assignment]},
        "admissionChecks": checks or [],
        "conditions": [
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
            {"type": "Admitted", "status": "True", "reason": "Admitted"},
        ],
    }
    return wl


FLAVORS = {
    "a100": {"spec": {"nodeLabels": {"pool": "a100"},
                      "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
    "cpu": {"spec": {"nodeLabels": {"pool": "general"}}},
    "spot": {"spec": {"nodeLabels": {"pool": "spot"}}},
}  # fmt: skip


def test_placement_from_flavors_and_admission_checks() -> None:
    checks = [{"name": "prov", "podSetUpdates": [
        {"name": WORKERS, "annotations": {"prov/req": "r1"}, "nodeSelector": {"zone": "z1"}}
    ]}]  # fmt: skip
    wl = admitted({GPU: "a100", "cpu": "a100"}, count=3, checks=checks)
    placement = placements(wl, FLAVORS)[WORKERS]
    assert placement.count == 3  # partial admission: fewer than the 4 asked for
    assert placement.node_selector == {"pool": "a100", "zone": "z1"}
    assert placement.tolerations == [{"key": "gpu", "operator": "Exists"}]  # once, not twice
    assert placement.labels == {POD_SET_LABEL: WORKERS}
    assert placement.annotations == {"prov/req": "r1"}

    pod = apply_placement(build_worker_pod(queued_job(), 0, 0, CONFIG), placement)
    assert pod["spec"]["nodeSelector"] == {"pool": "a100", "zone": "z1"}
    assert pod["metadata"]["labels"][POD_SET_LABEL] == WORKERS
    assert pod["metadata"]["annotations"]["prov/req"] == "r1"


def test_full_admission_count_is_the_pod_sets() -> None:
    assert placements(admitted({GPU: "a100"}), FLAVORS)[WORKERS].count == 4


@pytest.mark.parametrize(
    ("flavors", "pod_selector"),
    [
        ({GPU: "a100", "cpu": "cpu"}, {}),  # two flavors disagree on `pool`
        ({GPU: "a100"}, {"pool": "h100"}),  # the user's own selector disagrees
    ],
)
def test_placement_conflicts_are_errors(flavors: dict, pod_selector: dict) -> None:
    with pytest.raises(PlacementConflict, match="nodeSelector"):
        placement = placements(admitted(flavors), FLAVORS)[WORKERS]
        apply_placement({"spec": {"nodeSelector": pod_selector}}, placement)


def wl_state(*conditions: tuple[str, str, str], deleting: bool = False, finalizer: bool = True):
    wl: dict[str, Any] = {
        "metadata": {"finalizers": [RESOURCE_IN_USE_FINALIZER] if finalizer else []},
        "spec": {"podSets": [{"name": WORKERS, "count": 2}]},
        "status": {"conditions": [
            {"type": t, "status": s, "reason": r, "message": f"{t} {r}"} for t, s, r in conditions
        ]},
    }  # fmt: skip
    if deleting:
        wl["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return wl


RESERVED = ("QuotaReserved", "True", "QuotaReserved")
ADMITTED = ("Admitted", "True", "Admitted")
PENDING = ("QuotaReserved", "False", "Pending")
PREEMPTED = ("Evicted", "True", "Preempted")


@pytest.mark.parametrize(
    ("workload", "pods_active", "finished", "action", "queued", "reason"),
    [
        (None, False, False, Action.CREATE, True, "WorkloadCreated"),
        (None, True, True, Action.RUN, False, ""),
        (wl_state(PENDING), False, False, Action.WAIT, True, "Pending"),
        (wl_state(("QuotaReserved", "False", "Inadmissible")), False, False,
         Action.WAIT, True, "Inadmissible"),
        (wl_state(), False, False, Action.WAIT, True, "Pending"),  # Kueue has not looked yet
        # Quota reserved, an admission check still pending: wait with Admitted's reason.
        (wl_state(RESERVED, ("Admitted", "False", "UnsatisfiedChecks")), False, False,
         Action.WAIT, True, "UnsatisfiedChecks"),
        (wl_state(RESERVED, ADMITTED), False, False, Action.START, False, ""),
        (wl_state(RESERVED, ADMITTED), True, False, Action.RUN, False, ""),
        # Evicted: stop gracefully first, then give the reservation back, then wait.
        (wl_state(RESERVED, ADMITTED, PREEMPTED), True, False,
         Action.STOP, True, "EvictedPreempted"),
        (wl_state(RESERVED, ADMITTED, PREEMPTED), False, False,
         Action.REQUEUE, True, "EvictedPreempted"),
        (wl_state(PENDING, PREEMPTED), False, False, Action.WAIT, True, "Pending"),
        # Running without admission (e.g. admission withdrawn): stop.
        (wl_state(PENDING), True, False, Action.STOP, True, "NotAdmitted"),
        # The job ended: mark the Workload Finished, then let it go.
        (wl_state(RESERVED, ADMITTED), False, True, Action.FINISH, False, ""),
        (wl_state(RESERVED, ADMITTED, ("Finished", "True", "Succeeded")), False, True,
         Action.RELEASE, False, ""),
        (wl_state(("Finished", "True", "Succeeded"), finalizer=False), False, True,
         Action.RUN, False, ""),
        # Deleted under a live job: stop, release, then wait for it to go (and recreate).
        (wl_state(RESERVED, ADMITTED, deleting=True), True, False,
         Action.STOP, True, "WorkloadDeleted"),
        (wl_state(RESERVED, ADMITTED, deleting=True), False, False,
         Action.RELEASE, True, "WorkloadDeleted"),
        (wl_state(deleting=True, finalizer=False), False, False,
         Action.WAIT, True, "WorkloadDeleted"),
    ],
)  # fmt: skip
def test_decide(
    workload: dict | None,
    pods_active: bool,
    finished: bool,
    action: Action,
    queued: bool,
    reason: str,
) -> None:
    decision = decide(workload, pods_active=pods_active, finished=finished)
    assert (decision.action, decision.queued, decision.reason) == (action, queued, reason)
    if queued:
        assert decision.message, "a queued job always says why"


def test_waiting_message_is_kueues() -> None:
    wl = wl_state(PENDING)
    wl["status"]["conditions"][0]["message"] = (
        "couldn't assign flavors to pod set workers: insufficient unused quota for "
        "nvidia.com/gpu in flavor a100, 8 more needed"
    )
    assert "nvidia.com/gpu" in decide(wl, pods_active=False, finished=False).message


@pytest.mark.parametrize(("reason", "requeued"), [("Preempted", "True"), ("Deactivated", "False")])
def test_requeue_status_gives_the_reservation_back(reason: str, requeued: str) -> None:
    wl = admitted({GPU: "a100"})
    wl["status"]["conditions"].append(
        {"type": "Evicted", "status": "True", "reason": reason, "message": "by wl-high",
         "lastTransitionTime": "2026-01-01T11:00:00Z"}
    )  # fmt: skip
    patch = requeue_status(wl, NOW)["status"]
    assert patch["admission"] is None
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert (by_type["QuotaReserved"]["status"], by_type["QuotaReserved"]["reason"]) == (
        "False", "Pending"
    )  # fmt: skip
    assert by_type["QuotaReserved"]["message"] == "by wl-high"
    assert by_type["Admitted"]["status"] == "False"
    assert by_type["Requeued"]["status"] == requeued
    # Untouched conditions keep their transition time; changed ones get `now`.
    assert by_type["Evicted"]["lastTransitionTime"] == "2026-01-01T11:00:00Z"
    assert by_type["QuotaReserved"]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    # After the patch the job waits; it no longer holds quota.
    wl["status"] = {**wl["status"], **patch}
    assert decide(wl, pods_active=False, finished=False).action == Action.WAIT


def test_finish_status() -> None:
    patch = finish_status(admitted({GPU: "a100"}), succeeded=False, message="boom", now=NOW)
    (finished,) = [c for c in patch["status"]["conditions"] if c["type"] == "Finished"]
    assert (finished["status"], finished["reason"], finished["message"]) == (
        "True", "Failed", "boom"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("reserved", "admitted_count", "replicas", "kind", "reclaimable"),
    [
        (False, None, 4, Resize.NONE, 0),
        (False, None, 6, Resize.UPDATE, 0),  # still queued: change the count in place
        (True, None, 4, Resize.NONE, 0),
        (True, None, 3, Resize.RECLAIM, 1),  # shrink: quota goes back at once
        (True, None, 5, Resize.READMIT, 0),  # grow: stop, new Workload, queue again
        (True, 3, 3, Resize.NONE, 0),  # partially admitted at 3, running 3
        (True, 3, 4, Resize.READMIT, 0),
    ],
)
def test_plan_resize(
    reserved: bool, admitted_count: int | None, replicas: int, kind: Resize, reclaimable: int
) -> None:
    wl = admitted({GPU: "a100"}, count=admitted_count) if reserved else wl_state(PENDING)
    wl["spec"]["podSets"][0]["count"] = 4
    plan = plan_resize(wl, replicas)
    assert (plan.kind, plan.reclaimable) == (kind, reclaimable)
