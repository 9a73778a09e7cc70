"""Hugging Face parts from local directories train through the same trainer: a causal LM,
and a tokenizer feeding our own GPT.

`transformers` comes with the `hf` extra (part of `dev`). The model and the tokenizer are
created here and saved locally; nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmjob_trainer import storage

from .conftest import losses, subprocess_env, tiny_training, write_config


@pytest.mark.slow
def test_hf_model_trains(tmp_path: Path, text_file: Path, data_cache: Path) -> None:
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
    assert storage.read_report(root, "train").phase == "Succeeded"


def _train_bpe(text: Path, out: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer learnt from `text`, saved as a transformers tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train(
        [str(text)],
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(out)


@pytest.mark.slow
def test_hf_tokenizer_feeds_the_gpt(tmp_path: Path, text_file: Path) -> None:
    _train_bpe(text_file, tmp_path / "tok", vocab_size=600)
    cache = tmp_path / "cache"
    training = tiny_training(text_file, cache, steps=8)
    training["data"]["tokenizer"] = str(tmp_path / "tok")
    config_path = write_config(tmp_path / "c.yaml", training)
    root = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmjob_trainer",
            "--config",
            str(config_path),
            "--checkpoint-dir",
            str(root),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entry,) = [m.parent for m in cache.rglob("meta.json")]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["vocab_size"] == 600
    # BPE merges bytes, so the same text is far fewer tokens than its 100 000 bytes.
    tokens = sum(s["tokens"] for s in meta["shards"])
    assert tokens < 60_000, tokens
    history = losses(root)
    assert history[8] < history[1] - 0.3, history
