"""parse_scrape (lmjob_api.trainer_metrics, the one reader of the trainer's series) on real
Prometheus expositions written by prometheus_client as the trainer does, and the operator's
scrape_progress against a live HTTP endpoint."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from lmjob_api.trainer_metrics import parse_scrape
from lmjob_operator.progress import scrape_progress
from tests.operator.factories import worker

STAGES = ["train", "prune", "int8"]


def exposition(
    *,
    rank0: bool = True,
    phases: dict[str, str] | None = None,
    steps: dict[str, tuple[int, int, float]] | None = None,
    checkpoints: dict[str, tuple[str, int]] | None = None,
    results: dict[str, dict[str, float]] | None = None,
    restarts: int = 0,
    eval_loss: dict[str, float] | None = None,
    eval_history: dict[tuple[str, str], float] | None = None,
    hang: dict[str, tuple[float, float | None]] | None = None,
    job: str = "demo",
) -> str:
    """The text a worker serves; without `rank0` only per-pod series (memory, the hang
    watchdog's: `hang` is {stage: (stalled seconds, timeout or None)}) are present."""
    reg = CollectorRegistry()
    labels = ["job", "stage"]
    memory = Gauge("lmjob_trainer_memory_bytes", "m", [*labels, "kind"], registry=reg)
    memory.labels(job, "train", "rss").set(1e9)
    stalled = Gauge("lmjob_trainer_stalled_seconds", "s", labels, registry=reg)
    timeout = Gauge("lmjob_trainer_hang_timeout_seconds", "t", labels, registry=reg)
    for stage, (seconds, limit) in (hang or {}).items():
        stalled.labels(job, stage).set(seconds)
        if limit is not None:
            timeout.labels(job, stage).set(limit)
    if not rank0:
        return generate_latest(reg).decode()
    step = Gauge("lmjob_trainer_step", "s", labels, registry=reg)
    total = Gauge("lmjob_trainer_total_steps", "t", labels, registry=reg)
    loss = Gauge("lmjob_trainer_loss", "l", labels, registry=reg)
    tps = Gauge("lmjob_trainer_tokens_per_second", "x", labels, registry=reg)
    Histogram("lmjob_trainer_step_seconds", "h", labels, registry=reg).labels(job, "train").observe(
        0.2
    )
    Gauge("lmjob_trainer_world_size", "w", ["job"], registry=reg).labels(job).set(4)
    Gauge("lmjob_trainer_restarts", "r", ["job"], registry=reg).labels(job).set(restarts)
    evals = Gauge("lmjob_trainer_eval_loss", "e", labels, registry=reg)
    for stage, value in (eval_loss or {}).items():
        evals.labels(job, stage).set(value)
    history = Gauge("lmjob_trainer_eval_history", "h", [*labels, "step"], registry=reg)
    for (stage, at), value in (eval_history or {}).items():
        history.labels(job, stage, at).set(value)
    info = Gauge("lmjob_trainer_stage_info", "i", [*labels, "phase"], registry=reg)
    ckpt = Gauge("lmjob_trainer_checkpoint_info", "c", [*labels, "path"], registry=reg)
    result = Gauge("lmjob_trainer_stage_result", "r", [*labels, "metric"], registry=reg)
    for stage, (s, t, value) in (steps or {}).items():
        step.labels(job, stage).set(s)
        total.labels(job, stage).set(t)
        loss.labels(job, stage).set(value)
        tps.labels(job, stage).set(1234.5)
    for stage, phase in (phases or {}).items():
        info.labels(job, stage, phase).set(1)
    for stage, (path, at) in (checkpoints or {}).items():
        ckpt.labels(job, stage, path).set(at)
    for stage, metrics in (results or {}).items():
        for metric, value in metrics.items():
            result.labels(job, stage, metric).set(value)
    return generate_latest(reg).decode()


# (case id, exposition kwargs, expected (stage, step, total, loss, checkpoint path, checkpoint step))
CASES = [
    (
        "training",
        {
            "phases": {"train": "Running", "prune": "Pending"},
            "steps": {"train": (120, 200, 1.5)},
            "checkpoints": {"train": ("/c/train/step-000000100", 100)},
        },
        ("train", 120, 200, 1.5, "/c/train/step-000000100", 100),
    ),
    (
        "compressing: the running stage wins",
        {
            "phases": {"train": "Succeeded", "prune": "Running"},
            "steps": {"train": (200, 200, 1.2), "prune": (5, 50, 1.4)},
            "checkpoints": {"train": ("/c/train/step-000000200", 200)},
        },
        ("prune", 5, 50, 1.4, "/c/train/step-000000200", 200),
    ),
    (
        "between stages: the latest started stage",
        {
            "phases": {"train": "Succeeded", "prune": "Succeeded", "int8": "Pending"},
            "steps": {"train": (200, 200, 1.2), "prune": (50, 50, 1.3)},
        },
        ("prune", 50, 50, 1.3, "", 0),
    ),
    (
        "newest checkpoint of the stage",
        {
            "phases": {"train": "Running"},
            "steps": {"train": (300, 400, 1.0)},
            "checkpoints": {"train": ("/c/train/step-000000300", 300)},
        },
        ("train", 300, 400, 1.0, "/c/train/step-000000300", 300),
    ),
    (
        # `lmjob run` used to take the first stage in the text here (train); the stage
        # order decides now, for it and the operator alike.
        "between stages, listed out of order: the stage order decides",
        {
            "phases": {"int8": "Pending", "prune": "Succeeded", "train": "Succeeded"},
            "steps": {"prune": (50, 50, 1.3), "train": (200, 200, 1.2)},
        },
        ("prune", 50, 50, 1.3, "", 0),
    ),
    (
        "started, no stage_info yet: the stage with series",
        {"steps": {"train": (3, 10, 2.5)}},
        ("train", 3, 10, 2.5, "", 0),
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_scrape(kwargs: dict, expected: tuple) -> None:
    progress = parse_scrape(exposition(**kwargs), STAGES)
    assert progress is not None
    got = (
        progress.stage,
        progress.step,
        progress.total_steps,
        progress.loss,
        progress.checkpoint_path,
        progress.checkpoint_step,
    )
    assert got == expected
    assert progress.world_size == 4
    assert progress.tokens_per_second == 1234.5


def test_not_rank_zero() -> None:
    assert parse_scrape(exposition(rank0=False), STAGES) is None
    # Series of other exporters, even with the same short names, are not the trainer's.
    assert parse_scrape('step{job="j",stage="train"} 3.0\nworld_size 2.0\n', STAGES) is None


def test_another_jobs_series_are_not_this_jobs() -> None:
    """Pods sharing a network (hostNetwork, a local cluster's process nodes): the port may
    still serve another job's trainer, e.g. a stopped trial's while the next trial starts."""
    assert parse_scrape(exposition(), STAGES, job="demo") is not None
    assert parse_scrape(exposition(), STAGES, job="another") is None


def test_rank_zero_before_its_first_step() -> None:
    """world_size is set at start-up: rank 0 is found before any stage has numbers."""
    progress = parse_scrape(exposition(), STAGES)
    assert progress is not None and (progress.stage, progress.step, progress.world_size) == (
        "",
        0,
        4,
    )


@pytest.mark.parametrize(
    ("hang", "expected"),
    [
        ({}, (None, None)),
        ({"train": (4.5, None)}, (4.5, None)),  # the derived timeout, not armed yet
        ({"train": (12.0, 10.0)}, (12.0, 10.0)),
        # The finished stage's numbers stay exported; the current stage's are read.
        ({"train": (0.3, 300.0), "prune": (7.0, 600.0)}, (7.0, 600.0)),
    ],
)
def test_hang_watchdog_series_of_the_current_stage(
    hang: dict[str, tuple[float, float | None]], expected: tuple
) -> None:
    text = exposition(
        phases={"train": "Succeeded", "prune": "Running"}
        if "prune" in hang
        else {"train": "Running", "prune": "Pending"},
        steps={"train": (4, 10, 2.0), "prune": (2, 10, 2.0)},
        hang=hang,
    )
    progress = parse_scrape(text, STAGES)
    assert progress is not None
    assert (progress.stalled_seconds, progress.hang_timeout_seconds) == expected
    # Every pod exports them: alone they do not make a scrape rank 0's.
    assert parse_scrape(exposition(rank0=False, hang=hang), STAGES) is None


def test_eval_loss_and_restarts() -> None:
    text = exposition(
        phases={"train": "Running"},
        steps={"train": (4, 10, 2.0)},
        eval_loss={"train": 1.75},
        restarts=2,
    )
    progress = parse_scrape(text, STAGES)
    assert (progress.eval_loss, progress.restarts) == (1.75, 2)


def test_eval_history() -> None:
    """Every exported evaluation, in stage order then by step (not the text's order, which is
    by label value); non-finite losses and steps that are not numbers are left out."""
    text = exposition(
        phases={"train": "Succeeded", "prune": "Running"},
        steps={"prune": (20, 50, 1.4)},
        eval_history={
            ("prune", "20"): 1.45,
            ("train", "100"): 1.9,
            ("prune", "10"): 1.5,
            ("train", "20"): 2.5,
            ("train", "300"): float("nan"),
            ("train", "last"): 1.0,
            ("train", "-1"): 1.0,
        },
    )
    got = [(e.stage, e.step, e.loss) for e in parse_scrape(text, STAGES).evaluations]
    assert got == [("train", 20, 2.5), ("train", 100, 1.9), ("prune", 10, 1.5), ("prune", 20, 1.45)]
    assert parse_scrape(exposition(steps={"train": (1, 10, 2.0)}), STAGES).evaluations == ()


def test_stage_reports() -> None:
    text = exposition(
        phases={"train": "Succeeded", "prune": "Running", "int8": "Pending"},
        steps={"train": (200, 200, 1.2)},
        checkpoints={"train": ("/c/train/final", 200)},
        results={"train": {"evalLoss": 1.25, "wallSeconds": 60.0}},
    )
    stages = parse_scrape(text, STAGES).stages
    assert [(s.name, s.phase) for s in stages] == [
        ("train", "Succeeded"),
        ("prune", "Running"),
        ("int8", "Pending"),
    ]
    assert stages[0].metrics == {"evalLoss": 1.25, "wallSeconds": 60.0}
    assert stages[0].checkpoint == "/c/train/final"


def test_nan_loss_is_dropped() -> None:
    text = exposition(phases={"train": "Running"}, steps={"train": (1, 10, float("nan"))})
    assert parse_scrape(text, STAGES).loss is None


class _Metrics(BaseHTTPRequestHandler):
    text = ""

    def do_GET(self) -> None:
        body = self.text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[tuple[int, type[_Metrics]]]:
    handler = type(
        "Handler",
        (_Metrics,),
        {"text": exposition(phases={"train": "Running"}, steps={"train": (7, 10, 2.0)})},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()


def test_scrape_reads_the_pod_with_job_series(metrics_server: tuple[int, type[_Metrics]]) -> None:
    port, _ = metrics_server
    pods = [
        worker(0, pod_ip="127.0.0.9"),  # nothing listens there: skipped
        worker(1, pod_ip="127.0.0.1"),
        worker(2, "Pending", pod_ip=""),
    ]
    progress, pod = asyncio.run(scrape_progress(pods, port, STAGES, timeout=1.0, job="demo"))
    assert pod == "demo-worker-1"
    assert (progress.stage, progress.step) == ("train", 7)
    # The endpoint serves another job's trainer: nothing of it is this job's progress.
    assert asyncio.run(scrape_progress(pods, port, STAGES, timeout=1.0, job="other")) == (None, "")


def test_scrape_without_any_answer() -> None:
    progress, pod = asyncio.run(
        scrape_progress([worker(0, pod_ip="127.0.0.9")], 1, STAGES, timeout=0.5)
    )
    assert (progress, pod) == (None, "")


def test_checkpoint_write_seconds_is_the_longest_stages() -> None:
    reg = CollectorRegistry()
    Gauge("lmjob_trainer_world_size", "w", ["job"], registry=reg).labels("demo").set(2)
    write = Gauge("lmjob_trainer_checkpoint_write_seconds", "c", ["job", "stage"], registry=reg)
    write.labels("demo", "train").set(7.5)
    write.labels("demo", "prune").set(2.0)
    write.labels("other", "train").set(99.0)  # another job's series on a shared port
    progress = parse_scrape(generate_latest(reg).decode(), STAGES, job="demo")
    assert progress is not None and progress.checkpoint_write_seconds == 7.5
    assert parse_scrape(exposition(), STAGES).checkpoint_write_seconds is None
