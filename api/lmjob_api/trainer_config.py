"""The trainer's configuration file: the `training` and `compression` blocks of a job.

The operator renders it into the `<job>-config` ConfigMap; `lmjob run` writes it under
`./runs/<job>/`; `python -m lmjob_trainer --config FILE` reads it. Same models, same rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from lmjob_api.base import ApiModel
from lmjob_api.compression import CompressionSpec
from lmjob_api.export import EXPORT_FIT_RULES, ExportSpec
from lmjob_api.job import LargeModelJob
from lmjob_api.stage_fit import STAGE_FIT_RULES
from lmjob_api.training import TrainingSpec
from lmjob_api.validation import ManifestError, check_rules, problems_from_pydantic

CONFIG_FILE_NAME = "trainer.yaml"


class TrainerConfig(ApiModel):
    """Everything the built-in trainer needs, and nothing about Kubernetes."""

    job_name: str = Field("local", min_length=1, description="Job name: the `job` metric label.")
    training: TrainingSpec = Field(..., description="spec.training of the job.")
    compression: CompressionSpec = Field(
        default_factory=CompressionSpec, description="spec.compression of the job."
    )
    export: ExportSpec | None = Field(None, description="spec.export of the job.")

    rules = (*STAGE_FIT_RULES, *EXPORT_FIT_RULES)


def build_trainer_config(job: LargeModelJob) -> TrainerConfig:
    """The trainer config of a job that uses the built-in trainer."""
    if job.spec.training is None:
        raise ValueError(f"job {job.metadata.name} runs its own command; it has no trainer config")
    return TrainerConfig(
        job_name=job.metadata.name,
        training=job.spec.training,
        compression=job.spec.compression or CompressionSpec(),
        export=job.spec.export,
    )


def dump_trainer_config(config: TrainerConfig) -> str:
    """YAML text of a trainer config, as mounted into workers."""
    return yaml.safe_dump(config.to_wire(), sort_keys=False)


def parse_trainer_config(data: Any, source: str = "config") -> TrainerConfig:
    """Validate a loaded config mapping; raises ManifestError listing every problem."""
    from pydantic import ValidationError

    try:
        config = TrainerConfig.model_validate(data)
    except ValidationError as err:
        raise ManifestError(source, problems_from_pydantic(err)) from None
    problems = check_rules(config)
    if problems:
        raise ManifestError(source, problems)
    return config


def load_trainer_config(path: str | Path) -> TrainerConfig:
    """Read and validate a trainer config file."""
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ManifestError(str(path), [f"<root>: not valid YAML: {err}"]) from None
    return parse_trainer_config(data, str(path))
