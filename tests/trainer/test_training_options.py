"""Options of `training` that a loss curve alone does not prove, through real torchrun:
activation checkpointing, checkpoint.keep and early stopping on the GPT."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmjob_trainer import storage

from .conftest import losses, tiny_training, torchrun, write_config
from .probe import read_probe, run_probed


@pytest.fixture(scope="module")
def checkpointed_run(
    tmp_path_factory: pytest.TempPathFactory, text_file: Path, data_cache: Path
) -> Path:
    """The DDP reference's job with activation checkpointing on, saving every 2 steps and
    keeping 2, under the probe; returns its folder (run/ and probe/)."""
    work = tmp_path_factory.mktemp("checkpointed")
    training = tiny_training(
        text_file,
        data_cache,
        parallelism={"activationCheckpointing": True},
        checkpoint={"everySteps": 2, "keep": 2},
    )
    run_probed(training, work)
    return work


@pytest.mark.slow
def test_activation_checkpointing_recomputes_and_changes_no_loss(
    checkpointed_run: Path, ddp_reference: Path
) -> None:
    for seen in read_probe(checkpointed_run / "probe"):
        wrapped, blocks = seen["forwards"]["CheckpointWrapper"], seen["forwards"]["Block"]
        # Every block ran inside the wrapper, and again in backward (the recompute).
        assert wrapped > 0 and blocks == 2 * wrapped, seen["forwards"]
    got, want = losses(checkpointed_run / "run"), losses(ddp_reference)
    assert sorted(got) == sorted(want) == list(range(1, 13))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6), (step, got, want)


@pytest.mark.slow
def test_checkpoint_keep_deletes_older_checkpoints(checkpointed_run: Path) -> None:
    root = checkpointed_run / "run"
    # Saved at 2, 4, ..., 12; only the newest two remain, both complete.
    assert [(s, ok) for s, _, ok in storage.list_checkpoints(root, "train")] == [
        (10, True),
        (12, True),
    ]
    assert sorted(p.name for p in (root / "train").glob("step-*")) == [
        "step-000000010",
        "step-000000012",
    ]


@pytest.mark.slow
def test_early_stopping_ends_training_before_steps(
    tmp_path: Path, text_file: Path, data_cache: Path
) -> None:
    # An improvement must be worth minDelta 10 nats: after the first evaluation none is,
    # so with patience 2 the run stops at the third evaluation (step 6 of 40).
    training = tiny_training(
        text_file,
        data_cache,
        steps=40,
        evaluation={"everySteps": 2, "steps": 1},
        earlyStopping={"patience": 2, "minDelta": 10.0},
        checkpoint={"everySteps": 100},
    )
    torchrun(write_config(tmp_path / "c.yaml", training), tmp_path / "run")
    root = tmp_path / "run"
    report = storage.read_report(root, "train")
    assert report is not None
    assert (report.stopped_early, report.steps, report.total_steps) == (True, 6, 40), report
    assert sorted(losses(root)) == list(range(1, 7))
    assert storage.latest_complete(root, "train") == (6, storage.step_dir(root, "train", 6))
