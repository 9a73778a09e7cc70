"""build_status and transition_events: phases, conditions, worker counts, progress, as tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from lmjob_api import JobPhase
from lmjob_api.status import (
    EVALUATIONS_KEPT,
    Condition,
    EvaluationStatus,
    LargeModelJobStatus,
    ProgressStatus,
    StageStatus,
    StragglerStatus,
)
from lmjob_api.termination import encode_stages
from lmjob_api.trainer_metrics import TrainerProgress as Progress
from lmjob_operator.failures import Action, Verdict
from lmjob_operator.pod_view import PodView
from lmjob_operator.status import Problem, build_status, stamp, transition_events
from tests.operator.factories import NOW, make_job, rendezvous, worker

ELASTIC = {"workers": {"replicas": 3, "minReplicas": 2, "maxReplicas": 4}}
RESTART = Verdict(Action.RESTART_GROUP, "WorkerFailed", "demo-worker-1 exited with code 1")
REPLACE = Verdict(
    Action.REPLACE, "WorkerDisrupted", "demo-worker-1 was Evicted", ("demo-worker-1",)
)
FAIL = Verdict(Action.FAIL, "PermanentExitCode", "demo-worker-1 exited with code 2")


def prev(phase: JobPhase = JobPhase.PENDING, **fields: Any) -> LargeModelJobStatus:
    return LargeModelJobStatus(phase=phase, **fields)


def restarting_prev(restarts: int = 1) -> LargeModelJobStatus:
    cond = Condition(type="Restarting", status="True", reason="WorkerFailed", message="m")
    return prev(JobPhase.RESTARTING, restarts=restarts, conditions=[cond])


# (case id, spec, pods, previous, verdict, expected phase, expected "active/desired")
CASES = [
    ("new job, no pods", {}, [], prev(), Verdict(), JobPhase.PENDING, "0/2"),
    (
        "pods pending",
        {},
        [worker(0, "Pending"), worker(1, "Pending")],
        prev(),
        Verdict(),
        JobPhase.PENDING,
        "2/2",
    ),
    (
        "one of two running",
        {},
        [worker(0), worker(1, "Pending")],
        prev(),
        Verdict(),
        JobPhase.PENDING,
        "2/2",
    ),
    ("all running", {}, [worker(0), worker(1)], prev(), Verdict(), JobPhase.RUNNING, "2/2"),
    (
        "elastic: min running is enough",
        ELASTIC,
        [worker(0, bounds="2-4"), worker(1, bounds="2-4"), worker(2, "Pending")],
        prev(),
        Verdict(),
        JobPhase.RUNNING,
        "3/3",
    ),
    (
        "failure → Restarting",
        {},
        [worker(0), worker(1, "Failed", exit_code=1)],
        prev(JobPhase.RUNNING),
        RESTART,
        JobPhase.RESTARTING,
        "1/2",
    ),
    (
        "disruption → Restarting",
        {},
        [worker(0), worker(1, "Failed", disrupted=True)],
        prev(JobPhase.RUNNING),
        REPLACE,
        JobPhase.RESTARTING,
        "1/2",
    ),
    (
        "still restarting until all run",
        {},
        [worker(0, round_=1), worker(1, "Pending", round_=1)],
        restarting_prev(),
        Verdict(),
        JobPhase.RESTARTING,
        "2/2",
    ),
    (
        "restart over",
        {},
        [worker(0, round_=1), worker(1, round_=1)],
        restarting_prev(),
        Verdict(),
        JobPhase.RUNNING,
        "2/2",
    ),
    (
        "permanent failure",
        {},
        [worker(0), worker(1, "Failed", exit_code=2)],
        prev(JobPhase.RUNNING),
        FAIL,
        JobPhase.FAILED,
        "1/2",
    ),
    (
        "succeeded",
        {},
        [worker(0, "Succeeded", exit_code=0), worker(1, "Succeeded", exit_code=0)],
        prev(JobPhase.RUNNING),
        Verdict(),
        JobPhase.SUCCEEDED,
        "0/2",
    ),
    (
        "one done, one still exiting",
        {},
        [worker(0, "Succeeded", exit_code=0), worker(1)],
        prev(JobPhase.RUNNING),
        Verdict(),
        JobPhase.RUNNING,
        "1/2",
    ),
    (
        "suspended",
        {"runPolicy": {"suspend": True}},
        [worker(0), worker(1)],
        prev(JobPhase.RUNNING),
        Verdict(),
        JobPhase.SUSPENDED,
        "2/2",
    ),
    (
        "suspended before start",
        {"runPolicy": {"suspend": True}},
        [],
        prev(),
        Verdict(),
        JobPhase.SUSPENDED,
        "0/2",
    ),
    (
        "Failed sticks",
        {},
        [worker(0), worker(1)],
        prev(JobPhase.FAILED),
        Verdict(),
        JobPhase.FAILED,
        "2/2",
    ),
    ("Succeeded sticks", {}, [], prev(JobPhase.SUCCEEDED), Verdict(), JobPhase.SUCCEEDED, "0/2"),
    (
        "deleting pods are not active",
        {},
        [worker(0), worker(1, deletion_timestamp=NOW)],
        prev(),
        Verdict(),
        JobPhase.PENDING,
        "1/2",
    ),
    (
        "stale round pods do not count as running",
        {},
        [worker(0, round_=0), worker(1, round_=0)],
        prev(restarts=1),
        Verdict(),
        JobPhase.PENDING,
        "2/2",
    ),
]


@pytest.mark.parametrize(
    ("spec", "pods", "previous", "verdict", "phase", "summary"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_phase_and_workers(
    spec: dict[str, Any],
    pods: list[PodView],
    previous: LargeModelJobStatus,
    verdict: Verdict,
    phase: JobPhase,
    summary: str,
) -> None:
    status = build_status(make_job(spec), pods, None, previous, verdict, NOW)
    assert status.phase == phase
    assert status.workers.summary == summary
    assert status.workers.selector == "lmjob.dev/job-name=demo,lmjob.dev/role=worker"


def condition(status: LargeModelJobStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def test_failure_counts_a_restart_and_says_why() -> None:
    status = build_status(
        make_job(),
        [worker(0), worker(1, "Failed", exit_code=1)],
        None,
        prev(JobPhase.RUNNING),
        RESTART,
        NOW,
    )
    assert status.restarts == 1
    cond = condition(status, "Restarting")
    assert cond is not None
    assert (cond.status, cond.reason, cond.message) == ("True", "WorkerFailed", RESTART.message)
    assert condition(status, "Running").status == "False"


def test_disruption_is_not_counted() -> None:
    status = build_status(make_job(), [worker(0)], None, prev(JobPhase.RUNNING), REPLACE, NOW)
    assert status.restarts == 0


def test_failed_condition_carries_reason() -> None:
    status = build_status(make_job(), [worker(0)], None, prev(JobPhase.RUNNING), FAIL, NOW)
    cond = condition(status, "Failed")
    assert (cond.status, cond.reason) == ("True", "PermanentExitCode")
    assert status.completion_time == stamp(NOW)


def test_invalid_spec_fails_the_job() -> None:
    problem = Problem("Failed", "True", "InvalidSpec", "spec.workers...: rename")
    status = build_status(make_job(), [], None, prev(), Verdict(), NOW, [problem])
    assert status.phase == JobPhase.FAILED
    assert condition(status, "Failed").reason == "InvalidSpec"


def test_gang_condition_is_reported() -> None:
    problem = Problem("GangScheduling", "False", "PodGroupAPIMissing", "no PodGroup API")
    status = build_status(
        make_job(), [worker(0), worker(1)], None, prev(), Verdict(), NOW, [problem]
    )
    assert status.phase == JobPhase.RUNNING
    assert condition(status, "GangScheduling").reason == "PodGroupAPIMissing"


PENDING_QUOTA = Problem(
    "Queued", "True", "Pending", "couldn't assign flavors to pod set workers: insufficient quota"
)
ADMITTED = Problem("Queued", "False", "Admitted", "admitted by ClusterQueue cq")


# (case id, pods, previous, Kueue's verdict, phase, Queued condition (status, reason))
QUEUE_CASES = [
    ("waits for quota", [], prev(), PENDING_QUOTA, JobPhase.QUEUED, ("True", "Pending")),
    (
        # Evicted while running: the pods being stopped are not a failure or a success.
        "evicted, pods stopping",
        [worker(0, deletion_timestamp=NOW), worker(1, "Succeeded", deletion_timestamp=NOW)],
        prev(JobPhase.RUNNING, start_time=stamp(NOW)),
        Problem("Queued", "True", "EvictedPreempted", "preempted by default/high"),
        JobPhase.QUEUED,
        ("True", "EvictedPreempted"),
    ),
    ("admitted, pods starting", [], prev(JobPhase.QUEUED), ADMITTED, JobPhase.PENDING,
     ("False", "Admitted")),
    ("admitted, running", [worker(0), worker(1)], prev(JobPhase.QUEUED), ADMITTED,
     JobPhase.RUNNING, ("False", "Admitted")),
    ("suspend wins over the queue", [], prev(JobPhase.QUEUED), PENDING_QUOTA, JobPhase.SUSPENDED,
     ("True", "Pending")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pods", "previous", "queue", "phase", "queued"),
    [c[1:] for c in QUEUE_CASES],
    ids=[c[0] for c in QUEUE_CASES],
)
def test_queued_phase_follows_kueue(
    pods: list[PodView],
    previous: LargeModelJobStatus,
    queue: Problem,
    phase: JobPhase,
    queued: tuple[str, str],
) -> None:
    spec = {"runPolicy": {"suspend": True}} if phase == JobPhase.SUSPENDED else {}
    status = build_status(make_job(spec), pods, None, previous, Verdict(), NOW, [queue])
    assert status.phase == phase
    cond = condition(status, "Queued")
    assert (cond.status, cond.reason, cond.message) == (*queued, queue.message)
    assert status.restarts == 0
    if phase == JobPhase.QUEUED:
        running = condition(status, "Running")
        assert (running.status, running.reason) == ("False", queue.reason)
        events = transition_events(previous, status)
        assert [(e.reason, e.message) for e in events if "Queued" in e.message] == [
            (queue.reason, f"{previous.phase.value} → Queued: {queue.message}")
        ]


def test_queued_time_does_not_count_against_the_deadline() -> None:
    readmitted = Condition(
        type="Queued", status="False", reason="Admitted",
        last_transition_time=stamp(NOW - timedelta(seconds=30)),
    )  # fmt: skip
    previous = prev(
        JobPhase.RUNNING,
        start_time=stamp(NOW - timedelta(seconds=600)),
        conditions=[readmitted],
    )
    job = make_job({"runPolicy": {"activeDeadlineSeconds": 60}})
    status = build_status(job, [worker(0), worker(1)], None, previous, Verdict(), NOW, [ADMITTED])
    assert status.phase == JobPhase.RUNNING


@pytest.mark.parametrize(
    ("seconds_ago", "suspended_at", "exceeded"),
    [(30, None, False), (61, None, True), (600, 30, False), (600, 61, True)],
)
def test_active_deadline(seconds_ago: int, suspended_at: int | None, exceeded: bool) -> None:
    conditions = []
    if suspended_at is not None:
        resumed = stamp(NOW - timedelta(seconds=suspended_at))
        conditions = [
            Condition(
                type="Suspended", status="False", reason="JobResumed", last_transition_time=resumed
            )
        ]
    previous = prev(
        JobPhase.RUNNING,
        start_time=stamp(NOW - timedelta(seconds=seconds_ago)),
        conditions=conditions,
    )
    job = make_job({"runPolicy": {"activeDeadlineSeconds": 60}})
    status = build_status(job, [worker(0), worker(1)], None, previous, Verdict(), NOW)
    assert (status.phase == JobPhase.FAILED) is exceeded
    if exceeded:
        assert condition(status, "Failed").reason == "DeadlineExceeded"


def test_transition_time_only_moves_on_change() -> None:
    job, pods = make_job(), [worker(0), worker(1)]
    first = build_status(job, pods, None, prev(), Verdict(), NOW)
    later = build_status(job, pods, None, first, Verdict(), NOW + timedelta(minutes=5))
    assert condition(later, "Running").last_transition_time == stamp(NOW)
    assert later == first


PROGRESS = Progress(
    stage="train",
    step=120,
    total_steps=200,
    loss=1.5,
    tokens_per_second=5e4,
    world_size=8,
    checkpoint_path="/checkpoints/train/step-000000100",
    checkpoint_step=100,
    stages=(StageStatus(name="train", phase="Running"), StageStatus(name="prune")),
)


def test_progress_reaches_status() -> None:
    status = build_status(make_job(), [worker(0), worker(1)], PROGRESS, prev(), Verdict(), NOW)
    assert status.progress == ProgressStatus(
        stage="train",
        step=120,
        total_steps=200,
        loss=1.5,
        tokens_per_second=5e4,
        updated_at=stamp(NOW),
    )
    assert status.world_size == 8
    assert (status.checkpoint.latest, status.checkpoint.step) == (
        "/checkpoints/train/step-000000100",
        100,
    )
    assert [(s.name, s.phase) for s in status.stages] == [
        ("train", "Running"),
        ("prune", "Pending"),
    ]


def test_unchanged_progress_keeps_its_timestamp() -> None:
    job, pods = make_job(), [worker(0), worker(1)]
    first = build_status(job, pods, PROGRESS, prev(), Verdict(), NOW)
    later = build_status(job, pods, PROGRESS, first, Verdict(), NOW + timedelta(seconds=30))
    assert later.progress.updated_at == stamp(NOW)


def test_compressing_phase() -> None:
    progress = Progress(stage="prune", step=3, total_steps=10)
    status = build_status(
        make_job(), [worker(0), worker(1)], progress, prev(JobPhase.RUNNING), Verdict(), NOW
    )
    assert status.phase == JobPhase.COMPRESSING


def test_world_size_estimated_without_metrics() -> None:
    job = make_job({"workers": {"resources": {"limits": {"nvidia.com/gpu": 4}}}})
    status = build_status(job, [worker(0), worker(1)], None, prev(), Verdict(), NOW)
    assert status.world_size == 8


def test_stages_listed_from_spec_before_progress() -> None:
    job = make_job(
        {
            "compression": {
                "stages": [{"name": "q", "type": "quantize", "method": "int8-weight-only"}]
            }
        }
    )
    status = build_status(job, [], None, prev(), Verdict(), NOW)
    assert [(s.name, s.phase) for s in status.stages] == [("train", "Pending"), ("q", "Pending")]


@pytest.mark.parametrize(
    ("export", "names"),
    [
        ({"formats": ["gguf", "hf"]}, ["q.gguf", "q.hf"]),  # default: the last stage
        ({"formats": ["onnx"], "stages": ["q", "train"]}, ["train.onnx", "q.onnx"]),
    ],
)
def test_exports_are_stages_after_the_compression_chain(
    export: dict[str, Any], names: list[str]
) -> None:
    """Each export of spec.export is a stage `<stage>.<format>`, in the job's stage order;
    rank 0's termination message fills them in like any stage."""
    job = make_job({**COMPRESSED, "export": export})
    status = build_status(job, [], None, prev(), Verdict(), NOW)
    assert [s.name for s in status.stages] == ["train", "q", *names]
    done = [*FINAL, *({"name": n, "phase": "Succeeded", "metrics": {"bytes": 1.0}} for n in names)]
    pods = [worker(0, "Succeeded", exit_code=0), _finished(1, list(reversed(done)))]
    final = build_status(job, pods, None, prev(JobPhase.COMPRESSING), Verdict(), NOW)
    assert [(s.name, s.phase) for s in final.stages] == [
        (n, "Succeeded") for n in ["train", "q", *names]
    ]


