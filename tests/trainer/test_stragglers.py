"""Stragglers: the window/median verdict (pure), its series read back by the one scrape parser,
and for real, 2 torchrun ranks with one slowed by the test hook LMJOB_TEST_SLOW_RANK, scraped
from rank 0's live metrics endpoint: exactly that rank is named, and nobody in an unslowed run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest

from lmjob_api.env import NODE_NAME_ENV, POD_NAME_ENV
from lmjob_api.trainer_metrics import TrainerProgress, parse_scrape
from lmjob_trainer.distributed import DistEnv
from lmjob_trainer.metrics import TrainerMetrics
from lmjob_trainer.storage import HISTORY
from lmjob_trainer.stragglers import (
    TEST_SLOW_RANK_ENV,
    RankWindow,
    Verdict,
    find_stragglers,
    slow_rank_delay,
)

from .conftest import subprocess_env, tiny_training, write_config


@pytest.mark.parametrize(
    ("times", "threshold", "expected"),
    [
        ([0.1, 0.1, 0.1, 0.1], 1.5, []),
        ([0.1, 0.1, 0.16, 0.1], 1.5, [2]),
        ([0.1, 0.1, 0.14, 0.1], 1.5, []),  # slower, but under the threshold
        ([0.1, 0.3], 1.5, [1]),  # a pair: the slower against the faster
        ([0.3, 0.1, 0.1, 0.3, 0.1], 2.0, [0, 3]),
        ([0.0, 0.0], 1.5, []),  # no time measured: nobody
        ([0.2], 1.5, []),
        ([0.003, 0.005], 1.5, []),  # 1.7x, but 2 ms: noise under the 10 ms floor
        ([0.003, 0.02], 1.5, [1]),
    ],
)
def test_find_stragglers(times: list[float], threshold: float, expected: list[int]) -> None:
    assert find_stragglers(times, threshold, min_excess=0.01)[1] == expected


def test_window_waits_for_a_full_window_and_ignores_one_slow_step() -> None:
    window = RankWindow(world_size=3, window=4, threshold=1.5)
    for _ in range(3):
        window.observe([0.1, 0.1, 0.1], [0.0, 0.0, 0.0])
        assert window.verdict() is None
    window.observe([0.1, 0.9, 0.1], [0.0, 0.8, 0.0])  # one checkpoint-like spike on rank 1
    verdict = window.verdict()
    assert verdict is not None and verdict.stragglers == ()
    for _ in range(3):  # rank 2 becomes slow for most of the window
        window.observe([0.1, 0.1, 0.3], [0.01, 0.01, 0.2])
    verdict = window.verdict()
    assert verdict.stragglers == (2,)
    assert verdict.step_seconds[2] == pytest.approx(0.3)
    assert verdict.data_wait_seconds[2] == pytest.approx(0.2)
    assert verdict.median_seconds == pytest.approx(0.1)
    for _ in range(4):  # and recovers: the window forgets it
        window.observe([0.1, 0.1, 0.1], [0.0, 0.0, 0.0])
    assert window.verdict().stragglers == ()


@pytest.mark.parametrize(
    ("value", "rank", "delay"),
    [("", 1, 0.0), ("1:0.05", 1, 0.05), ("1:0.05", 0, 0.0), ("3:2", 3, 2.0)],
)
def test_slow_rank_hook(value: str, rank: int, delay: float) -> None:
    assert slow_rank_delay(rank, value) == delay


def test_slow_rank_hook_rejects_garbage() -> None:
    with pytest.raises(ValueError, match=TEST_SLOW_RANK_ENV):
        slow_rank_delay(0, "slow")


def _metrics() -> TrainerMetrics:
    env = DistEnv(0, 0, 3, 3, torch.device("cpu"), 0)
    return TrainerMetrics("demo", env)


def _verdict(steps: tuple[float, ...], slow: tuple[int, ...]) -> Verdict:
    return Verdict(steps, tuple(s / 4 for s in steps), find_stragglers(steps, 1.5)[0], slow)


def test_series_read_back_by_the_scrape_parser() -> None:
    """What the trainer exports is what the operator reads: names, pods, nodes, times; a rank
    that recovered disappears from the straggler series."""
    metrics = _metrics()
    places = [("demo-worker-0", "n0"), ("demo-worker-0", "n0"), ("demo-worker-1", "n1")]
    metrics.set_stage_phase("train", "Running")
    metrics.record_ranks("train", _verdict((0.1, 0.1, 0.4), (2,)), places)
    progress = parse_scrape(generate_latest(metrics.registry).decode(), ["train"])
    assert progress.rank_step_seconds == {0: 0.1, 1: 0.1, 2: 0.4}
    [slow] = progress.stragglers
    assert (slow.rank, slow.pod, slow.node) == (2, "demo-worker-1", "n1")
    assert (slow.step_seconds, slow.data_wait_seconds, slow.median_seconds) == (0.4, 0.1, 0.1)

    metrics.record_ranks("train", _verdict((0.1, 0.1, 0.1), ()), places)
    progress = parse_scrape(generate_latest(metrics.registry).decode(), ["train"])
    assert progress.stragglers == ()
    assert progress.rank_step_seconds == {0: 0.1, 1: 0.1, 2: 0.1}


def test_no_rank_series_before_a_full_window() -> None:
    metrics = _metrics()
    metrics.set_stage_phase("train", "Running")
    progress = parse_scrape(generate_latest(metrics.registry).decode(), ["train"])
    assert (progress.rank_step_seconds, progress.stragglers) == (None, ())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> TrainerProgress | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            return parse_scrape(r.read().decode(), ["train"])
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("slow", "expected"), [("1:0.05", [1]), ("", [])], ids=["rank-1-slowed", "unslowed"]
)
def test_a_slowed_rank_is_named(
    tmp_path: Path, text_file: Path, data_cache: Path, slow: str, expected: list[int]
) -> None:
    """Real torchrun, 2 ranks; rank 0's live endpoint is scraped while it trains, and the
    last scrape with a verdict (a full window) names exactly the slowed rank. The same
    scrapes carry every evaluation so far (eval_history), as the run's history says them."""
    port = _free_port()
    training = tiny_training(
        text_file,
        data_cache,
        steps=40 if slow else 100,
        evaluation={"everySteps": 10, "steps": 1},
        checkpoint={"everySteps": 1000},
        stragglers={"threshold": 1.5, "windowSteps": 10},
    )
    config = write_config(tmp_path / "c.yaml", training)
    env = subprocess_env(
        **{TEST_SLOW_RANK_ENV: slow, POD_NAME_ENV: "t-worker-0", NODE_NAME_ENV: "node-a"}
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "lmjob_trainer", "--config", str(config), "--checkpoint-dir",
           str(tmp_path / "run"), "--metrics-port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    seen: list[TrainerProgress] = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        progress = _scrape(port)
        if progress is not None and progress.rank_step_seconds is not None:
            seen.append(progress)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert seen, "no scrape caught a full window"
    last = seen[-1]
    assert sorted(last.rank_step_seconds) == [0, 1]
    assert [s.rank for s in last.stragglers] == expected, last
    for s in last.stragglers:
        assert (s.pod, s.node) == ("t-worker-0", "node-a")
        assert s.step_seconds >= 0.05 > s.median_seconds
    history = [json.loads(line) for line in (tmp_path / "run" / "train" / HISTORY).open()]
    evaluated = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    scraped = [(e.stage, e.step, e.loss) for e in last.evaluations]
    assert scraped, last
    assert scraped == [("train", step, pytest.approx(evaluated[step])) for _, step, _ in scraped]
    assert [step for _, step, _ in scraped] == [10 * (i + 1) for i in range(len(scraped))]
