"""Fixtures of the trainer tests: a small real text, tiny configs, and real launches.

Multi-process tests start real `torch.distributed.run` processes (CPU, gloo) running the
worktree's code: the subprocess PYTHONPATH points at this checkout, whatever is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO / "examples" / "data" / "tinyshakespeare.txt"
CODE_PATHS = [str(REPO / d) for d in ("api", "trainer", "cli")]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*CODE_PATHS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("LMJOB_CONFIG", None)
    env.pop("LMJOB_CHECKPOINT_DIR", None)
    env.pop("LMJOB_METRICS_PORT", None)
    env.update(extra)
    return env


def tiny_training(data: Path, cache: Path, **overrides: Any) -> dict[str, Any]:
    """The `debug` flavour: 2 layers, hidden 32, constant lr (so a resumed run and an
    uninterrupted one follow the same schedule whatever `steps` says)."""
    training: dict[str, Any] = {
        "model": {"layers": 2, "heads": 2, "hidden": 32, "seqLen": 32},
        "data": {"source": str(data), "cacheDir": str(cache)},
        "optimizer": {"lr": 3.0e-3},
        "schedule": {"warmupSteps": 0, "decay": "constant"},
        "steps": 12,
        "batch": {"microBatchSize": 4, "globalBatchSize": 8},
        "evaluation": {"everySteps": 6, "steps": 2},
        "checkpoint": {"everySteps": 4, "keep": 10},
        "seed": 7,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(training.get(key), dict):
            training[key] = {**training[key], **value}
        else:
            training[key] = value
    return training


def write_config(path: Path, training: dict[str, Any], **top: Any) -> Path:
    path.write_text(yaml.safe_dump({"jobName": "t", "training": training, **top}))
    return path


def torchrun(
    config: Path,
    root: Path,
    *,
    nproc: int = 2,
    extra_args: tuple[str, ...] = (),
    module: tuple[str, ...] = ("-m", "lmjob_trainer"),
    timeout: float = 240,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """One real torchrun launch of the trainer (standalone rendezvous unless overridden)."""
    rdzv = () if any(a.startswith("--rdzv") for a in extra_args) else ("--standalone",)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        *rdzv,
        *extra_args,
        *module,
        "--config",
        str(config),
        "--checkpoint-dir",
        str(root),
    ]
    proc = subprocess.run(
        cmd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def losses(root: Path, stage: str = "train") -> dict[int, float]:
    from lmjob_trainer.storage import read_history

    return {s: r["loss"] for s, r in read_history(root, stage).items() if "loss" in r}


def token_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Seeded random byte-token ids, shape (batch, length): prompts for export checks."""
    import torch

    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy(model: Any, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """lmjob's own greedy generation of `steps` tokens after `ids` (the reference)."""
    import torch

    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(ids)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 100 KB of tiny Shakespeare: real text, tokenised in milliseconds."""
    path = tmp_path_factory.mktemp("data") / "shakespeare-100k.txt"
    path.write_bytes(SHAKESPEARE.read_bytes()[:100_000])
    return path


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def ddp_reference(
    tmp_path_factory: pytest.TempPathFactory, text_file: Path, data_cache: Path
) -> Path:
    """An uninterrupted DDP run (2 processes, 12 steps, checkpoints at 4, 8, 12): the
    baseline of the parallelism, resume and resharding tests."""
    work = tmp_path_factory.mktemp("ddp-reference")
    config = write_config(work / "config.yaml", tiny_training(text_file, data_cache))
    torchrun(config, work / "run")
    return work / "run"


def copy_checkpoint(reference: Path, step: int, root: Path) -> None:
    """Start a fresh storage root holding only one checkpoint of `reference`."""
    name = f"step-{step:09d}"
    shutil.copytree(reference / "train" / name, root / "train" / name)


_TRAINER_MARKS = (b"lmjob_trainer", b"torch.distributed.run", b"lmjob_cli.main")


def _leftover_trainers(base: Path) -> list[tuple[int, str]]:
    """(pid, command) of trainer, torchrun and `lmjob` processes whose command line names
    this session's temporary folder: what a finished test left running."""
    mark, found = str(base).encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and mark in cmdline and any(m in cmdline for m in _TRAINER_MARKS):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


@pytest.fixture(autouse=True)
def _no_trainer_outlives_its_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Kill and report trainer processes a test leaves behind: torchrun's workers run in
    sessions of their own, so killing a launcher's process group misses them, and a leaked
    worker trains on, taking CPU from every later test."""
    yield
    leftovers = _leftover_trainers(tmp_path_factory.getbasetemp())
    for pid, _ in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        warnings.warn(
            "killed processes the test left running: "
            + "; ".join(command[:200] for _, command in leftovers),
            stacklevel=1,
        )