def test_pure() -> None:
    args = (make_job(), [worker(0), worker(1), rendezvous()], PROGRESS, prev(), Verdict(), NOW)
    assert build_status(*args) == build_status(*args)


# (case id, previous phase→ new phase, expected (type, reason))
def test_events_for_every_transition() -> None:
    job = make_job()
    pending = build_status(job, [], None, prev(), Verdict(), NOW)
    running = build_status(job, [worker(0), worker(1)], None, pending, Verdict(), NOW)
    restarting = build_status(
        job, [worker(0), worker(1, "Failed", exit_code=1)], None, running, RESTART, NOW
    )
    failed = build_status(job, [worker(0, round_=1)], None, restarting, FAIL, NOW)
    assert [(e.type, e.reason) for e in transition_events(pending, running)] == [
        ("Normal", "WorkersRunning"),
        ("Normal", "WorkersCreated"),
    ]
    assert [(e.type, e.reason) for e in transition_events(running, restarting)] == [
        ("Warning", "WorkerFailed")
    ]
    assert [(e.type, e.reason) for e in transition_events(restarting, failed)] == [
        ("Warning", "PermanentExitCode")
    ]
    assert transition_events(running, running) == []
    assert "Running → Restarting" in transition_events(running, restarting)[0].message


def _finished(index: int, stages: list[dict], **fields: Any) -> PodView:
    message = encode_stages([StageStatus.model_validate(s) for s in stages])
    return worker(index, "Succeeded", exit_code=0, message=message, **fields)


