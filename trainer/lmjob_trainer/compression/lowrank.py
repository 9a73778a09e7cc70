"""Low-rank factorisation: each block Linear(in, out) becomes Linear(in, r) → Linear(r, out).

Two ways to pick the factors, both on `torch.linalg.svd` (no maintained library does this):
- `svd`: truncated SVD of W. Optimal for ‖W − W'‖ but blind to which input directions the
  layer actually sees, which is why it wrecks language models.
- `activation-aware` (SVD-LLM): with the inputs' second moment XᵀX = L·Lᵀ (Cholesky), take the
  SVD of W·L and map back with L⁻¹. That minimises ‖(W − W')·X‖, the error in the layer's
  output on calibration data, instead of the error in its weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmjob_api.compression import LowRankStage
from lmjob_trainer.compression.layers import find_block_linears

log = logging.getLogger(__name__)


class LowRankLinear(nn.Module):
    """`up(down(x))`: a rank-r stand-in for one Linear layer."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @property
    def in_features(self) -> int:
        return self.down.in_features

    @property
    def out_features(self) -> int:
        return self.up.out_features

    @property
    def rank(self) -> int:
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


@dataclass
class Factors:
    """W ≈ up · down, with the singular values of the matrix that was truncated."""

    up: torch.Tensor
    down: torch.Tensor
    singular_values: torch.Tensor


def collect_input_gram(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
) -> dict[str, torch.Tensor]:
    """XᵀX (float64) of the inputs of every block Linear over the calibration batches.

    Under torch.distributed each rank feeds its own batches and the sums are all-reduced, so
    every rank ends with the same statistics (and hence the same factors).
    """
    linears = find_block_linears(model)
    grams: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            if name in grams:
                grams[name] += x.T @ x
            else:
                grams[name] = x.T @ x

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                (forward or _default_forward)(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        for name in linears:
            g = grams.setdefault(
                name,
                torch.zeros(
                    linears[name].in_features, linears[name].in_features, dtype=torch.float64
                ),
            )
            dist.all_reduce(g)
    return grams


def _default_forward(model: nn.Module, batch: torch.Tensor) -> object:
    return model(batch)


def factorize(
    weight: torch.Tensor, gram: torch.Tensor | None, rank: int | None, energy: float | None
) -> Factors:
    """Rank-r factors of `weight` (out × in); whitened by `gram` (in × in) when given.

    Exactly one of `rank` and `energy` is set; with `energy`, r is the smallest rank whose
    squared singular values hold that fraction of the total.
    """
    w = weight.detach().double()
    if gram is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        right = vh
    else:
        chol = _cholesky(gram)
        u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
        # down = S½·Vᵀ·L⁻¹; solve instead of inverting L for stability.
        right = torch.linalg.solve_triangular(chol, vh, upper=False, left=False)
    if rank is None:
        assert energy is not None
        share = torch.cumsum(s.pow(2), 0) / s.pow(2).sum()
        rank = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1
    rank = max(1, min(rank, s.numel()))
    root = s[:rank].sqrt()
    up = u[:, :rank] * root
    down = root.unsqueeze(1) * right[:rank]
    # Balance each rank-one term so that its column of `up` and row of `down` have the same
    # norm (same product). Whitened factors come out lopsided (L⁻¹ shrinks `down` by the
    # inputs' scale), and Adam's updates, about lr in size whatever the weight, would then
    # move the small factor by a large fraction: fine-tuning made such models worse.
    balance = (down.norm(dim=1) / up.norm(dim=0).clamp_min(1e-30)).sqrt()
    up, down = up * balance, down / balance.unsqueeze(1)
    return Factors(up=up.to(weight.dtype), down=down.to(weight.dtype), singular_values=s)


def _cholesky(gram: torch.Tensor) -> torch.Tensor:
    """Lower L with L·Lᵀ = XᵀX + damping; damping grows until the factorisation succeeds
    (XᵀX is only semi-definite when some input directions are never used)."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal().mean().clamp_min(1e-12)
    damping = 1e-6
    while True:
        chol, info = torch.linalg.cholesky_ex(gram + damping * scale * eye)
        if int(info) == 0:
            return chol
        damping *= 10
        if damping > 1.0:
            raise ValueError(
                "lowrank: calibration statistics are degenerate; add calibrationBatches"
            )


def rank_for(linear: nn.Linear, rank_ratio: float) -> int:
    """Rank kept by `rankRatio`: a fraction of min(in, out), at least 1."""
    return max(1, round(rank_ratio * min(linear.in_features, linear.out_features)))


def saves_params(in_features: int, out_features: int, rank: int) -> bool:
    """Two factors are only worth it when r·(in + out) < in·out."""
    return rank * (in_features + out_features) < in_features * out_features


def apply_lowrank(
    model: nn.Module, stage: LowRankStage, grams: dict[str, torch.Tensor] | None
) -> dict[str, int]:
    """Replace block Linears by LowRankLinear in place; returns layer name → rank.

    A layer whose chosen rank would not save parameters keeps its dense weights (e.g. a square
    layer at rankRatio 0.5: 0.5·h·2h = h²), and is absent from the result.
    """
    if stage.method == "activation-aware" and grams is None:
        raise ValueError("lowrank method activation-aware needs calibration statistics")
    ranks = {}
    for name, linear in find_block_linears(model).items():
        rank = rank_for(linear, stage.rank_ratio) if stage.rank_ratio is not None else None
        if rank is not None and not saves_params(linear.in_features, linear.out_features, rank):
            continue
        gram = grams[name] if stage.method == "activation-aware" and grams else None
        factors = factorize(linear.weight, gram, rank, stage.energy)
        rank = factors.down.shape[0]
        if not saves_params(linear.in_features, linear.out_features, rank):
            continue
        new = build_lowrank_linear(
            linear.in_features, linear.out_features, rank, linear.bias is not None
        )
        new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.down.weight.copy_(factors.down)
            new.up.weight.copy_(factors.up)
            if linear.bias is not None:
                new.up.bias.copy_(linear.bias)
        model.set_submodule(name, new)
        ranks[name] = rank
    log.info("lowrank (%s): factorised %d layers", stage.method, len(ranks))
    return ranks


def build_lowrank_linear(
    in_features: int, out_features: int, rank: int, bias: bool
) -> LowRankLinear:
    """An empty LowRankLinear of the given shape."""
    return LowRankLinear(in_features, out_features, rank, bias)


def apply_ranks(model: nn.Module, ranks: dict[str, int]) -> None:
    """Give a fresh model the factorised shapes recorded in `ranks` (before loading weights)."""
    for name, rank in ranks.items():
        linear = model.get_submodule(name)
        new = build_lowrank_linear(
            linear.in_features, linear.out_features, rank, linear.bias is not None
        )
        model.set_submodule(name, new.to(device=linear.weight.device, dtype=linear.weight.dtype))


def ranks_of(model: nn.Module) -> dict[str, int]:
    """Layer name → rank of every LowRankLinear in a model."""
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
