"""Optimiser and learning-rate schedule from `training.optimizer` and `training.schedule`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lmjob_api.training import OptimizerSpec, ScheduleSpec


def build_optimizer(
    model: nn.Module, spec: OptimizerSpec, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum); weight decay on matrices only, never biases or norms."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
    # The fused kernel is one launch per step on CUDA; on CPU the foreach path is the fast one.
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(spec.beta1, spec.beta2), fused=fused)


def lr_factor(spec: ScheduleSpec, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimiser step `step` (0-based): warmup, then decay."""
    warmup = spec.warmup_steps
    floor = spec.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # never 0: the first step already learns a little
        since = step - warmup
        progress = min(1.0, since / max(1, total_steps - warmup))
        if spec.decay == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if spec.decay == "linear":
            return 1 - (1 - floor) * progress
        if spec.decay == "step":
            return spec.gamma ** (since // spec.step_every)
        if spec.decay == "exponential":
            return spec.gamma ** (since / 1000)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: ScheduleSpec, total_steps: int
) -> LambdaLR:
    """A LambdaLR stepped once per optimiser step; its state (the step) is checkpointed."""
    return LambdaLR(optimizer, lr_factor(spec, total_steps))
