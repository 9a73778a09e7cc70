"""Checks that need the runtime (world size, devices, vocabulary), not just the manifest.

The API rules catch what a manifest alone shows; these catch what only the machine does.
`lmjob run` runs them before starting any process, the trainer again at start-up (world
sizes change under elastic resizes). Each problem names the field and what to do.
"""

from __future__ import annotations

from pathlib import Path

from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.validation import Problem
from lmjob_trainer.compression.validate import check_compression
from lmjob_trainer.export.result import missing_modules

BYTE_VOCAB = 256


def source_files(source: str) -> list[Path]:
    """The text files of `training.data.source`: the file itself, or a folder's *.txt,
    sorted. Raises ValueError naming the field when there are none. No torch: the
    launcher, `lmjob run` and the data loader all ask here."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if files:
            return files
        raise ValueError(f"training.data.source: folder {source} holds no .txt files")
    raise ValueError(f"training.data.source: {source} does not exist (a text file or a folder)")


def check_data_source(config: TrainerConfig, prefix: str = "") -> list[Problem]:
    """The data source's problem (missing, or a folder without text), if any."""
    try:
        source_files(config.training.data.source)
    except ValueError as err:
        field, message = str(err).split(": ", 1)
        return [Problem(prefix + field, message)]
    return []


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
    if cuda_devices and world_size > cuda_devices and prefix:
        # Only for `lmjob run` (prefix set): one machine, one GPU per process.
        add(
            "workers.procsPerWorker",
            f"{world_size} processes need {world_size} GPUs but this machine has {cuda_devices}",
        )
    # The compression chain: hardware, data on disk, stage order, student sizes.
    problems += check_compression(config, cuda_devices=cuda_devices, prefix=prefix)
    problems += check_export_runtimes(config, prefix=prefix)
    return problems


def check_export_runtimes(config: TrainerConfig, prefix: str = "") -> list[Problem]:
    """spec.export's formats need their libraries here, found at start rather than after
    hours of training (the trainer images have them; `pip install 'lmjob[export]'`)."""
    if config.export is None:
        return []
    problems = []
    for index, fmt in enumerate(config.export.formats):
        if missing := missing_modules(fmt):
            problems.append(
                Problem(
                    f"{prefix}export.formats[{index}]",
                    f"{fmt} needs {', '.join(missing)}, not installed here: "
                    "pip install 'lmjob[export]' (the lmjob trainer images have it)",
                )
            )
    return problems
