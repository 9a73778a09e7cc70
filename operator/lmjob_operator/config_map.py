"""The `<job>-config` ConfigMap: the rendered trainer config, mounted read-only into every worker."""

from __future__ import annotations

from typing import Any

from lmjob_api import LargeModelJob
from lmjob_api.trainer_config import CONFIG_FILE_NAME, build_trainer_config, dump_trainer_config
from lmjob_operator.naming import ROLE_WORKER, config_map_name, owned_metadata


def needs_config_map(job: LargeModelJob) -> bool:
    """Jobs running their own `command` have no trainer config."""
    return job.spec.training is not None


def build_config_map(job: LargeModelJob) -> dict[str, Any]:
    """ConfigMap holding `trainer.yaml` (spec.training + spec.compression)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(job, config_map_name(job.metadata.name), ROLE_WORKER),
        "data": {CONFIG_FILE_NAME: dump_trainer_config(build_trainer_config(job))},
    }
