"""The on-disk format of a stage's output (`<dir>/<stage>/final/`), written once by rank 0.

    model.pt     the state dict (torch.save; loads with weights_only=True, torchao tensors too)
    stage.json   how to rebuild the module tree before loading it: ModelSpec, vocab size and
                 the structural edits of every stage so far (pruned shapes, low-rank ranks,
                 quantization), plus which tensors are stored sparse
    COMPLETE     written last: a folder without it is an interrupted write, never loaded

Unstructured-pruned weights are stored as a packed keep-bitmask plus the kept values when
that is smaller than the dense tensor, so `bytes on disk` shrinks only because the file does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmjob_trainer import storage

MODEL_FILE = "model.pt"
MANIFEST_FILE = "stage.json"
FORMAT_VERSION = 1
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@dataclass
class Architecture:
    """Everything needed to rebuild a stage output's module tree."""

    model: dict[str, Any]
    """The ModelSpec (wire form) of the network the stage produced."""
    vocab_size: int
    structure: dict[str, int] = field(default_factory=dict)
    """Structured pruning: `blocks.i.mlp` → kept channels, `blocks.i.attn` → kept heads."""
    ranks: dict[str, int] = field(default_factory=dict)
    """Low-rank layers: name → rank."""
    quantization: str | None = None
    """torchao method applied last, if any."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "vocabSize": self.vocab_size,
            "structure": self.structure,
            "ranks": self.ranks,
            "quantization": self.quantization,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Architecture:
        return cls(
            model=data["model"],
            vocab_size=data["vocabSize"],
            structure=data.get("structure") or {},
            ranks=data.get("ranks") or {},
            quantization=data.get("quantization"),
        )


def pack_sparse(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(bitmask, values) of a tensor when that is smaller than storing it dense, else None."""
    flat = t.detach().flatten().cpu()
    keep = flat != 0
    packed_bytes = (flat.numel() + 7) // 8 + int(keep.sum()) * flat.element_size()
    if packed_bytes >= flat.numel() * flat.element_size():
        return None
    padded = torch.zeros((flat.numel() + 7) // 8 * 8, dtype=torch.uint8)
    padded[: flat.numel()] = keep.to(torch.uint8)
    bitmask = (padded.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)
    return bitmask, flat[keep].clone()


def unpack_sparse(bitmask: torch.Tensor, values: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The dense tensor `pack_sparse` encoded."""
    numel = 1
    for d in shape:
        numel *= d
    keep = ((bitmask.unsqueeze(1) & _BITS) != 0).flatten()[:numel]
    out = torch.zeros(numel, dtype=values.dtype)
    out[keep] = values
    return out.view(shape)


def write_output(
    folder: Path,
    state: dict[str, torch.Tensor],
    arch: Architecture,
    sparse: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a stage output atomically: into `folder.tmp`, then renamed, COMPLETE last."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sparse_shapes: dict[str, list[int]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        packed = pack_sparse(tensor) if sparse and type(tensor) is torch.Tensor else None
        if packed is None:
            out[name] = tensor.detach().cpu() if type(tensor) is torch.Tensor else tensor
        else:
            out[name + "::bitmask"], out[name + "::values"] = packed
            sparse_shapes[name] = list(tensor.shape)
    torch.save(out, tmp / MODEL_FILE)
    manifest = {
        "format": FORMAT_VERSION,
        "architecture": arch.to_json(),
        "sparse": sparse_shapes,
        **(extra or {}),
    }
    storage.write_json_atomic(tmp / MANIFEST_FILE, manifest)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    storage.write_json_atomic(folder / storage.COMPLETE, {"stage": manifest.get("stage")})


def read_manifest(folder: Path) -> dict[str, Any]:
    if not storage.is_complete(folder):
        raise FileNotFoundError(
            f"{folder} is not a complete stage output (no {storage.COMPLETE} marker)"
        )
    return json.loads((folder / MANIFEST_FILE).read_text())


def read_architecture(folder: Path) -> Architecture:
    return Architecture.from_json(read_manifest(folder)["architecture"])


def read_state(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict of a stage output, sparse tensors expanded back to dense."""
    manifest = read_manifest(folder)
    if manifest["architecture"].get("quantization"):
        # torchao registers its tensor types as safe for torch.load(weights_only=True) on import.
        import torchao.quantization  # noqa: F401
    raw = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    state = {k: v for k, v in raw.items() if "::" not in k}
    for name, shape in manifest["sparse"].items():
        state[name] = unpack_sparse(raw[name + "::bitmask"], raw[name + "::values"], shape)
    return {k: v.to(map_location) for k, v in state.items()}


def folder_bytes(folder: Path) -> int:
    """Bytes on disk of every file in a folder (the `bytes` of a stage report)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
