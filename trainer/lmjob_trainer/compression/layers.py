"""Which layers of a model the compression transforms touch, and what their weights weigh.

The transforms work on the Linear layers inside the transformer blocks. Embeddings, the
output head (often tied to the token embedding) and the norms stay dense: they are a small
share of a deep model's weights and the most sensitive to damage.
"""

from __future__ import annotations

import torch
from torch import nn


def find_block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Fully qualified name → Linear for every Linear layer inside `model.blocks`.

    Models without a `blocks` attribute fall back to every Linear except one named `head`.
    """
    root: nn.Module = getattr(model, "blocks", model)
    prefix = "blocks." if root is not model else ""
    found = {}
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear) and (root is not model or name != "head"):
            found[prefix + name] = module
    return found


def linear_weight_bytes(model: nn.Module) -> int:
    """In-memory bytes of the block Linear weights, as stored (quantized tensors count their
    int data plus scales), used for the "x times smaller Linear weights" figure."""
    total = 0
    for linear in find_block_linears(model).values():
        total += tensor_storage_bytes(linear.weight)
    return total


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: plain tensors by dtype, tensor subclasses (torchao's
    quantized weights) by summing the plain tensors they are made of."""
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_storage_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()
