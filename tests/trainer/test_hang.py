"""The hang watchdog: its timeout rule on a fake clock, and for real: one of 2 torchrun ranks
frozen with SIGSTOP mid-training, the other rank's watchdog saves its stacks (stuck in the
step's collective) within the timeout plus slack, and reports itself stalled."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lmjob_trainer import storage
from lmjob_trainer.hang import DERIVED_FLOOR_SECONDS, HangWatchdog, derived_timeout, hang_dir
from lmjob_trainer.launch import descendants

from .conftest import subprocess_env, tiny_training, wait_for, write_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("longest", "expected"),
    [(None, None), (0.05, DERIVED_FLOOR_SECONDS), (200.0, 600.0)],
)
def test_derived_timeout(longest: float | None, expected: float | None) -> None:
    assert derived_timeout(longest) == expected


def test_watchdog_dumps_once_per_stuck_step(tmp_path: Path) -> None:
    clock, reported = FakeClock(), []
    dog = HangWatchdog(
        tmp_path, "train", 1, 10.0, report=lambda s, v, t: reported.append((v, t)), clock=clock
    )
    dog._step, dog._last = 4, clock()  # as start(4) does, without the thread
    clock.now += 9.0
    assert dog.check() is None
    clock.now += 2.0
    path = dog.check()
    assert path == hang_dir(tmp_path, "train", 5) / "rank-1.txt"
    text = path.read_text()
    assert "step 5 not done after 11.0s" in text and "test_watchdog_dumps_once" in text
    clock.now += 20.0
    assert dog.check() is None  # the same hang: once
    assert reported == [(9.0, 10.0), (11.0, 10.0), (31.0, 10.0)]
    dog.beat(5)
    assert dog.check() is None and reported[-1] == (0.0, 10.0)


def test_derived_watchdog_waits_for_a_first_step_and_covers_long_saves(tmp_path: Path) -> None:
    clock, reported = FakeClock(), []
    dog = HangWatchdog(
        tmp_path, "train", 0, None, report=lambda s, v, t: reported.append(t), clock=clock
    )
    dog._last = clock()
    clock.now += 10_000.0  # start-up of unknown length: not armed
    assert dog.check() is None and dog.timeout is None
    assert reported == [None]  # nothing for the operator to compare against yet
    dog.beat(1)
    clock.now += 250.0  # an evaluation or checkpoint between two steps
    dog.beat(2)
    assert dog.timeout == 750.0
    clock.now += 700.0
    assert dog.check() is None
    clock.now += 60.0
    assert dog.check() is not None
    assert reported[-1] == 750.0


def _rank_pids(parent: int) -> dict[int, int]:
    """{global rank: pid} of torchrun's worker processes, from their environment."""
    out: dict[int, int] = {}
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((e[5:] for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            out[int(rank)] = pid
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gauge(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    line = next(x for x in text.splitlines() if x.startswith(f"lmjob_trainer_{name}{{"))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
def test_frozen_rank_leaves_the_others_stacks(
    tmp_path: Path, text_file: Path, data_cache: Path
) -> None:
    timeout = 3
    root, port = tmp_path / "run", _free_port()
    training = tiny_training(
        text_file,
        data_cache,
        steps=100_000,
        evaluation={"everySteps": 100_000, "steps": 1},
        checkpoint={"everySteps": 100_000},
        hang={"timeoutSeconds": timeout},
    )
    config = write_config(tmp_path / "c.yaml", training)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "lmjob_trainer", "--config", str(config), "--checkpoint-dir", str(root),
           "--metrics-port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stderr=subprocess.DEVNULL, start_new_session=True
    )
    frozen = None
    try:
        history = root / "train" / storage.HISTORY

        def steps_done() -> int:
            return len(history.read_text().splitlines()) if history.exists() else 0

        assert wait_for(lambda: steps_done() >= 5, 90, 0.2)
        frozen = _rank_pids(proc.pid)[1]
        os.kill(frozen, signal.SIGSTOP)
        stopped = time.monotonic()
        hangs = root / "hangs"
        found = wait_for(lambda: any(hangs.glob("train-step-*/rank-0.txt")), timeout + 10, 0.1)
        took = time.monotonic() - stopped
        assert found, f"no stacks {took:.1f}s after the freeze"
        assert took < timeout + 10
        [stacks] = hangs.glob("train-step-*/rank-0.txt")
        text = stacks.read_text()
        # rank 0 is waiting in the step (its collective), stuck at the step after the last
        assert "loop.py" in text and "train_step" in text, text
        last = steps_done()
        assert stacks.parent.name == f"train-step-{last + 1:09d}"
        assert not any(hangs.glob("*/rank-1.txt"))  # the frozen rank cannot save its own,
        # and rank 0 names it: its sibling process under the same torchrun agent, stopped.
        assert f"# pod process: rank 1 pid {frozen} state T (stopped)" in text, text[:2000]
        assert f"# pod process: rank 0 pid {_rank_pids(proc.pid)[0]} state " in text
        assert _gauge(port, "stalled_seconds") >= timeout
        assert _gauge(port, "hang_timeout_seconds") == timeout
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        # The workers run in sessions of their own: killing the launcher's group alone
        # would leave them training (100,000 steps) for the rest of the run.
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
