"""Which model an export reads: a job's storage root, a stage folder, a stage's `final/`
output or one training checkpoint (`train/step-…`), loaded as lmjob itself loads it.

The layout is storage.py's (docs/contracts.md). A run folder exports its training result
unless `--stage` names a compression stage; a stage's own fine-tuning checkpoints are not
exported (their `final/` output is the stage's result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lmjob_trainer import storage
from lmjob_trainer.compression.artifact import MANIFEST_FILE, Architecture
from lmjob_trainer.export.result import ExportError

FINAL = storage.FINAL


@dataclass
class ExportSource:
    """A loaded model and what is known about where it came from."""

    model: nn.Module
    """As lmjob runs it: eval mode, CPU, compressed modules and quantized tensors included."""
    stage: str
    path: Path
    """The checkpoint or stage-output folder the weights came from."""
    tokenizer: str | None
    """`training.data.tokenizer` of the job (`bytes` or a local HF tokenizer path); None
    when no training checkpoint of the job says."""
    arch: Architecture | None = None
    """A compression stage's structural edits; None for a training checkpoint."""


def resolve(path: Path, stage: str | None) -> tuple[str, Path]:
    """(stage, folder to load) for what the user pointed at; ExportError when it is not a
    complete checkpoint."""
    if not path.exists():
        raise ExportError(f"{path}: no such file or directory")
    is_root = (path / storage.TRAIN_STAGE).is_dir()
    if stage is not None and not is_root:
        raise ExportError(
            f"--stage {stage}: only for a run folder (one holding train/); {path} is not one"
        )
    if (path / MANIFEST_FILE).exists() or path.name == FINAL:
        return _check_complete(path.parent.name, path)
    if storage.step_of(path) is not None:
        return _check_complete(path.parent.name, path)
    if (path / FINAL).is_dir():
        return _check_complete(path.name, path / FINAL)
    if storage.list_checkpoints(path.parent, path.name):
        return _latest(path.parent, path.name)
    # A job's storage root: the named stage, training by default.
    stage = stage or storage.TRAIN_STAGE
    if stage != storage.TRAIN_STAGE:
        folder = storage.stage_output_dir(path, stage)
        if not folder.is_dir():
            raise ExportError(
                f"{path}: stage {stage} has no output ({folder} does not exist): "
                "name a stage that finished"
            )
        return _check_complete(stage, folder)
    return _latest(path, stage)


def _latest(root: Path, stage: str) -> tuple[str, Path]:
    found = storage.list_checkpoints(root, stage)
    if not found:
        raise ExportError(
            f"{root}: no checkpoint of stage {stage}: point at a run folder (./runs/<job>/), "
            "a stage's final/ folder or a train/step-… checkpoint"
        )
    latest = storage.latest_complete(root, stage)
    if latest is None:
        raise ExportError(
            f"{root}/{stage}: no complete checkpoint (none has its {storage.COMPLETE} marker): "
            "the run was interrupted before its first checkpoint finished"
        )
    return stage, latest[1]


def _check_complete(stage: str, folder: Path) -> tuple[str, Path]:
    if not storage.is_complete(folder):
        raise ExportError(
            f"{folder}: not a complete checkpoint (no {storage.COMPLETE} marker): it was "
            "interrupted while being written; export an earlier one or rerun the stage"
        )
    return stage, folder


def load_source(path: Path, stage: str | None = None) -> ExportSource:
    """The model `path` (and `stage`) name, loaded for inference."""
    stage, folder = resolve(path, stage)
    if storage.step_of(folder) is not None:
        meta = json.loads((folder / storage.META).read_text())
        if meta.get("stage", storage.TRAIN_STAGE) != storage.TRAIN_STAGE:
            raise ExportError(
                f"{folder}: a fine-tuning checkpoint of stage {meta['stage']}: export the "
                f"stage's output ({folder.parent / FINAL}) instead"
            )
        model = _load_train_checkpoint(folder)
        tokenizer = meta["config"]["training"].get("data", {}).get("tokenizer", "bytes")
        return ExportSource(model.eval(), stage, folder, tokenizer)
    from lmjob_trainer.compression.artifact import read_architecture
    from lmjob_trainer.compression.load import load_stage_model

    arch = read_architecture(folder)
    model = load_stage_model(folder).eval()
    return ExportSource(model, stage, folder, _job_tokenizer(folder.parent.parent), arch)


def _load_train_checkpoint(folder: Path) -> nn.Module:
    from lmjob_trainer.compression.load import load_checkpoint_model

    try:
        return load_checkpoint_model(folder)
    except ValueError as err:  # e.g. an hf model whose training.model.path is gone
        raise ExportError(f"{folder}: {err}") from None


def _job_tokenizer(root: Path) -> str | None:
    """The job's tokenizer, from the config its newest training checkpoint recorded."""
    latest = storage.latest_complete(root, storage.TRAIN_STAGE)
    if latest is None:
        return None
    meta = json.loads((latest[1] / storage.META).read_text())
    return meta.get("config", {}).get("training", {}).get("data", {}).get("tokenizer", "bytes")
