"""A Hugging Face causal LM from a local directory trains through the same trainer.

Needs `transformers` (not a trainer dependency): skipped without it. The model is created
from a config and saved locally; nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmjob_trainer import storage

from .conftest import losses, subprocess_env, tiny_training, write_config


@pytest.mark.slow
def test_hf_model_trains(tmp_path: Path, text_file: Path, data_cache: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
    training = tiny_training(
        text_file,
        data_cache,
        model={"architecture": "hf", "path": str(tmp_path / "hf"), "seqLen": 32},
        parallelism={"strategy": "fsdp", "activationCheckpointing": True},
        steps=8,
    )
    config_path = write_config(tmp_path / "c.yaml", training)
    root = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmjob_trainer", "--config", str(config_path)]
    proc = subprocess.run(
        [*cmd, "--checkpoint-dir", str(root)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = losses(root)
    assert history[8] < history[1] - 0.3, history
    assert storage.read_report(root, "train")["phase"] == "Succeeded"
