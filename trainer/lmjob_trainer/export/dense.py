"""A compressed model in deployable dense form: what a standard architecture can hold.

- low-rank layers: the factors multiplied out (W = up·down) into one Linear;
- quantized weights (torchao tensors): dequantized to fp32, the method recorded in `notes`;
- structurally pruned GPT blocks: padded back to the full width with zero rows/columns.
  A zero head (q, k, v and its output columns all zero) adds exactly nothing, and neither
  does a zero MLP channel (GELU(0) = 0), so the padded model computes the same function;
- unstructured pruning needs nothing: its zeros are already in dense tensors.

The zeros are reported (`zero_fraction` of the block Linear weights) because the dense
formats cannot exploit them; a sparse-aware runtime can.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lmjob_trainer.compression.layers import find_block_linears
from lmjob_trainer.compression.lowrank import LowRankLinear
from lmjob_trainer.model import GPT


def plain(t: torch.Tensor) -> torch.Tensor:
    """A plain fp32 tensor of any weight: torchao's quantized tensors are dequantized."""
    if type(t) not in (torch.Tensor, nn.Parameter):
        t = t.dequantize()
    return t.detach().to(torch.float32)


def build_dense(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """A dense fp32 copy of `model` (the original is untouched) and what was done to get it."""
    notes: dict[str, Any] = {}
    dense = copy.deepcopy(model)
    ranks = {}
    quantized = 0
    for name, module in list(dense.named_modules()):
        if any(name.startswith(f"{r}.") for r in ranks):
            continue  # a factor of a layer already multiplied out
        if isinstance(module, LowRankLinear):
            w = plain(module.up.weight).double() @ plain(module.down.weight).double()
            bias = module.up.bias
            ranks[name] = module.rank
            quantized += type(module.up.weight) is not nn.Parameter  # factors quantized
        elif isinstance(module, nn.Linear) and type(module.weight) is not nn.Parameter:
            w, bias = plain(module.weight), module.bias
            quantized += 1
        else:
            continue
        linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(w)
            if bias is not None:
                linear.bias.copy_(plain(bias))
        dense.set_submodule(name, linear)
    if ranks:
        notes["lowrank_multiplied_out"] = len(ranks)
    if quantized:
        notes["dequantized_layers"] = quantized
    dense = dense.float()
    if isinstance(dense, GPT):
        padded = _pad_structure(dense)
        if padded:
            notes["pruned_structure_padded"] = padded
        notes["zero_fraction"] = round(zero_fraction(dense), 6)
    return dense.eval(), notes


def zero_fraction(model: nn.Module) -> float:
    """Share of exactly-zero entries in the block Linear weights."""
    linears = find_block_linears(model).values()
    total = sum(linear.weight.numel() for linear in linears)
    zeros = sum(int((linear.weight == 0).sum()) for linear in linears)
    return zeros / total if total else 0.0


def _pad_structure(model: GPT) -> dict[str, int]:
    """Give every pruned block the full shape again (zero padding); name → units added."""
    hidden = model.spec.hidden
    padded = {}
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        missing_heads = hidden // attn.head_dim - attn.n_heads
        if missing_heads:
            attn.qkv = _pad(attn.qkv, rows=3 * hidden)
            attn.proj = _pad(attn.proj, cols=hidden)
            attn.n_heads = hidden // attn.head_dim
            padded[f"blocks.{i}.attn"] = missing_heads
        if mlp.fc.out_features < 4 * hidden:
            padded[f"blocks.{i}.mlp"] = 4 * hidden - mlp.fc.out_features
            mlp.fc = _pad(mlp.fc, rows=4 * hidden)
            mlp.proj = _pad(mlp.proj, cols=4 * hidden)
    return padded


def _pad(linear: nn.Linear, *, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    """`linear` with zero output rows (and zero bias) or zero input columns appended."""
    out_f, in_f = rows or linear.out_features, cols or linear.in_features
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: linear.out_features, : linear.in_features] = linear.weight
        if linear.bias is not None:
            new.bias.zero_()
            new.bias[: linear.out_features] = linear.bias
    return new
