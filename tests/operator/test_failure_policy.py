"""judge_failures: restart policies, exit codes, backoffLimit, disruptions, the rendezvous store."""

from __future__ import annotations

import pytest

from lmjob_api.job import RunPolicy
from lmjob_api.status import StageStatus
from lmjob_api.termination import encode_stages
from lmjob_operator.failures import Action, exit_code_retryable, judge_failures
from lmjob_operator.pod_view import PodView
from tests.operator.factories import NOW, rendezvous, worker


def failed(index: int, code: int | None, reason: str = "Error", **fields: object) -> PodView:
    return worker(index, "Failed", exit_code=code, reason=reason, **fields)


RUNNING = [worker(0), worker(1)]

# (case id, pods, restartPolicy, backoffLimit, restarts so far, expected action, expected reason)
CASES = [
    ("all healthy", RUNNING, "OnFailure", 3, 0, Action.NONE, ""),
    (
        "pending workers",
        [worker(0, "Pending"), worker(1, "Pending")],
        "OnFailure",
        3,
        0,
        Action.NONE,
        "",
    ),
    (
        "OnFailure: exit 1 restarts",
        [worker(0), failed(1, 1)],
        "OnFailure",
        3,
        0,
        Action.RESTART_GROUP,
        "WorkerFailed",
    ),
    (
        "OnFailure: exit 137 restarts",
        [worker(0), failed(1, 137, "OOMKilled")],
        "OnFailure",
        3,
        0,
        Action.RESTART_GROUP,
        "WorkerFailed",
    ),
    (
        "ExitCode: exit 1 is permanent",
        [worker(0), failed(1, 1)],
        "ExitCode",
        3,
        0,
        Action.FAIL,
        "PermanentExitCode",
    ),
    (
        "ExitCode: exit 127 is permanent",
        [failed(0, 127), worker(1)],
        "ExitCode",
        3,
        0,
        Action.FAIL,
        "PermanentExitCode",
    ),
    (
        "ExitCode: exit 137 retries",
        [worker(0), failed(1, 137, "OOMKilled")],
        "ExitCode",
        3,
        0,
        Action.RESTART_GROUP,
        "WorkerFailed",
    ),
    (
        "ExitCode: exit 143 retries",
        [worker(0, round_=1), failed(1, 143, round_=1)],
        "ExitCode",
        3,
        1,
        Action.RESTART_GROUP,
        "WorkerFailed",
    ),
    (
        "ExitCode: one permanent among retryable fails",
        [failed(0, 137), failed(1, 2)],
        "ExitCode",
        3,
        0,
        Action.FAIL,
        "PermanentExitCode",
    ),
    (
        "Never: any failure fails",
        [worker(0), failed(1, 137)],
        "Never",
        3,
        0,
        Action.FAIL,
        "WorkerFailed",
    ),
    (
        "backoffLimit exhausted",
        [worker(0, round_=3), failed(1, 1, round_=3)],
        "OnFailure",
        3,
        3,
        Action.FAIL,
        "BackoffLimitExceeded",
    ),
    (
        "backoffLimit 0",
        [worker(0), failed(1, 1)],
        "OnFailure",
        0,
        0,
        Action.FAIL,
        "BackoffLimitExceeded",
    ),
    (
        "last restart allowed",
        [worker(0, round_=2), failed(1, 1, round_=2)],
        "OnFailure",
        3,
        2,
        Action.RESTART_GROUP,
        "WorkerFailed",
    ),
    (
        "evicted worker is replaced alone",
        [worker(0), worker(1, "Failed", reason="Evicted", exit_code=1, disrupted=True)],
        "OnFailure",
        3,
        0,
        Action.REPLACE,
        "WorkerDisrupted",
    ),
    (
        "disruption under Never is still replaced",
        [worker(0), worker(1, "Failed", reason="Preempted", disrupted=True)],
        "Never",
        0,
        0,
        Action.REPLACE,
        "WorkerDisrupted",
    ),
    (
        "failed without exit code: node lost",
        [worker(0), worker(1, "Failed", reason="NodeLost")],
        "OnFailure",
        0,
        0,
        Action.REPLACE,
        "WorkerDisrupted",
    ),
    (
        "phase Unknown: node lost",
        [worker(0), worker(1, "Unknown")],
        "OnFailure",
        3,
        0,
        Action.REPLACE,
        "WorkerDisrupted",
    ),
    (
        "failure of an older round is not counted again",
        [worker(0, round_=1), failed(1, 1, round_=0)],
        "OnFailure",
        3,
        1,
        Action.NONE,
        "",
    ),
    (
        "pod being deleted is not judged",
        [worker(0), failed(1, 1, deletion_timestamp=NOW)],
        "OnFailure",
        3,
        0,
        Action.NONE,
        "",
    ),
    (
        "a worker succeeded: finishing, failures ignored",
        [worker(0, "Succeeded", exit_code=0), failed(1, 1)],
        "OnFailure",
        3,
        0,
        Action.NONE,
        "",
    ),
]


