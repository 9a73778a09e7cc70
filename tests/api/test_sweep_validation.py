"""Offline validation of LargeModelSweep manifests: the shared invalid-sweep table is rejected
naming each field (the server-side half is in tests/cluster/test_admission.py), the trial
specs a sweep makes are valid jobs, and the CLI says which kind it checked."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from lmjob_api.sweep import LargeModelSweep
from lmjob_api.sweep_checks import trial_spec, validate_manifest, validate_spec
from tests.support.invalid_jobs import SWEEP_TABLE, load_base, load_sweep_cases

CASES = load_sweep_cases(server=True) + load_sweep_cases(server=False)


def test_base_sweep_is_valid() -> None:
    sweep, problems = validate_manifest(load_base(SWEEP_TABLE))
    assert problems == []
    assert isinstance(sweep, LargeModelSweep)


@pytest.mark.parametrize(("case_id", "manifest", "field"), CASES, ids=[c[0] for c in CASES])
def test_invalid_sweep_names_field(case_id: str, manifest: dict, field: str) -> None:
    sweep, problems = validate_manifest(manifest)
    assert sweep is None, f"{case_id} was accepted"
    text = "\n".join(str(p) for p in problems)
    assert field in text, f"{case_id}: no problem names {field}:\n{text}"


@pytest.mark.parametrize(
    ("values", "path", "expected"),
    [
        ({"training.optimizer.lr": 0.003}, ("training", "optimizer", "lr"), 0.003),
        ({"compression.stages.0.sparsity": 0.7}, ("compression", "stages", 0, "sparsity"), 0.7),
        ({"training.earlyStopping.patience": 2}, ("training", "earlyStopping", "patience"), 2),
    ],
)
def test_trial_spec_sets_the_path_and_stays_a_valid_job(values, path, expected) -> None:
    sweep = LargeModelSweep.model_validate(load_base(SWEEP_TABLE))
    spec = trial_spec(sweep.spec.template, values)
    node = spec
    for part in path:
        node = node[part]
    assert node == expected
    assert validate_spec(spec) == []
    # The template itself is untouched.
    assert trial_spec(sweep.spec.template, {}) == sweep.spec.template.to_wire()


def test_cli_validates_a_sweep(tmp_path) -> None:
    good = tmp_path / "sweep.yaml"
    good.write_text(yaml.safe_dump(load_base(SWEEP_TABLE)))
    bad_id, bad, field = load_sweep_cases(server=False)[0]
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    run = [sys.executable, "-m", "lmjob_cli.main", "validate"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "LargeModelSweep table-sweep is valid" in ok.stdout
    out = subprocess.run([*run, str(bad_path)], capture_output=True, text=True, check=False)
    assert out.returncode == 1 and field in out.stdout, (bad_id, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
