"""The fixed prompt every export is checked on, and lmjob's own logits for it.

The prompt is a deterministic spread of token ids below both the tokenizer's vocabulary
and 256 (every tokenizer has them), two sequences long enough to cover several positions;
the comparison covers every position's logits, not only the last.
"""

from __future__ import annotations

import torch
from torch import nn

FP32_TOLERANCE = 1e-4
PROMPT_BATCH = 2
PROMPT_LEN = 16


def build_prompt(seq_len: int, vocab_size: int) -> torch.Tensor:
    """(PROMPT_BATCH, ≤ PROMPT_LEN) int64 ids, the same every call."""
    t = min(PROMPT_LEN, seq_len)
    ids = torch.arange(PROMPT_BATCH * t).reshape(PROMPT_BATCH, t)
    return (ids * 37 + 11) % min(vocab_size, 256)


@torch.no_grad()
def reference_logits(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    """lmjob's logits for `prompt` (fp32, eval mode): what every runtime is compared with."""
    model.eval()
    logits, _ = model(prompt)
    return logits.float()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"logits of shape {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.float() - b.float()).abs().max())