COMPRESSED = {
    "compression": {"stages": [{"name": "q", "type": "quantize", "method": "int8-weight-only"}]}
}
FINAL = [
    {
        "name": "train",
        "phase": "Succeeded",
        "checkpoint": "/c/train/step-2",
        "metrics": {"evalLoss": 1.8},
    },
    {"name": "q", "phase": "Succeeded", "checkpoint": "/c/q/step-0", "metrics": {"bytes": 2e6}},
]


def test_final_stages_come_from_rank0s_termination_message() -> None:
    # The last scrape saw q still running; the job then ended before the next one.
    stale = Progress(
        stage="q",
        stages=(
            StageStatus(name="train", phase="Succeeded"),
            StageStatus(name="q", phase="Running"),
        ),
    )
    job = make_job(COMPRESSED)
    pods = [worker(0, "Succeeded", exit_code=0), _finished(1, FINAL)]
    status = build_status(job, pods, stale, prev(JobPhase.COMPRESSING), Verdict(), NOW)
    assert status.phase == JobPhase.SUCCEEDED
    assert [(s.name, s.phase, s.checkpoint, s.metrics) for s in status.stages] == [
        ("train", "Succeeded", "/c/train/step-2", {"evalLoss": 1.8}),
        ("q", "Succeeded", "/c/q/step-0", {"bytes": 2e6}),
    ]
    # Pods cleaned up afterwards: the finished job's stages stand, the stale scrape is ignored.
    later = build_status(job, [], stale, status, Verdict(), NOW)
    assert later.stages == status.stages


