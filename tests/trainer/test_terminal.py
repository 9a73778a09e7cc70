"""`lmjob run` in a real terminal (a pseudo-terminal, as tmux gives it): rich's live
progress bar while training, then the tables and the end-of-run loss curve; in a log (no
terminal) the same tables and curve come out as plain text without escape codes."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import subprocess_env, tiny_training

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _job(tmp: Path, text: Path) -> Path:
    training = tiny_training(text, tmp / "cache", steps=60, evaluation={"everySteps": 20})
    manifest = {
        "apiVersion": "lmjob.dev/v1alpha1",
        "kind": "LargeModelJob",
        "metadata": {"name": "tty"},
        "spec": {"workers": {"replicas": 1, "procsPerWorker": 1}, "training": training},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _run_in_terminal(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run `cmd` with a pseudo-terminal as stdin, stdout and stderr; (exit code, output)."""
    leader, follower = pty.openpty()
    env = subprocess_env(TERM="xterm-256color", COLUMNS="120", LINES="40")
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=env)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: every writer has exited
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    return _job(tmp_path_factory.mktemp("tty"), text_file)


def test_a_terminal_gets_live_bars_then_tables_and_the_loss_curve(job: Path) -> None:
    code, out = _run_in_terminal(
        [sys.executable, "-m", "lmjob_cli.main", "run", str(job)], job.parent, timeout=240
    )
    assert code == 0, out[-3000:]
    assert ANSI.search(out), "no colours or redraws: not treated as a terminal"
    plain = ANSI.sub("", out)
    assert "━" in plain and re.search(r"train\s.*━.*\d+/60", plain), plain[-3000:]
    assert re.search(r"stage\s+phase\s+steps\s+eval loss", plain)
    assert "tty: training loss" in plain and "┤" in plain and "train loss" in plain


def test_a_log_gets_the_same_tables_and_curve_as_plain_text(job: Path) -> None:
    """The same job again, in a pipe: finished, so it only reports (and draws) what is there."""
    logs = job.parent / "runs" / "tty" / "logs"
    launched_before = sorted(logs.iterdir())
    assert launched_before, "the terminal run left no launch logs"
    proc = subprocess.run(
        [sys.executable, "-m", "lmjob_cli.main", "run", str(job)],
        cwd=job.parent,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert not ANSI.search(out)
    # Nothing left to run: no launch (torchrun logs each launch in a folder of its own).
    assert "every stage finished in an earlier run" in out, out[-3000:]
    assert sorted(logs.iterdir()) == launched_before
    assert re.search(r"train\s+Succeeded\s+60\s+\d\.\d{4}", out), out[-3000:]
    assert "tty: training loss" in out and "┤" in out
