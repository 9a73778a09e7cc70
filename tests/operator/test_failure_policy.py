"""judge_failures: restart policies, exit codes, backoffLimit, disruptions, the rendezvous store."""

from __future__ import annotations

import pytest

from lmjob_api.exit_codes import CONFIG_ERROR, NON_FINITE
from lmjob_api.job import RunPolicy
from lmjob_api.status import StageStatus
from lmjob_api.termination import encode_stages
from lmjob_operator.failures import (
    Action,
    CreateOutcome,
    exit_code_retryable,
    judge_create_error,
    judge_failures,
)
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
    # A saved stop: SIGTERM → checkpoint → exit 128+15 (trainer/lmjob_trainer/train.py).
    # Under Never with no budget left, so counting it would fail the job.
    (
        "SIGTERM of a deleted pod (eviction API, kubectl delete) spends no backoffLimit",
        [worker(0), failed(1, 143, deletion_timestamp=NOW)],
        "Never",
        0,
        0,
        Action.NONE,
        "",
    ),
    (
        "SIGTERM of every worker (suspend, Kueue eviction) spends no backoffLimit",
        [failed(0, 143, deletion_timestamp=NOW), failed(1, 143, deletion_timestamp=NOW)],
        "Never",
        0,
        0,
        Action.NONE,
        "",
    ),
    (
        "SIGTERM from a node shutdown (DisruptionTarget) is replaced, not counted",
        [worker(0), failed(1, 143, reason="Terminated", disrupted=True)],
        "Never",
        0,
        0,
        Action.REPLACE,
        "WorkerDisrupted",
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
    # A configuration error (exit 78) is never retried, whatever the policy and budget.
    *(
        (
            f"{policy}: exit 78 fails at once",
            [worker(0), failed(1, CONFIG_ERROR)],
            policy,
            3,
            0,
            Action.FAIL,
            "ConfigError",
        )
        for policy in ("OnFailure", "ExitCode", "Never")
    ),
    # A loss that turned NaN (exit 79) would do so again from the same checkpoint.
    *(
        (
            f"{policy}: exit 79 fails at once",
            [worker(0), failed(1, NON_FINITE)],
            policy,
            3,
            0,
            Action.FAIL,
            "NonFiniteLoss",
        )
        for policy in ("OnFailure", "ExitCode", "Never")
    ),
    (
        "exit 78 beside a retryable failure still fails",
        [failed(0, 137, "OOMKilled"), failed(1, CONFIG_ERROR)],
        "OnFailure",
        3,
        0,
        Action.FAIL,
        "ConfigError",
    ),
    (
        "exit 78 of an older round is not judged again",
        [worker(0, round_=1), failed(1, CONFIG_ERROR, round_=0)],
        "OnFailure",
        3,
        1,
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


def test_config_error_message_carries_the_trainers_reason() -> None:
    error = "cannot run this config: training.data.source: /data/x.txt does not exist"
    pod = failed(1, CONFIG_ERROR, message=encode_stages([], error))
    verdict = judge_failures([worker(0), pod], rendezvous(), RunPolicy(), 0)
    assert f"demo-worker-1 exited with code 78 (Error): {error}" in verdict.message
    assert "never retried" in verdict.message


PSA = (
    'pods "demo-worker-0" is forbidden: violates PodSecurity "restricted:latest": '
    'allowPrivilegeEscalation != false (container "worker" must set '
    "securityContext.allowPrivilegeEscalation=false)"
)

# (case id, HTTP status, API server message, outcome)
CREATE_CASES = [
    ("already exists", 409, 'pods "demo-worker-0" already exists', CreateOutcome.EXISTS),
    ("PodSecurity", 403, PSA, CreateOutcome.REFUSED),
    (
        "admission webhook denial",
        403,
        'admission webhook "validation.gatekeeper.sh" denied the request: no privileged',
        CreateOutcome.REFUSED,
    ),
    (
        "LimitRange maximum",
        403,
        'pods "demo-worker-0" is forbidden: maximum cpu usage per Container is 1, but limit is 2',
        CreateOutcome.REFUSED,
    ),
    (
        "quota exceeded",
        403,
        'pods "demo-worker-2" is forbidden: exceeded quota: pods, requested: pods=1',
        CreateOutcome.WAIT,
    ),
    (
        "operator RBAC",
        403,
        'pods is forbidden: User "system:serviceaccount:lmjob:op" cannot create resource "pods"',
        CreateOutcome.WAIT,
    ),
    (
        "namespace terminating",
        403,
        "unable to create new content in namespace ns because it is being terminated",
        CreateOutcome.WAIT,
    ),
    (
        "invalid field",
        422,
        'Pod "demo-worker-0" is invalid: spec.nodeSelector',
        CreateOutcome.REFUSED,
    ),
    ("bad request", 400, "json: cannot unmarshal", CreateOutcome.REFUSED),
    ("too many requests", 429, "too many requests", CreateOutcome.RETRY),
    ("server error", 500, "Internal error occurred: failed calling webhook", CreateOutcome.RETRY),
    ("unavailable", 503, "", CreateOutcome.RETRY),
    ("timeout", 504, "", CreateOutcome.RETRY),
    ("credentials expired", 401, "Unauthorized", CreateOutcome.RETRY),
    ("namespace not found", 404, 'namespaces "ns" not found', CreateOutcome.RETRY),
]


@pytest.mark.parametrize(
    ("status", "message", "outcome"),
    [c[1:] for c in CREATE_CASES],
    ids=[c[0] for c in CREATE_CASES],
)
def test_judge_create_error(status: int, message: str, outcome: CreateOutcome) -> None:
    assert judge_create_error(status, message) == outcome