def test_a_message_that_is_not_ours_is_ignored() -> None:
    job = make_job(COMPRESSED)
    pods = [
        worker(0, "Succeeded", exit_code=0, message="done"),
        worker(1, "Succeeded", exit_code=0),
    ]
    status = build_status(job, pods, None, prev(JobPhase.RUNNING), Verdict(), NOW)
    assert [(s.name, s.phase) for s in status.stages] == [("train", "Pending"), ("q", "Pending")]


SLOW = StragglerStatus(
    rank=3,
    pod="demo-worker-1",
    node="node-b",
    step_seconds=0.5,
    data_wait_seconds=0.4,
    median_seconds=0.1,
)
TIMES = {0: 0.1, 1: 0.1, 2: 0.1, 3: 0.5}


@pytest.mark.parametrize(
    ("progress", "stragglers", "condition_status", "words"),
    [
        (PROGRESS, [], None, []),  # no verdict yet (window not full): no condition
        (
            replace(PROGRESS, rank_step_seconds=TIMES, stragglers=(SLOW,)),
            [SLOW],
            "True",
            ["rank 3", "pod demo-worker-1 on node-b", "0.5s per step", "5.0×", "0.4s"],
        ),
        (
            replace(PROGRESS, rank_step_seconds=dict.fromkeys(range(4), 0.1)),
            [],
            "False",
            ["no rank slower than 1.5×", "4 ranks"],
        ),
    ],
    ids=["no-window-yet", "one-straggler", "none"],
)
def test_stragglers_reach_status(
    progress: Progress, stragglers: list, condition_status: str | None, words: list[str]
) -> None:
    status = build_status(make_job(), [worker(0), worker(1)], progress, prev(), Verdict(), NOW)
    assert status.stragglers == stragglers
    cond = condition(status, "Stragglers")
    assert (cond.status if cond else None) == condition_status
    for word in words:
        assert word in cond.message, cond.message


