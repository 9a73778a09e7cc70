"""plan.py: plan_pods and the reconcile's other pure helpers, as tables."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from lmjob_api import JobPhase
from lmjob_api.status import LargeModelJobStatus
from lmjob_operator.config import OperatorConfig
from lmjob_operator.failures import Action, Verdict
from lmjob_operator.plan import EXPECTATION_SECONDS, merge_patch, observe, parse_status, plan_pods
from lmjob_operator.pod_view import PodView
from lmjob_operator.registry import JobState
from lmjob_operator.status import stamp
from tests.operator.factories import NOW, UID, make_job, rendezvous, worker

CONFIG = OperatorConfig(force_delete_after_seconds=60)
ELASTIC = {"workers": {"replicas": 3, "minReplicas": 2, "maxReplicas": 4}}


def status(
    phase: JobPhase = JobPhase.RUNNING, restarts: int = 0, **fields: Any
) -> LargeModelJobStatus:
    return LargeModelJobStatus(phase=phase, restarts=restarts, **fields)


def names(plan_delete: tuple) -> list[str]:
    return sorted(d[0] for d in plan_delete)


# (case id, spec, status, pods, verdict, expected creates, expected rendezvous create, expected deletes)
CASES = [
    ("fresh job", {}, status(JobPhase.PENDING), [], Verdict(), (0, 1), True, []),
    ("all there", {}, status(), [worker(0), worker(1), rendezvous()], Verdict(), (), False, []),
    ("deleted pod replaced", {}, status(), [worker(0), rendezvous()], Verdict(), (1,), False, []),
    (
        "scale up",
        {**ELASTIC, "workers": {**ELASTIC["workers"], "replicas": 4}},
        status(),
        [worker(i, bounds="2-4") for i in range(3)] + [rendezvous()],
        Verdict(),
        (3,),
        False,
        [],
    ),
    (
        "scale down deletes the highest",
        ELASTIC,
        status(),
        [worker(i, bounds="2-4") for i in range(4)] + [rendezvous()],
        Verdict(),
        (),
        False,
        ["demo-worker-3"],
    ),
    (
        "fixed-size resize replaces pods with old bounds",
        {"workers": {"replicas": 3}},
        status(),
        [worker(0), worker(1), rendezvous()],
        Verdict(),
        (2,),
        False,
        ["demo-worker-0", "demo-worker-1"],
    ),
    (
        "group restart: old round goes, names wait",
        {},
        status(JobPhase.RESTARTING, restarts=1),
        [worker(0), worker(1, "Failed", exit_code=1), rendezvous()],
        Verdict(Action.RESTART_GROUP, "WorkerFailed"),
        (),
        False,
        ["demo-worker-0", "demo-worker-1"],
    ),
    (
        "group restart: new round created once names are free",
        {},
        status(JobPhase.RESTARTING, restarts=1),
        [rendezvous()],
        Verdict(),
        (0, 1),
        False,
        [],
    ),
    (
        "disrupted pod replaced",
        {},
        status(JobPhase.RESTARTING),
        [worker(0), worker(1, "Failed", disrupted=True), rendezvous()],
        Verdict(Action.REPLACE, "WorkerDisrupted", "", ("demo-worker-1",)),
        (),
        False,
        ["demo-worker-1"],
    ),
    (
        "pod being deleted blocks its name",
        {},
        status(),
        [worker(0), worker(1, deletion_timestamp=NOW), rendezvous()],
        Verdict(),
        (),
        False,
        [],
    ),
    (
        "store ended: deleted, recreated later",
        {},
        status(),
        [worker(0), worker(1), rendezvous("Failed", exit_code=1)],
        Verdict(),
        (),
        False,
        ["demo-rendezvous"],
    ),
    (
        "finishing: nothing new",
        {},
        status(),
        [worker(0, "Succeeded", exit_code=0), rendezvous()],
        Verdict(),
        (),
        False,
        [],
    ),
    (
        "suspend removes every pod",
        {"runPolicy": {"suspend": True}},
        status(JobPhase.SUSPENDED),
        [worker(0), worker(1, "Failed", exit_code=1), rendezvous()],
        Verdict(),
        (),
        False,
        ["demo-rendezvous", "demo-worker-0", "demo-worker-1"],
    ),
    ("resumed: recreated", {}, status(JobPhase.PENDING), [], Verdict(), (0, 1), True, []),
    (
        "succeeded, cleanPodPolicy Running",
        {},
        status(JobPhase.SUCCEEDED),
        [worker(0, "Succeeded", exit_code=0), worker(1), rendezvous()],
        Verdict(),
        (),
        False,
        ["demo-rendezvous", "demo-worker-1"],
    ),
    (
        # Kueue evicted the job: every pod stops (SIGTERM, checkpoint), none is created.
        "queued stops every pod",
        {},
        status(JobPhase.QUEUED),
        [worker(0), worker(1, "Failed", exit_code=143), rendezvous()],
        Verdict(),
        (),
        False,
        ["demo-rendezvous", "demo-worker-0", "demo-worker-1"],
    ),
    ("queued creates nothing", {}, status(JobPhase.QUEUED), [], Verdict(), (), False, []),
    (
        "failed, cleanPodPolicy All",
        {"runPolicy": {"cleanPodPolicy": "All"}},
        status(JobPhase.FAILED),
        [worker(0, "Failed", exit_code=2), worker(1), rendezvous()],
        Verdict(),
        (),
        False,
        ["demo-rendezvous", "demo-worker-0", "demo-worker-1"],
    ),
    (
        "failed, cleanPodPolicy None keeps workers",
        {"runPolicy": {"cleanPodPolicy": "None"}},
        status(JobPhase.FAILED),
        [worker(0, "Failed", exit_code=2), worker(1), rendezvous()],
        Verdict(),
        (),
        False,
        ["demo-rendezvous"],
    ),
]


@pytest.mark.parametrize(
    ("spec", "state", "pods", "verdict", "creates", "store", "deletes"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan_pods(
    spec: dict[str, Any],
    state: LargeModelJobStatus,
    pods: list[PodView],
    verdict: Verdict,
    creates: tuple[int, ...],
    store: bool,
    deletes: list[str],
) -> None:
    plan = plan_pods(make_job(spec), state, pods, verdict, NOW, CONFIG)
    assert plan.create_workers == creates
    assert plan.create_rendezvous is store
    assert names(plan.delete) == deletes
    assert not plan.delete_job


def test_stuck_terminating_pod_is_forced() -> None:
    stuck = worker(1, deletion_timestamp=NOW - timedelta(seconds=61))
    fresh = worker(0, deletion_timestamp=NOW - timedelta(seconds=10))
    plan = plan_pods(make_job(), status(), [fresh, stuck, rendezvous()], Verdict(), NOW, CONFIG)
    assert plan.force_delete == ((stuck.name, stuck.uid),)


@pytest.mark.parametrize(
    ("ttl", "finished_ago", "delete"),
    [(None, 999, False), (60, 30, False), (60, 61, True), (0, 0, True)],
)
def test_ttl_after_finished(ttl: int | None, finished_ago: int, delete: bool) -> None:
    job = make_job({"runPolicy": {"ttlSecondsAfterFinished": ttl}} if ttl is not None else {})
    done = status(JobPhase.SUCCEEDED, completion_time=stamp(NOW - timedelta(seconds=finished_ago)))
    assert plan_pods(job, done, [], Verdict(), NOW, CONFIG).delete_job is delete


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"p": {"loss": 1.0, "step": 1}}, {"p": {"step": 2}}, {"p": {"loss": None, "step": 2}}),
        ({"c": [1, 2]}, {"c": [1]}, {"c": [1]}),
    ],
)
def test_merge_patch(old: dict, new: dict, patch: dict) -> None:
    assert merge_patch(old, new) == patch


def test_observe_trusts_own_writes_until_the_index_catches_up() -> None:
    state = JobState(("ns", "demo"), UID)
    created = worker(1, "Pending")
    state.created[created.name] = (created, time.monotonic())
    gone = worker(0)
    state.deleted[gone.uid] = time.monotonic()
    before = (dict(state.created), dict(state.deleted))
    seen = observe(state, [gone], UID, now=NOW, now_mono=time.monotonic())
    assert [p.name for p in seen.pods] == ["demo-worker-0", "demo-worker-1"]
    assert seen.pods[0].deleting and not seen.pods[1].deleting
    assert seen.pods[0].deletion_timestamp == NOW
    assert (seen.created, seen.deleted) == before
    assert (state.created, state.deleted) == before, "observe leaves the state to its caller"
    # The index catches up: expectations are dropped.
    seen = observe(state, [created], UID, now=NOW, now_mono=time.monotonic())
    assert [p.name for p in seen.pods] == ["demo-worker-1"]
    assert seen.created == {} and seen.deleted == {}


def test_observe_drops_expectations_past_their_time() -> None:
    state = JobState(("ns", "demo"), UID)
    created = worker(1, "Pending")
    state.created[created.name] = (created, 100.0)
    gone = worker(0)
    state.deleted[gone.uid] = 100.0
    later = 100.0 + EXPECTATION_SECONDS + 1
    seen = observe(state, [gone], UID, now=NOW, now_mono=later)
    assert [p.name for p in seen.pods] == ["demo-worker-0"]
    assert not seen.pods[0].deleting
    assert seen.created == {} and seen.deleted == {}


def test_observe_ignores_pods_of_another_incarnation() -> None:
    other = PodView(
        name="demo-worker-0",
        uid="x",
        job="demo",
        role="worker",
        index=0,
        rendezvous_round=0,
        phase="Running",
        owner_uid="someone-else",
    )
    seen = observe(JobState(("ns", "demo"), UID), [other], UID, now=NOW, now_mono=0.0)
    assert seen.pods == []


def test_parse_status_tolerates_unknown_fields() -> None:
    assert parse_status({"phase": "Running", "restarts": 2, "kopf": {"x": 1}}).restarts == 2
    assert parse_status(None) == LargeModelJobStatus()
