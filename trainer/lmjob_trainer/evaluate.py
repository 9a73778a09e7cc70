"""Evaluation: mean next-token loss over a fixed held-out set, and precision contexts."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from lmjob_api.training import Precision
from lmjob_trainer.data import Split, eval_batches
from lmjob_trainer.distributed import all_reduce_sum
from lmjob_trainer.parallelize import DTYPES, unwrap


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager:
    """Mixed-precision autocast for bf16/fp16; nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: Split,
    *,
    num_sequences: int,
    micro_batch: int,
    dp_rank: int,
    dp_size: int,
    device: torch.device,
    precision: Precision,
) -> float:
    """Mean loss per token over the evaluation set, the same number at any world size.

    A collective (FSDP/TP forwards and the final sum): every rank must call it.
    """
    # DDP's forward adds nothing without gradients; FSDP/TP modules must be called as they are.
    module = unwrap(model)
    was_training = module.training
    module.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0.0
    for inputs, targets, weight in eval_batches(
        split,
        num_sequences=num_sequences,
        micro_batch=micro_batch,
        dp_rank=dp_rank,
        dp_size=dp_size,
    ):
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast(device, precision):
            logits, _ = module(inputs)
        per_token = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), reduction="none"
        ).view(targets.shape)
        total += (per_token.mean(dim=1).double() * weight.to(device, torch.float64)).sum()
        count += float(weight.sum())
    module.train(was_training)
    # Ranks of one tensor-parallel group count the same sequences: numerator and
    # denominator grow alike, so the ratio stays right.
    total_sum, count_sum = all_reduce_sum([float(total), count], device)
    return total_sum / max(count_sum, 1.0)