def test_straggler_condition_clears_and_events_say_so() -> None:
    job, pods = make_job(), [worker(0), worker(1)]
    slow = replace(PROGRESS, rank_step_seconds=TIMES, stragglers=(SLOW,))
    first = build_status(job, pods, slow, prev(JobPhase.RUNNING), Verdict(), NOW)
    [event] = [e for e in transition_events(prev(JobPhase.RUNNING), first) if "rank 3" in e.message]
    assert (event.type, event.reason) == ("Warning", "StragglersFound")
    # A scrape that missed keeps the last word; a new verdict without stragglers clears it.
    assert build_status(job, pods, None, first, Verdict(), NOW).stragglers == [SLOW]
    well = replace(PROGRESS, rank_step_seconds=dict.fromkeys(range(4), 0.1))
    later = build_status(job, pods, well, first, Verdict(), NOW)
    assert later.stragglers == []
    assert condition(later, "Stragglers").reason == "NoStragglers"


def evals(stage: str, *steps_and_losses: tuple[int, float]) -> list[EvaluationStatus]:
    return [EvaluationStatus(stage=stage, step=s, loss=v) for s, v in steps_and_losses]


PRUNED = {"compression": {"stages": [{"name": "prune", "type": "prune", "finetuneSteps": 10}]}}
MANY = evals("train", *((s, 3.0 - s / 1000) for s in range(300)))


