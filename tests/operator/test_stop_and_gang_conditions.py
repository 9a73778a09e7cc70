"""The GangScheduling and GracePeriod conditions, the scheduler's message in a pod's view,
and the measured save that sizes a grace period reaching status: tables of cases."""

from __future__ import annotations

from typing import Any

import pytest

from lmjob_api.status import CheckpointStatus, LargeModelJobStatus
from lmjob_api.trainer_metrics import TrainerProgress
from lmjob_operator.failures import Verdict
from lmjob_operator.gang_condition import gang_problem
from lmjob_operator.grace_condition import grace_problem
from lmjob_operator.pod_view import view_pod
from lmjob_operator.status import build_status
from tests.operator.factories import NOW, make_job, worker

GANG = {
    "workers": {"replicas": 4, "minReplicas": 3, "maxReplicas": 4},
    "scheduling": {"gang": True},
}
NO_ROOM = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


@pytest.mark.parametrize(
    ("spec", "flavour", "pods", "expected"),
    [
        ({}, None, [], None),
        (GANG, "kubernetes", [worker(0, node_name="n1")], ("True", "PodGroupCreated")),
        (GANG, None, [], ("False", "PodGroupAPIMissing")),
        (
            GANG,
            "kubernetes",
            [worker(i, "Pending", unschedulable=NO_ROOM) for i in range(4)],
            ("False", "Unschedulable"),
        ),
        # Being deleted: the scheduler's old word on it no longer counts.
        (
            GANG,
            "scheduler-plugins",
            [worker(0, "Pending", unschedulable=NO_ROOM, deletion_timestamp=NOW)],
            ("True", "PodGroupCreated"),
        ),
    ],
)
def test_gang_condition(
    spec: dict, flavour: Any, pods: list, expected: tuple[str, str] | None
) -> None:
    problem = gang_problem(make_job(spec), flavour, pods)
    assert (problem and (problem.status, problem.reason)) == expected
    if expected and expected[1] == "Unschedulable":
        assert NO_ROOM in problem.message and "gang of 3 workers" in problem.message
    if expected and expected[1] == "PodGroupAPIMissing":
        assert "scheduling.k8s.io/v1alpha2" in problem.message
        assert "scheduling.x-k8s.io/v1alpha1" in problem.message


@pytest.mark.parametrize(
    ("workers", "save_seconds", "expected"),
    [
        ({}, 100.0, None),  # lmjob sizes it: nothing to judge
        ({"terminationGracePeriodSeconds": 60}, None, None),  # no save measured yet
        ({"terminationGracePeriodSeconds": 60}, 75.5, ("False", "GracePeriodShort")),
        ({"terminationGracePeriodSeconds": 60}, 12.0, ("True", "GracePeriodFits")),
        (
            {"template": {"spec": {"terminationGracePeriodSeconds": 5}}},
            9.0,
            ("False", "GracePeriodShort"),
        ),
    ],
)
def test_grace_condition(
    workers: dict, save_seconds: float | None, expected: tuple[str, str] | None
) -> None:
    problem = grace_problem(make_job({"workers": workers}), save_seconds)
    assert (problem and (problem.status, problem.reason)) == expected


def test_grace_warning_is_a_warning_event() -> None:
    job = make_job({"workers": {"terminationGracePeriodSeconds": 30}})
    problem = grace_problem(job, 45.0)
    assert problem is not None
    status = build_status(
        job, [worker(0), worker(1)], None, LargeModelJobStatus(), Verdict(), NOW, [problem]
    )
    cond = next(c for c in status.conditions if c.type == "GracePeriod")
    assert "45.0s" in cond.message and "workers.terminationGracePeriodSeconds" in cond.message


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([], ""),
        ([{"type": "PodScheduled", "status": "True"}], ""),
        (
            [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": NO_ROOM,
                }
            ],
            NO_ROOM,
        ),
        ([{"type": "PodScheduled", "status": "False", "reason": "SchedulerError"}], ""),
    ],
)
def test_view_reads_the_schedulers_message(conditions: list, expected: str) -> None:
    body = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": conditions}}
    assert view_pod(body).unschedulable == expected


@pytest.mark.parametrize(
    ("reported", "before", "expected"),
    [
        (12.3456, None, 12.346),
        (None, 40.0, 40.0),  # a resumed trainer has not saved yet: the last measure stays
        (3.0, 40.0, 3.0),  # the newest save is the measure
    ],
)
def test_save_seconds_reach_status(
    reported: float | None, before: float | None, expected: float
) -> None:
    progress = TrainerProgress(
        stage="train",
        step=5,
        checkpoint_path="/c/step-5",
        checkpoint_step=5,
        checkpoint_write_seconds=reported,
    )
    previous = LargeModelJobStatus(
        checkpoint=CheckpointStatus(latest="/c/step-2", step=2, save_seconds=before)
    )
    status = build_status(make_job(), [worker(0), worker(1)], progress, previous, Verdict(), NOW)
    assert status.checkpoint.save_seconds == expected
