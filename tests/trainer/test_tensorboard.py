"""TensorBoard event files, read back by TensorBoard's own event accumulator: every scalar
of every step of training and of a compression stage's fine-tune, equal to history.jsonl;
after a resume each step still has one value."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmjob_trainer import storage
from lmjob_trainer.tensorboard import event_dir

from .conftest import copy_checkpoint, tiny_training, torchrun, write_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

pytestmark = pytest.mark.slow

STEP_TAGS = {"loss", "lr", "grad_norm", "tokens_per_second"}


def _scalars(root: Path, stage: str) -> dict[str, dict[int, float]]:
    """tag -> step -> value; fails when a step holds two values (a resume not purged)."""
    acc = event_accumulator.EventAccumulator(str(event_dir(root, stage)))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{stage}/{tag}: steps written twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def _history(root: Path, stage: str) -> dict[int, dict]:
    return storage.read_history(root, stage)


def test_a_resume_leaves_one_value_per_step_and_a_fine_tune_writes_every_scalar(
    tmp_path: Path, text_file: Path, data_cache: Path, ddp_reference: Path
) -> None:
    """A run that died after step 12's events but resumes from step 8's checkpoint writes
    steps 9-12 again: the reader sees them once, with the resumed run's values. Every
    scalar of every step of training and of the fine-tune after it equals history.jsonl."""
    import shutil

    root = tmp_path / "run"
    copy_checkpoint(ddp_reference, 8, root)
    shutil.copytree(event_dir(ddp_reference, "train"), event_dir(root, "train"))
    before = _scalars(root, "train")
    assert sorted(before["loss"]) == list(range(1, 13))
    training = tiny_training(text_file, data_cache, steps=14, evaluation={"everySteps": 3})
    stages = [{"name": "prune", "type": "prune", "sparsity": 0.5, "finetuneSteps": 2}]
    config = write_config(tmp_path / "c.yaml", training, compression={"stages": stages})
    torchrun(config, root, nproc=2)
    after = _scalars(root, "train")
    history = _history(root, "train")
    for step in range(9, 15):
        assert after["loss"][step] == pytest.approx(history[step]["loss"], rel=1e-6)
    for step in range(1, 9):
        assert after["loss"][step] == before["loss"][step]

    for stage, steps, evals in (("train", 14, {9, 12, 14}), ("prune", 2, {2})):
        scalars = _scalars(root, stage)
        assert STEP_TAGS | {"eval_loss"} <= set(scalars), scalars.keys()
        history = _history(root, stage)
        for tag in STEP_TAGS:
            assert sorted(scalars[tag]) == list(range(1, steps + 1)), (stage, tag)
        for step in range(9 if stage == "train" else 1, steps + 1):
            assert scalars["loss"][step] == pytest.approx(history[step]["loss"], rel=1e-6)
        # The evaluations this run made (the reference's own before step 8 may differ).
        assert evals <= set(scalars["eval_loss"]), (stage, sorted(scalars["eval_loss"]))
        for step in evals:
            assert scalars["eval_loss"][step] == pytest.approx(history[step]["eval_loss"], rel=1e-6)
