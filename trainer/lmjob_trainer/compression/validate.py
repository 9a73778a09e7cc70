"""Checks of `compression.stages` that depend on the machine, not the manifest: the hardware
(int4 needs CUDA) and the data on disk (stages that train need text). Every rule about the
chain itself (order, fields, student shapes) is a rule of the API models (lmjob_api.compression,
lmjob_api.stage_fit), enforced at admission and by `lmjob validate` alike.

Call `check_compression(config, cuda_devices=N)` (returns the problems, beside
`preflight.check_runnable`) or `validate_compression` (raises) before launching workers.
Imports no torch, so `lmjob run` can check a manifest in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from lmjob_api.compression import DistillStage, LowRankStage, QuantizeStage
from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.training import ModelSpec
from lmjob_api.validation import ManifestError, Problem


def quantize_problem(method: str, cuda: bool) -> str | None:
    """Why `method` cannot run here, or None: int4 weight-only has only a CUDA kernel."""
    if method == "int4-weight-only" and not cuda:
        return (
            "int4-weight-only needs a CUDA GPU (torchao's int4 kernel has no CPU path): run "
            "the job on GPU workers or use int8-weight-only or int8-dynamic"
        )
    return None


def build_student_spec(
    teacher: ModelSpec, stage: DistillStage, *, tensor_parallel: int = 1
) -> ModelSpec:
    """The student's ModelSpec (the API's one derivation of it)."""
    return stage.build_student(teacher, tensor_parallel=tensor_parallel)


def check_compression(
    config: TrainerConfig, *, cuda_devices: int, prefix: str = ""
) -> list[Problem]:
    """Problems with the compression chain on this machine, each with its field path.

    `cuda_devices`: GPUs the workers will have (0 on CPU); `prefix`: prepended to field
    paths (`spec.` when checking a whole manifest).
    """
    problems: list[Problem] = []
    needs_data = False
    for i, stage in enumerate(config.compression.stages):
        if isinstance(stage, QuantizeStage) and (
            problem := quantize_problem(stage.method, cuda_devices > 0)
        ):
            problems.append(Problem(f"compression.stages[{i}].method", problem))
        needs_data = needs_data or (
            stage.finetune_steps > 0
            or isinstance(stage, DistillStage)
            or (isinstance(stage, LowRankStage) and stage.method == "activation-aware")
        )
    if needs_data and (problem := _check_data(config)):
        problems.append(problem)
    return [Problem(prefix + p.path, p.message) for p in problems]


def _check_data(config: TrainerConfig) -> Problem | None:
    """Fine-tuning, distillation and calibration read the training text: it must hold some.
    A missing source is left to the trainer's own data check, which names it already."""
    source = Path(config.training.data.source)
    if source.is_dir():
        files = [p for p in source.rglob("*.txt") if p.is_file()]
        empty = bool(files) and not any(p.stat().st_size for p in files)
    else:
        empty = source.is_file() and source.stat().st_size == 0
    if empty:
        return Problem(
            "training.data.source",
            f"{source} holds no text, but compression stages fine-tune, distill or calibrate "
            "on it: point it at the training text",
        )
    return None


def validate_compression(config: TrainerConfig, *, cuda_devices: int) -> None:
    """Raise ManifestError naming every bad compression field; silent when all is well."""
    problems = check_compression(config, cuda_devices=cuda_devices)
    if problems:
        raise ManifestError("compression", problems)
