"""What every causal LM behind lmjob's model interface shares: the next-token loss and sampling.

Its own module so that model.py (lmjob's GPT, and `build_model` choosing it or a Hugging
Face model) and hf_model.py both import it, and neither imports the other at module level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; in fp32 whatever the logits' dtype (stable softmax)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class NonFiniteLogits(RuntimeError):
    """The model's next-token scores hold NaN or infinity: nothing can be sampled."""


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
) -> torch.Tensor:
    """Autoregressive sampling for any module whose forward returns (logits, loss)."""
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        window = idx if context is None else idx[:, -context:]
        logits, _ = model(window)
        logits = logits[:, -1, :].float() / max(temperature, 1e-6)
        if not torch.isfinite(logits).all():
            model.train(was_training)
            raise NonFiniteLogits("the model's next-token scores are not finite")
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        next_token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
        idx = torch.cat([idx, next_token], dim=1)
    model.train(was_training)
    return idx
