"""Post-training quantization of the block Linear layers with torchao (`quantize_`).

int8 weight-only and int8 dynamic (int8 activations too) run on CPU and GPU; int4 weight-only
uses the tinygemm kernel, which exists only for CUDA. The quantized weights are torchao tensor
subclasses that `torch.save` / `torch.load(weights_only=True)` handle directly, so the stage
output saves and reloads like any state dict.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lmjob_trainer.compression.layers import find_block_linears
from lmjob_trainer.compression.validate import quantize_problem

log = logging.getLogger(__name__)

INT4_GROUP_SIZES = (128, 64, 32)


def check_quantize_supported(method: str, device: torch.device | str) -> None:
    """Raise ValueError when `method` cannot run on `device`."""
    problem = quantize_problem(method, torch.device(device).type == "cuda")
    if problem:
        raise ValueError(problem)


def _config(method: str, group_size: int | None = None) -> object:
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
    )

    if method == "int8-weight-only":
        return Int8WeightOnlyConfig()
    if method == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    return Int4WeightOnlyConfig(group_size=group_size or 128)


def apply_quantization(model: nn.Module, method: str) -> list[str]:
    """Quantize the block Linear layers of `model` in place; returns the names quantized.

    int4 groups weights along the input dimension: a layer is quantized with the largest of
    128/64/32 that divides its in_features and left in float when none does.
    """
    from torchao.quantization import quantize_

    device = next(model.parameters()).device
    check_quantize_supported(method, device)
    if method == "int4-weight-only":
        # tinygemm computes in bf16: weights and activations must both be bf16.
        model.to(torch.bfloat16)
    names = []
    for name, linear in find_block_linears(model).items():
        group = None
        if method == "int4-weight-only":
            group = next((g for g in INT4_GROUP_SIZES if linear.in_features % g == 0), None)
            if group is None:
                log.warning("int4: %s (in_features %d) stays in float", name, linear.in_features)
                continue
        quantize_(
            linear, _config(method, group), filter_fn=lambda m, _fqn: isinstance(m, nn.Linear)
        )
        names.append(name)
    log.info("quantized %d layers with %s", len(names), method)
    return names
