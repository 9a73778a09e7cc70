"""Magnitude pruning of the block Linear layers: unstructured (single weights, kept zero by
masks during the recovery fine-tune) or structured (MLP channels, attention heads, removed
physically so the saved model really is smaller and faster).

`torch.nn.utils.prune` is not used: its reparametrisation renames `weight` to
`weight_orig` + `weight_mask`, which changes checkpoint keys and fights FSDP2/TP. Instead the
weights are zeroed once and `MaskKeeper` re-applies the masks after every optimiser step;
pruning is then permanent by construction (the output holds plain tensors with zeros), and
a resumed fine-tune recomputes the same masks from the same input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from lmjob_api.compression import PruneStage
from lmjob_trainer.compression.layers import find_block_linears

log = logging.getLogger(__name__)

# Path components that wrappers insert into parameter names (DDP, torch.compile, activation
# checkpointing, FSDP1).
_WRAPPER_PARTS = {"module", "_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"}


@dataclass
class PruneResult:
    """What a pruning transform did."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Parameter name → bool keep-mask, for weights that must stay zero while fine-tuning."""
    weights_before: int = 0
    """Weights of the pruned layers before pruning (the denominator of `sparsity`)."""
    removed: dict[str, int] = field(default_factory=dict)
    """Structured pruning: layer → channels or heads removed."""


def apply_pruning(model: nn.Module, stage: PruneStage) -> PruneResult:
    """Prune `model` in place as `stage` says; returns masks for the fine-tune."""
    linears = find_block_linears(model)
    before = sum(m.weight.numel() for m in linears.values())
    if stage.structure == "unstructured":
        result = PruneResult(masks=_prune_unstructured(linears, stage.sparsity, stage.scope))
    elif stage.structure == "channel":
        result = PruneResult(removed=_prune_channels(model, stage.sparsity, stage.scope))
    else:
        result = PruneResult(removed=_prune_heads(model, stage.sparsity, stage.scope))
    result.weights_before = before
    log.info(
        "pruned %s/%s to %.3f sparsity (target %.3f)",
        stage.structure,
        stage.scope,
        pruned_fraction(model, before),
        stage.sparsity,
    )
    return result


def pruned_fraction(model: nn.Module, weights_before: int) -> float:
    """Fraction of the block Linear weights that are gone (structured) or zero (unstructured),
    measured on the model itself rather than trusted from the target."""
    nonzero = sum(int(torch.count_nonzero(m.weight)) for m in find_block_linears(model).values())
    return 1.0 - nonzero / weights_before if weights_before else 0.0


def _keep_count(n: int, sparsity: float) -> int:
    return max(1, n - round(n * sparsity))


def _prune_unstructured(
    linears: dict[str, nn.Linear], sparsity: float, scope: str
) -> dict[str, torch.Tensor]:
    masks: dict[str, torch.Tensor] = {}
    if scope == "global":
        # One threshold over every weight: take exactly the k largest so ties cannot overshoot.
        flat = torch.cat([m.weight.detach().abs().flatten() for m in linears.values()])
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[torch.topk(flat, _keep_count(flat.numel(), sparsity), sorted=False).indices] = True
        offset = 0
        for name, m in linears.items():
            n = m.weight.numel()
            masks[name + ".weight"] = keep[offset : offset + n].view_as(m.weight)
            offset += n
    else:
        for name, m in linears.items():
            flat = m.weight.detach().abs().flatten()
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[torch.topk(flat, _keep_count(flat.numel(), sparsity), sorted=False).indices] = True
            masks[name + ".weight"] = keep.view_as(m.weight)
    with torch.no_grad():
        for name, m in linears.items():
            m.weight.mul_(masks[name + ".weight"])
    return masks


def _select(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str
) -> dict[str, torch.Tensor]:
    """Indices kept per layer, by descending score; every layer keeps at least one unit."""
    if scope == "layer":
        return {
            name: torch.sort(torch.topk(s, _keep_count(s.numel(), sparsity)).indices).values
            for name, s in scores.items()
        }
    flat = torch.cat(list(scores.values()))
    threshold_keep = _keep_count(flat.numel(), sparsity)
    cutoff = torch.topk(flat, threshold_keep).values.min()
    kept = {}
    for name, s in scores.items():
        idx = torch.nonzero(s >= cutoff).flatten()
        kept[name] = idx if idx.numel() else s.argmax().view(1)
    return kept


def _prune_channels(model: nn.Module, sparsity: float, scope: str) -> dict[str, int]:
    """Remove hidden channels of each MLP (rows of `fc`, columns of `proj`).

    A channel's score is ‖fc row‖·‖proj column‖: a channel matters only if it both reads and
    writes something large. Global scope compares raw scores across blocks.
    """
    mlps = {f"blocks.{i}.mlp": b.mlp for i, b in enumerate(model.blocks)}
    scores = {
        name: mlp.fc.weight.detach().norm(dim=1) * mlp.proj.weight.detach().norm(dim=0)
        for name, mlp in mlps.items()
    }
    removed = {}
    for name, keep in _select(scores, sparsity, scope).items():
        mlp = mlps[name]
        removed[name] = mlp.fc.out_features - keep.numel()
        mlp.fc = _take_rows(mlp.fc, keep)
        mlp.proj = _take_cols(mlp.proj, keep)
    return removed


