"""A Hugging Face causal LM loaded from a local directory, behind lmjob's model interface.

`transformers` is imported only here and only when such a model is asked for: the default
GPT path (and the trainer image's tests) never need it. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmjob_trainer.causal_lm import generate, lm_loss


class HFCausalLM(nn.Module):
    """Wraps an `AutoModelForCausalLM` so that forward(idx, targets) returns (logits, loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.seq_len = int(getattr(config, "max_position_embeddings", 0) or 1024)
        self.vocab_size = int(config.vocab_size)

    @classmethod
    def from_local(cls, path: str) -> HFCausalLM:
        if not Path(path).is_dir():
            raise ValueError(f"training.model.path: {path} is not a directory of a local HF model")
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ValueError(
                "training.model.architecture hf needs the `transformers` package in the trainer "
                "image: install it, or use architecture gpt"
            ) from None
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, torch_dtype=torch.float32
        )
        return cls(model)

    def decoder_layers(self) -> list[nn.Module]:
        """The repeated blocks (each its own FSDP unit), found by the usual attribute names."""
        for owner in ("model", "transformer", "gpt_neox"):
            base = getattr(self.model, owner, None)
            for name in ("layers", "h", "blocks"):
                layers = getattr(base, name, None) if base is not None else None
                if isinstance(layers, nn.ModuleList):
                    return list(layers)
        return []

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.model(input_ids=idx, use_cache=False).logits
        return logits, None if targets is None else lm_loss(logits, targets)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        return generate(self, idx, max_new_tokens, temperature, top_k, self.seq_len)
