"""Checks that need the runtime (world size, devices, vocabulary), not just the manifest.

The API rules catch what a manifest alone shows; these catch what only the machine does.
`lmjob run` runs them before starting any process, the trainer again at start-up (world
sizes change under elastic resizes). Each problem names the field and what to do.
"""

from __future__ import annotations

from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.training import BatchSpec
from lmjob_api.validation import Problem
from lmjob_trainer.compression.validate import check_compression

BYTE_VOCAB = 256


def _batch_problem(batch: BatchSpec, dp_size: int) -> str | None:
    micro = batch.micro_batch_size
    global_batch = batch.global_batch_size or micro * dp_size
    if global_batch % (micro * dp_size):
        return (
            f"{global_batch} must be a multiple of microBatchSize × data-parallel size "
            f"({micro} × {dp_size}) at the current world size: pick a globalBatchSize that "
            "every allowed world size divides"
        )
    return None


def batch_plan(batch: BatchSpec, dp_size: int) -> tuple[int, int]:
    """(global batch, accumulation steps) at this data-parallel size.

    Accumulation is derived from the *current* data-parallel size, so an elastic resize
    keeps the global batch (and so the optimisation) the same with more or fewer processes.
    """
    problem = _batch_problem(batch, dp_size)
    if problem:
        raise ValueError(f"training.batch.globalBatchSize: {problem}")
    global_batch = batch.global_batch_size or batch.micro_batch_size * dp_size
    return global_batch, global_batch // (batch.micro_batch_size * dp_size)


def check_runnable(
    config: TrainerConfig, *, world_size: int, cuda_devices: int, prefix: str = ""
) -> list[Problem]:
    """Problems that stop `config` from running on `world_size` processes on this machine."""
    t = config.training
    par = t.parallelism
    problems: list[Problem] = []

    def add(field: str, message: str) -> None:
        problems.append(Problem(prefix + field, message))

    tp = par.tensor_parallel if par.strategy == "fsdp+tp" else 1
    if par.strategy == "fsdp+tp":
        if t.model.architecture != "gpt":
            add(
                "training.parallelism.strategy",
                "fsdp+tp supports model.architecture gpt only: use fsdp for a Hugging Face model",
            )
        if world_size < tp or world_size % tp:
            add(
                "training.parallelism.tensorParallel",
                f"{tp} must divide the number of processes ({world_size}); on CPU run at least "
                f"{tp} processes (workers.replicas × workers.procsPerWorker)",
            )
        if t.data.tokenizer == "bytes" and BYTE_VOCAB % tp:
            add(
                "training.parallelism.tensorParallel",
                f"{tp} must divide the vocabulary size ({BYTE_VOCAB}): use a power of two",
            )
        if t.model.architecture == "gpt" and t.model.heads % tp:
            add(
                "training.parallelism.tensorParallel",
                f"{tp} must divide training.model.heads ({t.model.heads})",
            )
    if world_size % tp == 0 and (problem := _batch_problem(t.batch, world_size // tp)):
        add("training.batch.globalBatchSize", problem)
    if cuda_devices and world_size > cuda_devices and prefix:
        # Only for `lmjob run` (prefix set): one machine, one GPU per process.
        add(
            "workers.procsPerWorker",
            f"{world_size} processes need {world_size} GPUs but this machine has {cuda_devices}",
        )
    # The compression chain: hardware, data on disk, stage order, student sizes.
    problems += check_compression(config, cuda_devices=cuda_devices, prefix=prefix)
    return problems
