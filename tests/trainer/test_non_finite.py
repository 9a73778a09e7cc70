"""A loss that turns NaN, for real: plain SGD at lr 10 without clipping diverges to an
infinite gradient norm within a few steps of the tiny GPT. `training.nonFinite` decides:
`fail` stops at that step with exit 79 (never retried) and a message naming the step;
`skip` leaves the weights as they were and fails once too many steps were skipped. Either
way no weights that saw the NaN are saved, and the checkpoints before it stay."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lmjob_api import termination
from lmjob_api.env import CONFIG_ERROR_FILE_ENV
from lmjob_api.exit_codes import NON_FINITE
from lmjob_cli.main import main as lmjob
from lmjob_trainer import storage
from lmjob_trainer.compression.load import load_checkpoint_model

from .conftest import subprocess_env, tiny_training, write_config

pytestmark = pytest.mark.slow


def _diverging(text: Path, cache: Path, **non_finite: object) -> dict:
    return tiny_training(
        text,
        cache,
        optimizer={"name": "sgd", "lr": 10.0, "gradClip": 0.0},
        steps=16,
        checkpoint={"everySteps": 2, "keep": 100},
        evaluation={"everySteps": 100, "steps": 1},
        nonFinite=non_finite,
    )


def _history(root: Path) -> list[dict]:
    lines = (root / "train" / storage.HISTORY).read_text().splitlines()
    return [json.loads(line) for line in lines]


def _all_finite(root: Path, step: int) -> bool:
    model = load_checkpoint_model(storage.step_dir(root, "train", step))
    return all(torch.isfinite(p).all() for p in model.state_dict().values())


def test_fail_stops_at_the_step_and_is_never_retried(tmp_path: Path, text_file: Path) -> None:
    """Through the worker container's launcher and torchrun with restarts allowed: exit 79
    at the first non-finite step, the error in the termination message, every saved
    checkpoint finite."""
    import subprocess

    root = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", _diverging(text_file, tmp_path / "cache"))
    message = tmp_path / "termination-log"
    env = subprocess_env(
        **{termination.PATH_ENV: str(message), CONFIG_ERROR_FILE_ENV: str(tmp_path / "marker")}
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lmjob_trainer.launch", "--", "--standalone",
         "--nproc-per-node=2", "--max-restarts=10", "--monitor-interval=0.1",
         "-m", "lmjob_trainer", "--config", str(config), "--checkpoint-dir", str(root)],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == NON_FINITE, proc.stderr[-3000:]
    assert proc.stderr.count("attempts left") <= 1, "torchrun restarted the workers"
    assert time.monotonic() - started < 90
    history = _history(root)
    bad = history[-1]
    assert bad.get("skipped") is True and not math.isfinite(bad["grad_norm"])
    assert all(math.isfinite(h["loss"]) and "skipped" not in h for h in history[:-1])
    error = termination.decode_error(message.read_text())
    assert error is not None, message.read_text()
    assert f"became non-finite at step {bad['step']}" in error
    assert "training.nonFinite.action: skip" in error and "training.optimizer.lr" in error
    saved = [step for step, _, done in storage.list_checkpoints(root, "train") if done]
    assert saved and max(saved) < bad["step"]
    assert f"checkpoint at step {max(saved)} kept" in error
    assert all(_all_finite(root, step) for step in saved)


def test_skip_leaves_the_weights_and_gives_up_past_the_limit(
    tmp_path: Path,
    text_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`lmjob run` with action skip: the diverged model keeps producing infinite gradients,
    so steps are skipped (not applied, still checkpointed as finite weights) until the
    fourth, past maxSkippedSteps 3; the run says so and lists what is kept."""
    spec = {
        "workers": {"replicas": 1, "procsPerWorker": 2},
        "training": _diverging(text_file, tmp_path / "cache", action="skip", maxSkippedSteps=3),
    }
    manifest = {"apiVersion": "lmjob.dev/v1alpha1", "kind": "LargeModelJob",
                "metadata": {"name": "nan"}, "spec": spec}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    monkeypatch.chdir(tmp_path)
    assert lmjob(["run", "job.yaml"]) == 1
    out = capsys.readouterr().err  # lmjob run reports on stderr
    assert "4 steps skipped (training.nonFinite.maxSkippedSteps is 3)" in out, out[-3000:]
    assert "Traceback" not in out
    root = tmp_path / "runs" / "nan"
    history = [h for h in _history(root) if "loss" in h]
    skipped = [h["step"] for h in history if h.get("skipped")]
    assert len(skipped) == 4 and skipped == list(range(skipped[0], skipped[0] + 4))
    saved = [step for step, _, done in storage.list_checkpoints(root, "train") if done]
    assert any(step >= skipped[0] for step in saved), "no checkpoint while skipping"
    assert all(_all_finite(root, step) for step in saved)
    assert "checkpoint at step" in out


@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
def test_a_diverged_model_reports_no_sample_instead_of_crashing(bad: float) -> None:
    """Weights that blew up without a non-finite loss (skip lets such a run finish): the end of
    training's text sample would fail in torch.multinomial, and torchrun would restart the
    worker over and over. It is left empty instead; a healthy model still samples."""
    from types import SimpleNamespace

    from lmjob_api.training import ModelSpec, TrainingSpec
    from lmjob_trainer.model import build_model
    from lmjob_trainer.tokenizer import build_tokenizer
    from lmjob_trainer.train import generate_sample

    tokenizer = build_tokenizer("bytes")
    training = TrainingSpec.model_validate({"data": {"source": "x.txt"}, "steps": 1})
    session = SimpleNamespace(tokenizer=tokenizer, device=torch.device("cpu"), training=training)
    model = build_model(ModelSpec(layers=1, heads=2, hidden=16, seq_len=16), 256)
    assert len(generate_sample(session, model, tokens=8)) == 8
    with torch.no_grad():
        next(model.parameters()).fill_(bad)
    assert generate_sample(session, model, tokens=8) == ""
    assert model.training  # left in the mode it was in
