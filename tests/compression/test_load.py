"""Stage outputs: the sparse format is smaller only when it should be, and every kind of model
(pruned, factorised, quantized) reloads to the same outputs with `load_stage`."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import TINY

from lmjob_api.compression import LowRankStage, PruneStage
from lmjob_trainer.compression import load_stage
from lmjob_trainer.compression.artifact import (
    Architecture,
    folder_bytes,
    pack_sparse,
    unpack_sparse,
    write_output,
)
from lmjob_trainer.compression.lowrank import apply_lowrank, ranks_of
from lmjob_trainer.compression.prune import apply_pruning, structure_of
from lmjob_trainer.compression.quantize import apply_quantization


def test_sparse_packing_round_trips_and_is_used_only_when_smaller() -> None:
    t = torch.randn(33, 17)
    assert pack_sparse(t) is None  # dense: a bitmask would only add bytes
    t[torch.rand(33, 17) < 0.5] = 0
    bitmask, values = pack_sparse(t)
    assert torch.equal(unpack_sparse(bitmask, values, [33, 17]), t)
    assert bitmask.numel() + values.numel() * 4 < t.numel() * 4


def _save(
    model: torch.nn.Module, folder: Path, sparse: bool, quantization: str | None = None
) -> None:
    arch = Architecture(
        model=TINY.to_wire(),
        vocab_size=256,
        structure=structure_of(model),
        ranks=ranks_of(model),
        quantization=quantization,
    )
    write_output(folder / "s" / "final", model.state_dict(), arch, sparse=sparse)


def test_unstructured_output_is_smaller_on_disk_only_in_sparse_format(
    trained, tmp_path: Path
) -> None:
    apply_pruning(trained, PruneStage(name="p", type="prune", sparsity=0.5))
    _save(trained, tmp_path / "dense", sparse=False)
    _save(trained, tmp_path / "sparse", sparse=True)
    dense_bytes = folder_bytes(tmp_path / "dense" / "s" / "final")
    assert folder_bytes(tmp_path / "sparse" / "s" / "final") < 0.8 * dense_bytes
    loaded = load_stage(tmp_path / "sparse", "s")
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), trained.state_dict().values(), strict=True)
    )


def test_pruned_factorised_quantized_model_reloads_identically(trained, tmp_path: Path) -> None:
    apply_pruning(trained, PruneStage(name="p", type="prune", sparsity=0.5, structure="head"))
    apply_lowrank(
        trained, LowRankStage(name="l", type="lowrank", rank_ratio=0.5, method="svd"), None
    )
    apply_quantization(trained, "int8-weight-only")
    _save(trained, tmp_path, sparse=False, quantization="int8-weight-only")
    loaded = load_stage(tmp_path, "s")
    x = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], trained.eval()(x)[0])
    assert type(loaded.blocks[0].mlp.fc.up.weight) is type(trained.blocks[0].mlp.fc.up.weight)
    assert loaded.head.weight is loaded.tok_emb.weight
    assert not loaded.training


def test_an_interrupted_write_is_never_loaded(trained, tmp_path: Path) -> None:
    _save(trained, tmp_path, sparse=False)
    (tmp_path / "s" / "final" / "COMPLETE").unlink()
    try:
        load_stage(tmp_path, "s")
    except FileNotFoundError as err:
        assert "COMPLETE" in str(err)
    else:
        raise AssertionError("an incomplete stage output loaded")
