"""Offline validation: every invalid manifest is rejected, naming its field; valid ones pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmjob_api.base import Rule
from lmjob_api.crd import build_schema
from lmjob_api.job import LargeModelJobSpec
from lmjob_api.validation import validate_job
from tests.support.invalid_jobs import load_base, load_cases

REPO = Path(__file__).resolve().parents[2]
CASES = load_cases()


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 20


def test_base_manifest_is_valid() -> None:
    job, problems = validate_job(load_base())
    assert problems == []
    assert job is not None


@pytest.mark.parametrize(("case_id", "manifest", "field"), CASES, ids=[c[0] for c in CASES])
def test_invalid_manifest_names_field(case_id: str, manifest: dict, field: str) -> None:
    job, problems = validate_job(manifest)
    assert job is None, f"{case_id} was accepted"
    text = "\n".join(str(p) for p in problems)
    assert field in text, f"{case_id}: no problem names {field}:\n{text}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
            "apiVersion: must be lmjob.dev/v1alpha1",
        ),
        (
            "apiVersion: lmjob.dev/v1alpha1\nkind: Job\nmetadata: {name: x}\nspec: {}\n",
            "kind: must be",
        ),
        ("spec: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_cli_reports_bad_documents(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    out = _cli("validate", str(path))
    assert out.returncode == 1
    assert expected in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_cli_accepts_examples_and_multi_document_files(tmp_path: Path) -> None:
    examples = sorted(str(p) for p in (REPO / "examples").glob("*.yaml"))
    assert examples
    out = _cli("validate", *examples)
    assert out.returncode == 0, out.stdout + out.stderr

    bad_manifest = next(m for i, m, _ in CASES if i == "min-above-replicas")
    multi = tmp_path / "multi.yaml"
    multi.write_text(yaml.safe_dump_all([load_base(), bad_manifest]))
    out = _cli("validate", str(multi))
    assert out.returncode == 1
    assert f"{multi}[0]: LargeModelJob table-job is valid" in out.stdout
    assert f"{multi}[1]: spec.workers.minReplicas:" in out.stdout


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmjob_cli.main", *args], capture_output=True, text=True, timeout=60
    )


# spec.managedBy: the values that must pass offline (the server's side of the same
# values is in tests/cluster/test_admission.py), and the transition rule's Python twin.
@pytest.mark.parametrize(
    "manager", ["lmjob.dev/operator", "kueue.x-k8s.io/multikueue", "example.com/a/b_c~d", "x/y"]
)
def test_managed_by_accepted(manager: str) -> None:
    manifest = load_base()
    manifest["spec"]["managedBy"] = manager
    job, problems = validate_job(manifest)
    assert problems == []
    assert job is not None and job.spec.managed_by == manager


def _immutability_rule() -> Rule:
    return next(r for r in LargeModelJobSpec.rules if r.transition)


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (None, None, True),
        ("kueue.x-k8s.io/multikueue", "kueue.x-k8s.io/multikueue", True),
        (None, "kueue.x-k8s.io/multikueue", False),
        ("kueue.x-k8s.io/multikueue", None, False),
        ("kueue.x-k8s.io/multikueue", "lmjob.dev/operator", False),
    ],
)
def test_managed_by_immutable(old: str | None, new: str | None, allowed: bool) -> None:
    rule = _immutability_rule()
    assert "oldSelf" in rule.cel and rule.field == "managedBy"
    assert (
        rule.check(LargeModelJobSpec(managed_by=new), LargeModelJobSpec(managed_by=old)) is allowed
    )


def test_transition_rule_reaches_the_crd_and_not_offline_checks() -> None:
    rules = build_schema()["properties"]["spec"]["x-kubernetes-validations"]
    assert {"rule": _immutability_rule().cel, "message": _immutability_rule().message,
            "fieldPath": ".managedBy"} in rules  # fmt: skip
    # Offline there is no stored object: a manifest that sets managedBy is simply valid.
    manifest = load_base()
    manifest["spec"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    assert validate_job(manifest)[1] == []
