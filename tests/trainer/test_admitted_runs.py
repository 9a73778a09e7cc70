"""Anything admitted runs: every manifest `lmjob validate` (and so the API server, which the
fuzz agreement test holds to the same verdict) admits passes the trainer's own start-up
checks at every world size its elastic range allows.

The manifests are hypothesis-built, as the agreement fuzz test draws them: built field by
field, and mutations of the examples and the table's base (those two are walked case by
case in test_elastic_batches.py). Machine facts are granted (one GPU per process, the data
on disk): only what a manifest alone decides is checked here, and that must all have been
decided at admission.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings

from lmjob_api.trainer_config import build_trainer_config, dump_trainer_config, parse_trainer_config
from lmjob_api.validation import validate_job
from lmjob_trainer.preflight import check_runnable
from tests.support.invalid_jobs import load_base
from tests.support.manifest_strategies import mutated_jobs, plausible_jobs

REPO = Path(__file__).resolve().parents[2]
SEEDS = [
    load_base(),
    *(
        doc
        for p in sorted((REPO / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(p.read_text())
        if doc and doc.get("kind") == "LargeModelJob"
    ),
]
FUZZ = settings(
    max_examples=int(os.environ.get("LMJOB_FUZZ_EXAMPLES", "200")),
    deadline=None,
    derandomize=os.environ.get("LMJOB_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _world_sizes(job: Any) -> list[int]:
    low, high = job.spec.workers.bounds
    procs = job.spec.workers.num_procs
    return [pods * procs for pods in range(low, high + 1)]


def runtime_problems(manifest: dict[str, Any]) -> list[str]:
    """The trainer's verdict on an admitted manifest at each world size it may run at."""
    job, problems = validate_job(manifest)
    assert job is not None, problems
    if job.spec.training is None:
        return []  # the user's own entrypoint: nothing of ours runs
    # The trainer reads the config as the operator mounts it: through its own parser.
    config = parse_trainer_config(
        yaml.safe_load(dump_trainer_config(build_trainer_config(job))), "trainer.yaml"
    )
    found = []
    for world in _world_sizes(job):
        found += [
            f"world size {world}: {p}"
            for p in check_runnable(config, world_size=world, cuda_devices=world)
        ]
    return found


def _admitted(manifest: dict[str, Any]) -> bool:
    return validate_job(manifest)[0] is not None


@FUZZ
@given(manifest=plausible_jobs().filter(_admitted))
def test_admitted_built_manifests_run(manifest: dict[str, Any]) -> None:
    assert runtime_problems(manifest) == [], yaml.safe_dump(manifest, sort_keys=False)


@FUZZ
@given(manifest=mutated_jobs(SEEDS).filter(_admitted))
def test_admitted_mutated_manifests_run(manifest: dict[str, Any]) -> None:
    assert runtime_problems(manifest) == [], yaml.safe_dump(manifest, sort_keys=False)