def _prune_heads(model: nn.Module, sparsity: float, scope: str) -> dict[str, int]:
    """Remove whole attention heads: their q, k, v rows of `qkv` and their columns of `proj`.

    The score of a head is the norm of all its weights in `qkv` and `proj`. Relies on the
    GPT's layout (model.py): qkv rows grouped per head, q·k·v of head h in one contiguous
    block of 3·head_dim rows, and a forward that infers the head count from `qkv`.
    """
    attns = {f"blocks.{i}.attn": b.attn for i, b in enumerate(model.blocks)}
    scores = {}
    for name, attn in attns.items():
        n_heads, d = attn.n_heads, attn.head_dim
        qkv, proj = attn.qkv.weight.detach(), attn.proj.weight.detach()
        per_head = qkv.view(n_heads, 3 * d, -1).pow(2).sum(dim=(1, 2))
        per_head = per_head + proj.view(proj.shape[0], n_heads, d).pow(2).sum(dim=(0, 2))
        scores[name] = per_head.sqrt()
    removed = {}
    for name, keep in _select(scores, sparsity, scope).items():
        attn = attns[name]
        removed[name] = attn.n_heads - keep.numel()
        _keep_heads(attn, keep)
    return removed


def _keep_heads(attn: nn.Module, heads: torch.Tensor) -> None:
    d = attn.head_dim
    rows = (heads.view(-1, 1) * 3 * d + torch.arange(3 * d)).flatten()
    cols = (heads.view(-1, 1) * d + torch.arange(d)).flatten()
    attn.qkv = _take_rows(attn.qkv, rows)
    attn.proj = _take_cols(attn.proj, cols)
    attn.n_heads = heads.numel()


def _take_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, rows.numel(), bias=linear.bias is not None)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    return new


def _take_cols(linear: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    new = nn.Linear(cols.numel(), linear.out_features, bias=linear.bias is not None)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, cols])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def apply_structure(model: nn.Module, shapes: dict[str, int]) -> None:
    """Give a freshly built model the layer shapes of a structurally pruned one, before its
    weights are loaded: `shapes` maps `blocks.i.mlp` → kept channels, `blocks.i.attn` → kept
    heads (what `structure_of` records). The weights it leaves are placeholders."""
    for name, kept in shapes.items():
        module = model.get_submodule(name)
        if name.endswith(".mlp"):
            idx = torch.arange(kept)
            module.fc = _take_rows(module.fc, idx)
            module.proj = _take_cols(module.proj, idx)
        else:
            _keep_heads(module, torch.arange(kept))


def structure_of(model: nn.Module) -> dict[str, int]:
    """The per-block shapes `apply_structure` needs, read from a (pruned) model."""
    shapes = {}
    for i, block in enumerate(model.blocks):
        shapes[f"blocks.{i}.mlp"] = block.mlp.fc.out_features
        shapes[f"blocks.{i}.attn"] = block.attn.n_heads
    return shapes


def _canonical(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


class MaskKeeper:
    """Keeps pruned weights at zero while fine-tuning: re-applies the masks after every
    optimiser step, so checkpoints (saved after a step) hold exact zeros.

    Use as a context manager around the fine-tune; inside it, every optimiser step of this
    process re-applies the masks (torch's global step hook: the loop builds its optimiser
    itself, and only one optimiser steps at a time here). `attach` binds the masks to the
    parallelised model: names are matched after stripping wrapper prefixes, and a DTensor
    parameter (FSDP2, TP) gets its mask laid out like itself. `loss_fn` attaches lazily on
    the first call, which is the first moment the loop's wrapped model is visible.
    """

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def attach(self, model: nn.Module) -> None:
        pairs = []
        for name, param in model.named_parameters():
            mask = self.masks.get(_canonical(name))
            if mask is None:
                continue
            mask = mask.to(device=param.device, dtype=param.dtype)
            if hasattr(param, "device_mesh") and hasattr(param, "placements"):
                from torch.distributed.tensor import distribute_tensor

                # Every rank holds the same full mask: cut locally, no communication.
                mask = distribute_tensor(
                    mask, param.device_mesh, param.placements, src_data_rank=None
                )
            pairs.append((param, mask))
        missing = len(self.masks) - len(pairs)
        assert missing == 0, f"{missing} pruning masks matched no parameter of the wrapped model"
        self._pairs = pairs
        self.apply()

    def apply(self) -> None:
        with torch.no_grad():
            for param, mask in self._pairs or ():
                param.mul_(mask)

    def loss_fn(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The model's own loss; binds the masks to `model` on the first call."""
        if self._pairs is None:
            self.attach(model)
        _, loss = model(inputs, targets)
        return loss

    def __enter__(self) -> MaskKeeper:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(lambda *_: self.apply())
        return self

    def __exit__(self, *_: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
