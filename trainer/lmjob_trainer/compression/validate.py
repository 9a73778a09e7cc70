"""Checks of `compression.stages` that need more than the API models know: the hardware, the
data on disk and the order of the chain. Run before training starts, so a bad stage fails in
seconds instead of after hours of training.

Call `validate_compression(config)` (raises) or `check_compression(config)` (returns the
problems) from the trainer's entry point and from `lmjob run` before launching workers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lmjob_api.compression import DistillStage, LowRankStage, PruneStage, QuantizeStage
from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.validation import ManifestError, Problem

from lmjob_trainer.compression.distill import build_student_spec, check_student
from lmjob_trainer.compression.quantize import check_quantize_supported


def default_device() -> torch.device:
    """The device the workers of this machine will use (the trainer picks CUDA when present)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_compression(config: TrainerConfig, device: torch.device | None = None) -> list[Problem]:
    """Every problem with the compression chain, each with its field path and what to do."""
    device = device or default_device()
    problems: list[Problem] = []
    model = config.training.model
    stages = config.compression.stages
    if stages and model.architecture != "gpt":
        problems.append(
            Problem(
                "compression.stages",
                f"compression stages need training.model.architecture gpt (got {model.architecture})",
            )
        )
        return problems
    teacher = model
    quantized_by: str | None = None
    factorised_by: str | None = None
    needs_data = False
    for i, stage in enumerate(stages):
        where = f"compression.stages[{i}]"
        if quantized_by is not None and not isinstance(stage, DistillStage):
            problems.append(
                Problem(
                    f"{where}.type",
                    f"{stage.type} cannot follow quantize stage {quantized_by!r}: quantized weights "
                    "are not pruned, factorised or fine-tuned; move the quantize stage last",
                )
            )
        if isinstance(stage, QuantizeStage):
            try:
                check_quantize_supported(stage.method, device)
            except ValueError as err:
                problems.append(Problem(f"{where}.method", f"{err} (this machine: {device.type})"))
            if stage.finetune_steps:
                problems.append(
                    Problem(
                        f"{where}.finetuneSteps",
                        "a quantize stage does not fine-tune (no quantization-aware training): "
                        "set it to 0 or fine-tune in an earlier stage",
                    )
                )
            quantized_by = stage.name
        elif isinstance(stage, PruneStage):
            if stage.structure != "unstructured" and factorised_by is not None:
                problems.append(
                    Problem(
                        f"{where}.structure",
                        f"{stage.structure} pruning needs dense layers but lowrank stage "
                        f"{factorised_by!r} comes first: put the prune stage before it",
                    )
                )
            if stage.structure == "head" and teacher.heads == 1:
                problems.append(
                    Problem(f"{where}.structure", "head pruning needs more than one head per block")
                )
        elif isinstance(stage, LowRankStage):
            factorised_by = stage.name
            needs_data = needs_data or stage.method == "activation-aware"
        elif isinstance(stage, DistillStage):
            problems += check_student(teacher, stage, where)
            teacher = build_student_spec(teacher, stage)
            # A fresh dense student: later stages see plain layers again.
            quantized_by = factorised_by = None
            needs_data = True
        needs_data = needs_data or stage.finetune_steps > 0
    if needs_data:
        problem = _check_data(config)
        if problem:
            problems.append(problem)
    return problems


def _check_data(config: TrainerConfig) -> Problem | None:
    """Fine-tuning, distillation and calibration read the training data: it must be there."""
    source = Path(config.training.data.source)
    if source.is_dir():
        if not any(p.stat().st_size for p in source.glob("*.txt")):
            return Problem(
                "training.data.source",
                f"{source} holds no non-empty .txt files, but compression stages fine-tune, "
                "distill or calibrate on it",
            )
        return None
    if not source.is_file() or source.stat().st_size == 0:
        return Problem(
            "training.data.source",
            f"{source} is missing or empty, but compression stages fine-tune, distill or "
            "calibrate on it: point it at the training text",
        )
    return None


def validate_compression(config: TrainerConfig, device: torch.device | None = None) -> None:
    """Raise ManifestError naming every bad compression field; silent when all is well."""
    problems = check_compression(config, device)
    if problems:
        raise ManifestError("compression", problems)