# (case id, previous status.evaluations, scraped ones (None: no scrape), expected)
EVALUATION_CASES = [
    ("no scrape: the list stands", evals("train", (100, 2.0)), None, evals("train", (100, 2.0))),
    (
        "first scrape",
        [],
        evals("train", (100, 2.0), (200, 1.9)),
        evals("train", (100, 2.0), (200, 1.9)),
    ),
    (
        "union by stage and step, the scrape wins",
        evals("train", (100, 2.0), (200, 1.9)),
        evals("train", (200, 1.8), (300, 1.7)),
        evals("train", (100, 2.0), (200, 1.8), (300, 1.7)),
    ),
    (
        "trainer restarted: its new export lacks the old ones, status keeps them",
        evals("train", (100, 2.0), (200, 1.9)),
        evals("train", (300, 1.7)),
        evals("train", (100, 2.0), (200, 1.9), (300, 1.7)),
    ),
    (
        "stage order, not name order, then step",
        evals("train", (300, 1.7)),
        [*evals("prune", (10, 1.6), (5, 1.65)), *evals("train", (300, 1.7))],
        [*evals("train", (300, 1.7)), *evals("prune", (5, 1.65), (10, 1.6))],
    ),
    (
        "the newest 256 are kept",
        MANY,
        evals("prune", (5, 1.65)),
        [*MANY[-(EVALUATIONS_KEPT - 1) :], *evals("prune", (5, 1.65))],
    ),
]


@pytest.mark.parametrize(
    ("previous", "scraped", "expected"),
    [c[1:] for c in EVALUATION_CASES],
    ids=[c[0] for c in EVALUATION_CASES],
)
def test_every_evaluation_seen_stays_in_status(
    previous: list[EvaluationStatus],
    scraped: list[EvaluationStatus] | None,
    expected: list[EvaluationStatus],
) -> None:
    """status.evaluations gathers every scrape's eval_history, so neither a missed scrape, a
    trainer restart nor an operator restart (which reads status back) loses one."""
    job, pods = make_job(PRUNED), [worker(0), worker(1)]
    progress = None if scraped is None else replace(PROGRESS, evaluations=tuple(scraped))
    status = build_status(job, pods, progress, prev(evaluations=previous), Verdict(), NOW)
    assert status.evaluations == expected
    assert len(status.evaluations) <= EVALUATIONS_KEPT
    # Reading the same scrape again changes nothing, so status is not rewritten.
    assert build_status(job, pods, progress, status, Verdict(), NOW).evaluations == (
        status.evaluations
    )
