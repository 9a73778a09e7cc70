"""bf16 and fp16 (with its loss scaler) train on CPU through real torchrun, and the probe
shows the precision path really ran: the dtype of every training matmul, the loss scale."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .conftest import losses, tiny_training
from .probe import run_probed

# torch.amp.GradScaler's default first scale.
INITIAL_SCALE = 2.0**16

# (precision, dtype of the Linear outputs in training forwards, loss scaled by GradScaler)
# fp32 is every other trainer test's precision; the two cases differ in what the probe sees.
CASES = [
    ("bf16", "bfloat16", False),
    ("fp16", "float16", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "dtype", "scaled"), CASES, ids=[c[0] for c in CASES])
def test_precision_trains_on_cpu(
    precision: str, dtype: str, scaled: bool, tmp_path: Path, text_file: Path, data_cache: Path
) -> None:
    training = tiny_training(
        text_file, data_cache, precision=precision, steps=10, checkpoint={"everySteps": 100}
    )
    ranks = run_probed(training, tmp_path)
    history = losses(tmp_path / "run")
    assert sorted(history) == list(range(1, 11)), history
    assert all(math.isfinite(v) for v in history.values()), history
    assert history[10] < history[1] - 0.5, history  # it trains

    assert len(ranks) == 2
    for seen in ranks:
        # autocast (DDP keeps fp32 weights) computed every training matmul in `dtype`.
        assert seen["linear_dtypes"] == [dtype], seen
        if scaled:
            # One update per step; the first step's loss was multiplied by the initial scale.
            assert len(seen["scales"]) == 10 and seen["scales"][0] == INITIAL_SCALE, seen
            # The final checkpoint carries the scale the next step would use, for a resume.
            assert _saved_loss_scale(tmp_path / "run", tmp_path) == seen["scales_after"][-1]
        else:
            assert seen["scales"] == [], seen


def _saved_loss_scale(run: Path, tmp_path: Path) -> float:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from lmjob_trainer import storage

    _, latest = storage.latest_complete(run, storage.TRAIN_STAGE)
    dcp_to_torch_save(latest, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    return float(saved["scaler"]["scale"])
