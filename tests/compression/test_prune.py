"""Magnitude pruning: targets hit, the right weights removed, zeros kept through fine-tuning."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, eval_loss, finetune

from lmjob_api.compression import PruneStage
from lmjob_trainer.compression.layers import find_block_linears
from lmjob_trainer.compression.prune import (
    MaskKeeper,
    apply_pruning,
    pruned_fraction,
)


def _stage(**kw: object) -> PruneStage:
    return PruneStage(name="prune", type="prune", **kw)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_unstructured_hits_target_sparsity(trained, scope: str, sparsity: float) -> None:
    result = apply_pruning(trained, _stage(sparsity=sparsity, scope=scope))
    assert pruned_fraction(trained, result.weights_before) == pytest.approx(sparsity, abs=1e-3)
    if scope == "layer":
        for linear in find_block_linears(trained).values():
            zeros = (linear.weight == 0).float().mean().item()
            assert zeros == pytest.approx(sparsity, abs=1e-2)


def test_unstructured_removes_the_smallest_weights(trained) -> None:
    before = {n: m.weight.detach().clone() for n, m in find_block_linears(trained).items()}
    result = apply_pruning(trained, _stage(sparsity=0.5, scope="global"))
    kept = torch.cat([before[n[: -len(".weight")]][m].abs() for n, m in result.masks.items()])
    gone = torch.cat([before[n[: -len(".weight")]][~m].abs() for n, m in result.masks.items()])
    assert kept.min() >= gone.max()


@pytest.mark.parametrize(
    ("structure", "units", "per_block"),
    [("channel", "mlp", 4 * TINY.hidden), ("head", "attn", TINY.heads)],
)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_structured_removes_units_physically(
    trained, corpus, structure: str, units: str, per_block: int, scope: str
) -> None:
    params_before = sum(p.numel() for p in trained.parameters())
    result = apply_pruning(trained, _stage(sparsity=0.5, structure=structure, scope=scope))
    removed = sum(result.removed.values())
    assert removed == pytest.approx(0.5 * per_block * TINY.layers, abs=1)
    if scope == "layer":
        assert all(r == per_block // 2 for r in result.removed.values())
    # Smaller for real: fewer parameters, not zeros, and the model still runs.
    assert sum(p.numel() for p in trained.parameters()) < params_before
    assert all(int((m.weight == 0).sum()) == 0 for m in find_block_linears(trained).values())
    assert eval_loss(trained, corpus, batches=2) < 10


def test_masks_keep_pruned_weights_zero_while_finetuning(trained, corpus) -> None:
    result = apply_pruning(trained, _stage(sparsity=0.5))
    one_shot = eval_loss(trained, corpus)
    keeper = MaskKeeper(result.masks)
    with keeper:
        keeper.attach(trained)
        finetune(trained, corpus, steps=30)
    assert pruned_fraction(trained, result.weights_before) == pytest.approx(0.5, abs=1e-3)
    # Zeros exactly where the masks say, and only there: the kept weights did train.
    for name, linear in find_block_linears(trained).items():
        assert torch.equal(linear.weight != 0, result.masks[name + ".weight"])
    assert eval_loss(trained, corpus) < one_shot
    # Outside the context the hook is gone: a later optimiser step leaves zeros alone.
    finetune(trained, corpus, steps=1)
    assert pruned_fraction(trained, result.weights_before) < 0.4


def test_masks_bind_through_wrappers_and_refuse_strangers(trained) -> None:
    mask = torch.zeros_like(trained.blocks[0].mlp.fc.weight, dtype=torch.bool)
    # Names as DDP and activation checkpointing make them: module.blocks.0._checkpoint_wrapped_module...
    trained.blocks[0] = torch.nn.ModuleDict({"_checkpoint_wrapped_module": trained.blocks[0]})
    wrapped = torch.nn.ModuleDict({"module": trained})
    MaskKeeper({"blocks.0.mlp.fc.weight": mask}).attach(wrapped)
    trained.blocks[0] = trained.blocks[0]["_checkpoint_wrapped_module"]
    assert int(trained.blocks[0].mlp.fc.weight.count_nonzero()) == 0
    with pytest.raises(AssertionError, match="matched no parameter"):
        MaskKeeper({"blocks.9.mlp.fc.weight": mask}).attach(trained)
