"""Low-rank factorisation: error falls with rank, activation-aware beats plain SVD on real text."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import TINY, Corpus, eval_loss

from lmjob_api.compression import LowRankStage
from lmjob_trainer.compression.layers import find_block_linears
from lmjob_trainer.compression.lowrank import (
    LowRankLinear,
    apply_lowrank,
    collect_input_gram,
    factorize,
    ranks_of,
)


def _calibration(corpus: Corpus, n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [corpus.batch("train", 8, TINY.seq_len, gen)[0] for _ in range(n)]


def _stage(**kw: object) -> LowRankStage:
    return LowRankStage(name="lowrank", type="lowrank", **kw)


@pytest.mark.parametrize("whitened", [False, True])
def test_output_error_falls_as_rank_rises(trained, corpus, whitened: bool) -> None:
    batches = _calibration(corpus)
    grams = collect_input_gram(trained, batches)
    name, linear = "blocks.1.mlp.fc", find_block_linears(trained)["blocks.1.mlp.fc"]
    w = linear.weight.detach().double()
    errors = []
    for rank in (4, 16, 32, 48, 64):
        f = factorize(linear.weight, grams[name] if whitened else None, rank, None)
        diff = w - f.up.double() @ f.down.double()
        # ‖(W − W')·X‖² = tr(ΔW · XᵀX · ΔWᵀ): the error in the layer's output on real inputs.
        errors.append(torch.trace(diff @ grams[name] @ diff.T).item())
    assert all(a > b for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-6 * errors[0]  # full rank reconstructs


def test_activation_aware_beats_plain_svd_on_shakespeare(trained_state, corpus) -> None:
    from lmjob_trainer.model import GPT

    losses = {}
    grams = None
    for method in ("svd", "activation-aware"):
        model = GPT(TINY, 256)
        model.load_state_dict(trained_state)
        if method == "activation-aware":
            grams = collect_input_gram(model, _calibration(corpus))
        apply_lowrank(model, _stage(rank_ratio=0.25, method=method), grams)
        losses[method] = eval_loss(model, corpus)
    base = GPT(TINY, 256)
    base.load_state_dict(trained_state)
    dense = eval_loss(base, corpus)
    # Not a near tie: the whitened factors lose clearly less of what the model learned.
    assert dense < losses["activation-aware"] < losses["svd"] - 0.02, (dense, losses)


def test_rank_ratio_skips_layers_that_would_grow(trained) -> None:
    params_before = sum(p.numel() for p in trained.parameters())
    ranks = apply_lowrank(trained, _stage(rank_ratio=0.5, method="svd"), None)
    # Square attn.proj at half rank would need h/2·2h = h² parameters: left dense.
    assert not any(n.endswith("attn.proj") for n in ranks)
    assert ranks["blocks.0.mlp.fc"] == TINY.hidden // 2
    assert ranks == ranks_of(trained)
    assert isinstance(trained.get_submodule("blocks.0.mlp.fc"), LowRankLinear)
    assert sum(p.numel() for p in trained.parameters()) < params_before


def test_energy_threshold_picks_the_smallest_rank_holding_it(trained, corpus) -> None:
    grams = collect_input_gram(trained, _calibration(corpus, 2))
    weight = find_block_linears(trained)["blocks.0.attn.qkv"].weight
    ranks = []
    for energy in (0.5, 0.8, 0.95, 1.0):
        f = factorize(weight, grams["blocks.0.attn.qkv"], None, energy)
        rank = f.down.shape[0]
        share = f.singular_values.pow(2).cumsum(0) / f.singular_values.pow(2).sum()
        assert share[rank - 1] >= energy - 1e-9
        assert rank == 1 or share[rank - 2] < energy
        ranks.append(rank)
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]


def test_activation_aware_needs_statistics(trained) -> None:
    with pytest.raises(ValueError, match="calibration"):
        apply_lowrank(trained, _stage(rank_ratio=0.5), None)


def test_factors_are_balanced_so_finetuning_treats_them_alike(trained, corpus) -> None:
    grams = collect_input_gram(trained, _calibration(corpus, 2))
    weight = find_block_linears(trained)["blocks.1.mlp.proj"].weight
    for gram in (None, grams["blocks.1.mlp.proj"]):
        f = factorize(weight, gram, 32, None)
        # Each rank-one term: equal norms on both sides, so Adam's lr-sized steps change
        # both factors by the same fraction.
        assert torch.allclose(f.up.norm(dim=0), f.down.norm(dim=1), rtol=1e-4)
        assert f.up.abs().max() < 10 * weight.abs().max()
