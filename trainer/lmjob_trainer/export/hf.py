"""The `hf` format: a folder `transformers.AutoModelForCausalLM.from_pretrained` loads with
no custom code, the kind vLLM and text-generation-inference serve.

lmjob's GPT goes out as GPT-2 (`GPT2LMHeadModel`, see gpt2_layout): config.json,
model.safetensors (written with the safetensors library), generation_config.json, and the
tokenizer. A model trained with `architecture: hf` goes out through its own
`save_pretrained`. Facts lmjob knows and transformers does not (stage, quantization that
was undone, pruned zeros) ride in config.json under `lmjob`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmjob_trainer.export.gpt2_layout import gpt2_tensors
from lmjob_trainer.export.result import ExportError, Verification
from lmjob_trainer.export.tokenizer_files import write_hf_tokenizer
from lmjob_trainer.export.verify import FP32_TOLERANCE, max_abs_diff
from lmjob_trainer.hf_model import HFCausalLM
from lmjob_trainer.model import GPT

RUNTIME = "transformers"


def gpt2_config(model: GPT, lmjob: dict[str, Any]) -> dict[str, Any]:
    """config.json of the GPT-2 that computes exactly what `model` does."""
    from transformers import GPT2Config

    spec = model.spec
    config = GPT2Config(
        vocab_size=model.vocab_size,
        n_positions=spec.seq_len,
        n_embd=spec.hidden,
        n_layer=spec.layers,
        n_head=spec.heads,
        n_inner=4 * spec.hidden,
        # torch.nn.functional.gelu's default: the exact erf form, not GPT-2's tanh one.
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=model.ln_f.eps,
        tie_word_embeddings=True,
        # GPT-2's own ids (50256) do not exist in our vocabulary.
        bos_token_id=None,
        eos_token_id=None,
        architectures=["GPT2LMHeadModel"],
        torch_dtype="float32",
    )
    data = config.to_dict()
    data["lmjob"] = lmjob
    return data


def write(model: nn.Module, folder: Path, tokenizer: str | None, lmjob: dict[str, Any]) -> None:
    """Write the HF folder for a dense model into `folder` (which exists and is empty)."""
    if isinstance(model, HFCausalLM):
        model.model.save_pretrained(folder, safe_serialization=True)
        config = json.loads((folder / "config.json").read_text())
        config["lmjob"] = lmjob
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    elif isinstance(model, GPT):
        from safetensors.torch import save_file
        from transformers import GenerationConfig

        tensors = {"transformer." + k: v for k, v in gpt2_tensors(model).items()}
        for name, t in tensors.items():
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                tensors[name] = t.t().contiguous()  # Conv1D: (in, out)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config = gpt2_config(model, lmjob)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        GenerationConfig(bos_token_id=None, eos_token_id=None).save_pretrained(folder)
    else:
        raise ExportError(f"format hf: cannot express a {type(model).__name__}")
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, folder)


@torch.no_grad()
def verify(folder: Path, prompt: torch.Tensor, expected: torch.Tensor) -> Verification:
    """Load the folder with transformers (no custom code) and compare its logits."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False, dtype=torch.float32
    ).eval()
    logits = loaded(input_ids=prompt, use_cache=False).logits
    return Verification(RUNTIME, max_abs_diff(logits, expected), FP32_TOLERANCE)
