"""Checkpoints that survive: resharding across world sizes, kill -9 under an elastic launch,
and a crash in the middle of a save (real torchrun processes, CPU, gloo)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmjob_api.goodput import LEDGER, Tally
from lmjob_trainer import storage
from lmjob_trainer.local_run import TORCHRUN_ENV

from .conftest import (
    copy_checkpoint,
    losses,
    subprocess_env,
    tiny_training,
    torchrun,
    wait_for,
    write_config,
)

# A resumed run restores model, optimiser, scheduler, data position and RNG exactly, so its
# losses equal the uninterrupted run's up to the order of floating-point sums (which changes
# with the world size): 1e-4 relative after 4 to 8 further steps.
RTOL = 1e-4


def _assert_matches_reference(root: Path, reference: Path, from_step: int) -> None:
    """Steps after `from_step` (the resumed run's, which rewrote them) equal the reference's."""
    got, want = losses(root), losses(reference)
    for step in range(from_step + 1, 13):
        assert got[step] == pytest.approx(want[step], rel=RTOL), (step, got[step], want[step])


@pytest.mark.slow
def test_reshard_2_to_1_to_2(
    tmp_path: Path, text_file: Path, data_cache: Path, ddp_reference: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_training(text_file, data_cache))
    # Saved by 2 processes at step 4, resumed by 1 ...
    one = tmp_path / "one"
    copy_checkpoint(ddp_reference, 4, one)
    torchrun(config, one, nproc=1)
    assert min(losses(one)) == 5, "did not resume from the copied step-4 checkpoint"
    _assert_matches_reference(one, ddp_reference, from_step=4)
    assert storage.read_report(one, "train").world_size == 1
    # ... and that run's step-8 checkpoint (saved by 1 process) resumed by 2.
    two = tmp_path / "two"
    copy_checkpoint(one, 8, two)
    torchrun(config, two, nproc=2)
    assert min(losses(two)) == 9, "did not resume from the copied step-8 checkpoint"
    _assert_matches_reference(two, ddp_reference, from_step=8)


def _children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kill_9_worker_resumes_under_elastic_launch(
    tmp_path: Path, text_file: Path, data_cache: Path, ddp_reference: Path
) -> None:
    """SIGKILL one worker mid-run: torchrun restarts the group, which resumes from the latest
    complete checkpoint and ends where an uninterrupted (synchronously saving) run ends. The
    rendezvous is served by lmjob's standalone store, as the operator deploys it."""
    root = tmp_path / "run"
    # Async checkpoints: if staging did not isolate the saved state from later optimiser
    # steps, the resumed run would start from a state ahead of step 4 and drift.
    training = tiny_training(text_file, data_cache, checkpoint={"async": True})
    config = write_config(tmp_path / "c.yaml", training)
    env = subprocess_env(**TORCHRUN_ENV)  # as the operator and `lmjob run` set it
    port = _free_port()
    store = subprocess.Popen(
        [sys.executable, "-m", "lmjob_trainer.rendezvous_store", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert store.stderr is not None
        assert "serving" in store.stderr.readline()
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=1",
                "--nproc-per-node=2",
                "--max-restarts=2",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=kill-test",
                "--rdzv-conf=is_host=false",
                f"--log-dir={tmp_path / 'logs'}",
                "--redirects=3",
                "-m",
                "lmjob_trainer",
                "--config",
                str(config),
                "--checkpoint-dir",
                str(root),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Kill as soon as the step-4 checkpoint is complete: the run is between 4 and 12.
        assert wait_for(lambda: storage.is_complete(storage.step_dir(root, "train", 4)), 180)
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        done_before_kill = max(losses(root))
        os.kill(workers[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=240)
        assert launcher.returncode == 0, err[-4000:]
    finally:
        store.terminate()
        store.wait(timeout=30)
    assert done_before_kill < 12, "the run finished before the kill: nothing was tested"
    assert list((tmp_path / "logs").glob("*/attempt_1")), "torchrun did not restart the workers"
    got, want = losses(root), losses(ddp_reference)
    assert got[12] == pytest.approx(want[12], rel=RTOL)
    assert storage.read_report(root, "train").steps == 12
    # The goodput ledger: two launches, and the steps done
    # before the kill and again after it counted as re-done, each other step as productive.
    ledger = [json.loads(line) for line in (root / LEDGER).read_text().splitlines()]
    assert [r["event"] for r in ledger].count("launch") == 2, ledger
    steps = [r for r in ledger if r["event"] == "step"]
    twice = [r for i, r in enumerate(steps) if any(o["step"] == r["step"] for o in steps[i + 1 :])]
    kept = [r for i, r in enumerate(steps) if r not in twice]
    assert sorted(r["step"] for r in kept) == list(range(1, 13))
    tally = Tally.of_file(root / LEDGER)
    assert tally.seconds["redone"] == pytest.approx(sum(r["seconds"] for r in twice))
    assert tally.seconds["productive"] == pytest.approx(sum(r["seconds"] for r in kept))
    # The same torchrun agent re-formed the group: the gap is the launcher's rendezvous (a
    # restart proper is a new pod's, its launcher starting after the last record).
    assert tally.seconds["rendezvous"] > 0 and tally.seconds["restart"] == 0, tally.seconds


# Runs in each worker instead of `-m lmjob_trainer`: makes rank 1 die (like a SIGKILL, no
# cleanup) right after writing its shard of the step-8 checkpoint, before the save's
# metadata and the COMPLETE marker exist. Fault injection in torch's storage writer; the
# checkpoint manager under test runs unchanged.
CRASH_IN_SAVE = """
import os, sys
import torch.distributed.checkpoint as dcp
original = dcp.FileSystemWriter.write_data
def write_data(self, plan, planner):
    future = original(self, plan, planner)
    if "step-000000008" in str(self.path) and os.environ["RANK"] == "1":
        future.wait()
        os._exit(137)
    return future
dcp.FileSystemWriter.write_data = write_data
from lmjob_trainer.__main__ import main
sys.exit(main())
"""


@pytest.mark.slow
def test_crash_during_save_keeps_previous_checkpoint(
    tmp_path: Path, text_file: Path, data_cache: Path, ddp_reference: Path
) -> None:
    root = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_training(text_file, data_cache))
    crash = tmp_path / "crash_in_save.py"
    crash.write_text(CRASH_IN_SAVE)
    proc = torchrun(config, root, module=(str(crash),), check=False)
    assert proc.returncode != 0
    step8 = storage.step_dir(root, "train", 8)
    assert step8.is_dir() and not storage.is_complete(step8), "the crash did not hit the save"
    assert storage.latest_complete(root, "train")[0] == 4
    # The next start ignores (and clears) the torn step-8 save and resumes from step 4.
    resumed = torchrun(config, root, nproc=1)
    assert (
        f'msg="resumed from checkpoint" path={storage.step_dir(root, "train", 4)}' in resumed.stderr
    )
    _assert_matches_reference(root, ddp_reference, from_step=4)
    assert storage.is_complete(step8)


def test_keep_newest_complete(tmp_path: Path) -> None:
    """Pure layout logic: complete ones counted, torn ones ignored."""
    for step, complete in [(4, True), (8, True), (12, False)]:
        path = storage.step_dir(tmp_path, "train", step)
        path.mkdir(parents=True)
        if complete:
            storage.mark_complete(path, {"step": step})
    assert storage.latest_complete(tmp_path, "train") == (8, storage.step_dir(tmp_path, "train", 8))
    assert [s for s, _, ok in storage.list_checkpoints(tmp_path, "train") if not ok] == [12]