@pytest.mark.parametrize(
    ("pods", "policy", "limit", "restarts", "action", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_judge_failures(
    pods: list[PodView], policy: str, limit: int, restarts: int, action: Action, reason: str
) -> None:
    run_policy = RunPolicy(restart_policy=policy, backoff_limit=limit)
    verdict = judge_failures(pods, rendezvous(), run_policy, restarts)
    assert (verdict.action, verdict.reason) == (action, reason)


def test_failure_message_names_pod_and_code() -> None:
    verdict = judge_failures([worker(0), failed(1, 3)], rendezvous(), RunPolicy(), 0)
    assert "demo-worker-1 exited with code 3" in verdict.message
    assert "restart 1 of 3" in verdict.message


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        # The trainer's own termination message, with the error that ended it.
        (
            encode_stages([], "cannot run this config: training.parallelism.tensorParallel: 2"),
            ": cannot run this config: training.parallelism.tensorParallel: 2",
        ),
        # Its message after a run that failed without one: nothing to add.
        (encode_stages([StageStatus(name="train", phase="Failed")]), ""),
        # FallbackToLogsOnError: the log's tail, of which the last line says the most.
        (
            "step 10 loss 2.3\nTraceback ...\nRuntimeError: CUDA out of memory\n",
            ": RuntimeError: CUDA out of memory",
        ),
        ("", ""),
    ],
    ids=["trainer error", "trainer stages only", "log tail", "none"],
)
def test_failure_message_carries_what_the_worker_said(message: str, detail: str) -> None:
    pod = worker(1, "Failed", exit_code=3, reason="Error", message=message)
    verdict = judge_failures([worker(0), pod], rendezvous(), RunPolicy(), 0)
    assert f"demo-worker-1 exited with code 3 (Error){detail} " in verdict.message + " "


def test_disrupted_pods_are_listed_for_replacement() -> None:
    pods = [worker(0), worker(1, "Failed", reason="Evicted", disrupted=True), worker(2, "Unknown")]
    verdict = judge_failures(pods, rendezvous(), RunPolicy(), 0)
    assert verdict.replace == ("demo-worker-1", "demo-worker-2")


# (case id, rendezvous pod, workers, expected action)
STORE_CASES = [
    ("store running", rendezvous(), RUNNING, Action.NONE),
    ("store gone while workers run", None, RUNNING, Action.RESTART_GROUP),
    (
        "store failed while workers run",
        rendezvous("Failed", exit_code=1),
        RUNNING,
        Action.RESTART_GROUP,
    ),
    ("store gone before any worker runs", None, [worker(0, "Pending")], Action.NONE),
]


@pytest.mark.parametrize(
    ("store", "pods", "action"), [c[1:] for c in STORE_CASES], ids=[c[0] for c in STORE_CASES]
)
def test_rendezvous_store_loss(store: PodView | None, pods: list[PodView], action: Action) -> None:
    verdict = judge_failures(pods, store, RunPolicy(), 0)
    assert verdict.action == action
    if action == Action.RESTART_GROUP:
        assert verdict.reason == "RendezvousLost"


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(0, True), (1, False), (2, False), (127, False), (128, True), (137, True), (143, True)],
)
def test_exit_code_classes(code: int, retryable: bool) -> None:
    assert exit_code_retryable(code) is retryable
