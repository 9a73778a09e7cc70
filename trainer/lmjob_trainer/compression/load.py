"""Load any stage's output for inference, in one line:

    from lmjob_trainer.compression import load_stage
    model = load_stage("runs/gpt-shakespeare", "int8")       # eval mode, on CPU
    logits, _ = model(idx)                                    # or model.generate(idx, 200)

The module tree is rebuilt from the stage's `stage.json` (ModelSpec + pruned shapes +
low-rank ranks), then the saved weights are loaded into it; quantized weights come back as the
torchao tensors they were saved as, so the loaded model runs the quantized kernels.
`load_stage(dir, "train")` gives the trained model itself, from the newest complete training
checkpoint (DCP, any world size, no process group needed).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from lmjob_api.training import ModelSpec
from lmjob_trainer import storage
from lmjob_trainer.compression.artifact import Architecture, read_architecture, read_state
from lmjob_trainer.compression.lowrank import apply_ranks
from lmjob_trainer.compression.prune import apply_structure

FINAL = storage.FINAL
# Where a stage's output lives: one home in storage (torch-free, for the CLI's checks too).
stage_output_dir = storage.stage_output_dir


def build_architecture(arch: Architecture) -> nn.Module:
    """A freshly initialised model with the module tree `arch` describes (weights not loaded)."""
    from lmjob_trainer.model import build_model

    model = build_model(ModelSpec.model_validate(arch.model), arch.vocab_size)
    if arch.structure:
        apply_structure(model, arch.structure)
    if arch.ranks:
        apply_ranks(model, arch.ranks)
    if arch.quantization == "int4-weight-only":
        model.to(torch.bfloat16)
    return model


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a stage's state dict, keeping tied weights tied.

    Plain tensors are copied into the existing parameters. Quantized (tensor-subclass)
    weights cannot be copied into float ones, so they are assigned, and parameters that were
    shared before (the head tied to the token embedding) are shared again afterwards.
    """
    if all(type(t) is torch.Tensor for t in state.values()):
        model.load_state_dict(state)
        return
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    model.load_state_dict(state, assign=True)
    for name, source in aliases.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(source))


def load_stage_model(folder: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model saved in a stage output folder, on `device`, in train mode (for more stages)."""
    model = build_architecture(read_architecture(folder))
    load_state_into(model, read_state(folder))
    return model.to(device)


def load_trained_model(checkpoint_dir: str | Path) -> nn.Module:
    """The train stage's model from its newest complete checkpoint, as a plain CPU module.

    The ModelSpec comes from the checkpoint's meta.json (the config that wrote it), the
    vocabulary size from the saved embedding; only the model's tensors are read.
    """
    latest = storage.latest_complete(Path(checkpoint_dir), storage.TRAIN_STAGE)
    if latest is None:
        raise FileNotFoundError(f"{checkpoint_dir} has no complete training checkpoint")
    return load_checkpoint_model(latest[1])


def load_checkpoint_model(path: Path) -> nn.Module:
    """One complete training checkpoint folder (`train/step-…`) as a plain CPU model.

    The vocabulary size of lmjob's GPT is its saved embedding's; a Hugging Face model
    (`architecture: hf`) takes its own from its config.
    """
    import torch.distributed.checkpoint as dcp

    from lmjob_api.trainer_config import parse_trainer_config
    from lmjob_trainer.checkpoint import ModelState
    from lmjob_trainer.model import build_model

    meta = json.loads((path / storage.META).read_text())
    spec = parse_trainer_config(meta["config"]).training.model
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    embedding = saved.get("model.tok_emb.weight")
    model = build_model(spec, embedding.size[0] if embedding is not None else 0)
    with warnings.catch_warnings():
        # no_dist=True is the intent (no process group needed); torch warns about it anyway.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": ModelState(model)}, checkpoint_id=str(path), no_dist=True)
    return model


def load_stage(
    checkpoint_dir: str | Path, stage: str, device: torch.device | str = "cpu"
) -> nn.Module:
    """Stage `stage`'s output model from a job's checkpoint directory, ready for inference."""
    if stage == storage.TRAIN_STAGE:
        return load_trained_model(checkpoint_dir).to(device).eval()
    return load_stage_model(stage_output_dir(checkpoint_dir, stage), device).eval()
