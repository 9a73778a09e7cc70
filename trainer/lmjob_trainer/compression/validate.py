"""Checks of `compression.stages` that need more than the API models know: the hardware, the
data on disk and the order of the chain. Run before training starts, so a bad stage fails in
seconds instead of after hours of training.

Call `check_compression(config, cuda_devices=N)` (returns the problems, beside
`preflight.check_runnable`) or `validate_compression` (raises) before launching workers.
Imports no torch, so `lmjob run` can check a manifest in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from lmjob_api.compression import DistillStage, LowRankStage, PruneStage, QuantizeStage
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


def build_student_spec(teacher: ModelSpec, stage: DistillStage) -> ModelSpec:
    """The student's ModelSpec: the teacher's, with the stage's `student` fields applied."""
    overrides = {k: v for k, v in stage.student.model_dump().items() if v is not None}
    return teacher.model_copy(update=overrides)


def check_student(teacher: ModelSpec, stage: DistillStage, where: str) -> list[Problem]:
    """Problems with a stage's student against its teacher (the previous stage's model)."""
    if teacher.architecture != "gpt":
        return [Problem(where, f"distill needs a gpt teacher (got {teacher.architecture})")]
    problems = []
    student = build_student_spec(teacher, stage)
    for name in ("layers", "heads", "hidden"):
        s, t = getattr(student, name), getattr(teacher, name)
        if s > t:
            problems.append(
                Problem(
                    f"{where}.student.{name}",
                    f"{s} is larger than the teacher's {t}: a student must not be larger than "
                    "its teacher",
                )
            )
    if student.hidden % student.heads:
        problems.append(
            Problem(
                f"{where}.student.hidden",
                f"{student.hidden} is not a multiple of the student's heads ({student.heads}): "
                "set student.heads to a divisor of it",
            )
        )
    if (student.layers, student.heads, student.hidden) == (
        teacher.layers,
        teacher.heads,
        teacher.hidden,
    ):
        problems.append(
            Problem(
                f"{where}.student", "same shape as the teacher: make at least one field smaller"
            )
        )
    return problems


def check_compression(
    config: TrainerConfig, *, cuda_devices: int, prefix: str = ""
) -> list[Problem]:
    """Every problem with the compression chain, each with its field path and what to do.

    `cuda_devices`: GPUs the workers will have (0 on CPU); `prefix`: prepended to field
    paths (`spec.` when checking a whole manifest).
    """
    problems = _check_chain(config, cuda_devices > 0)
    return [Problem(prefix + p.path, p.message) for p in problems]


def _check_chain(config: TrainerConfig, cuda: bool) -> list[Problem]:
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
            if problem := quantize_problem(stage.method, cuda):
                problems.append(Problem(f"{where}.method", problem))
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
            if stage.finetune_steps:
                problems.append(
                    Problem(
                        f"{where}.finetuneSteps",
                        "a distill stage trains its student for `steps`; finetuneSteps is not "
                        "used there: set it to 0",
                    )
                )
            problems += check_student(teacher, stage, where)
            teacher = build_student_spec(teacher, stage)
            tp = config.training.parallelism
            if tp.strategy == "fsdp+tp" and teacher.heads % tp.tensor_parallel:
                problems.append(
                    Problem(
                        f"{where}.student.heads",
                        f"{teacher.heads} is not divisible by training.parallelism.tensorParallel "
                        f"({tp.tensor_parallel}): the student trains with the same parallelism",
                    )
                )
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
