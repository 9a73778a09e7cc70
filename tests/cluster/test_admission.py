"""The API server itself enforces the CRD: schema, CEL rules, defaults, subresources, columns.

Every case of the shared invalid-manifest table is sent to the real kube-apiserver
(server-side dry run, strict field validation); it must be rejected naming the same
field as `lmjob validate`, so the two validators agree case by case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmjob_api.job import LargeModelJob
from lmjob_api.sweep_checks import validate_manifest
from lmjob_api.validation import ManifestError, load_job
from tests.support.invalid_jobs import SWEEP_TABLE, load_base, load_cases, load_sweep_cases

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CASES = load_cases()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_accepted_by_server(kubectl, path: Path) -> None:
    out = kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", "default", "-f", str(path)
    )
    assert "(server dry run)" in out.stdout


def test_table_base_accepted_by_server(kubectl) -> None:
    kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-",
            input=yaml.safe_dump(load_base()))  # fmt: skip


@pytest.mark.parametrize(
    ("case_id", "manifest", "field"),
    CASES + load_sweep_cases(server=True),
    ids=[c[0] for c in CASES + load_sweep_cases(server=True)],
)
def test_invalid_manifest_rejected_by_server(
    kubectl, case_id: str, manifest: dict, field: str
) -> None:
    out = kubectl(
        "create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-",
        input=yaml.safe_dump(manifest), check=False,
    )  # fmt: skip
    assert out.returncode != 0, f"{case_id}: the API server accepted it"
    assert field in out.stderr, f"{case_id}: server error does not name {field}:\n{out.stderr}"
    _, problems = validate_manifest(manifest)
    assert problems, f"{case_id}: the server rejects it but lmjob validate accepts it"


SWEEP_OFFLINE_CASES = load_sweep_cases(server=False)


def test_sweep_table_base_accepted_by_server(kubectl) -> None:
    kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-",
            input=yaml.safe_dump(load_base(SWEEP_TABLE)))  # fmt: skip


@pytest.mark.parametrize(
    ("case_id", "manifest", "field"), SWEEP_OFFLINE_CASES, ids=[c[0] for c in SWEEP_OFFLINE_CASES]
)
def test_sweep_checks_the_server_cannot_make(
    kubectl, case_id: str, manifest: dict, field: str
) -> None:
    """What CEL cannot decide (a value applied to the template, a grid's size) is admitted;
    lmjob validate rejects it and the operator fails the sweep with the same problem."""
    kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default", "-f", "-",
            input=yaml.safe_dump(manifest))  # fmt: skip
    _, problems = validate_manifest(manifest)
    assert any(field in str(p) for p in problems), (case_id, problems)


@pytest.fixture
def job(kubectl, namespace: str) -> Iterator[dict[str, Any]]:
    manifest = load_base()
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    yield manifest


def _get(kubectl, namespace: str, name: str = "table-job") -> dict[str, Any]:
    return json.loads(kubectl("get", "lmj", name, "-n", namespace, "-o", "json").stdout)


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict | list):
        out: dict[str, Any] = {}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            out.update(_leaves(child, f"{path}.{key}"))
        return out
    return {path: value}


def test_server_defaults_match_the_models(kubectl, namespace: str, job: dict) -> None:
    stored = _get(kubectl, namespace)["spec"]
    assert stored["training"]["parallelism"]["strategy"] == "ddp"
    assert stored["training"]["checkpoint"]["everySteps"] == 200
    assert stored["runPolicy"]["restartPolicy"] == "OnFailure"
    python = LargeModelJob.model_validate(job).spec.to_wire()
    python_leaves = _leaves(python)
    for path, value in _leaves(stored).items():
        if value in ({}, []):
            continue
        assert python_leaves.get(path) == value, (
            f"{path}: server {value!r}, models {python_leaves.get(path)!r}"
        )


def test_explain_shows_field_descriptions(kubectl) -> None:
    out = kubectl("explain", "largemodeljob.spec.workers")
    assert "Fewest pods the job keeps running with" in out.stdout
    assert "procsPerWorker" in out.stdout


def test_status_subresource_and_printer_columns(kubectl, namespace: str, job: dict) -> None:
    status = {
        "phase": "Running",
        "workers": {"desired": 2, "active": 2, "ready": 2, "summary": "2/2"},
        "progress": {"stage": "train", "step": 42, "totalSteps": 100, "loss": 1.25},
    }
    # Status sent to the main resource is ignored ...
    kubectl(
        "patch",
        "lmj",
        "table-job",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    assert "status" not in _get(kubectl, namespace) or not _get(kubectl, namespace)["status"].get(
        "phase"
    )
    # ... and goes through the status subresource, which ignores spec changes.
    patch = {"status": status, "spec": {"workers": {"replicas": 3}}}
    kubectl("patch", "lmj", "table-job", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch))  # fmt: skip
    stored = _get(kubectl, namespace)
    assert stored["status"]["phase"] == "Running"
    assert stored["spec"]["workers"]["replicas"] == 2

    table = kubectl("get", "lmj", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "WORKERS", "STAGE", "STEP", "LOSS", "AGE"]
    assert table[1].split()[:6] == ["table-job", "Running", "2/2", "train", "42", "1.25"]
    assert "table-job" in kubectl("get", "all", "-n", namespace).stdout


def test_scale_subresource_respects_bounds(kubectl, namespace: str, job: dict) -> None:
    kubectl("scale", "lmj/table-job", "-n", namespace, "--replicas=4")
    assert _get(kubectl, namespace)["spec"]["workers"]["replicas"] == 4
    scale = json.loads(
        kubectl(
            "get",
            "--raw",
            f"/apis/lmjob.dev/v1alpha1/namespaces/{namespace}/largemodeljobs/table-job/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 4

    out = kubectl("scale", "lmj/table-job", "-n", namespace, "--replicas=9", check=False)
    assert out.returncode != 0
    assert "workers.maxReplicas" in out.stderr
    assert _get(kubectl, namespace)["spec"]["workers"]["replicas"] == 4


def test_invalid_update_keeps_the_saved_object(kubectl, namespace: str, job: dict) -> None:
    patch = {"spec": {"workers": {"minReplicas": 3, "replicas": 2}}}
    out = kubectl(
        "patch",
        "lmj",
        "table-job",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(patch),
        check=False,
    )
    assert out.returncode != 0
    assert "spec.workers.minReplicas" in out.stderr
    assert _get(kubectl, namespace)["spec"]["workers"]["minReplicas"] == 1


# (field path, the value as written in YAML): numbers and booleans spelled the ways
# YAML 1.1 allows. kubectl (Go's yaml.v2) and `lmjob validate` must type each one alike.
SPELLINGS = [
    ("spec.training.optimizer.lr", "3e-4"),
    ("spec.training.optimizer.lr", "3.0E-4"),
    ("spec.training.optimizer.lr", ".5e-3"),
    ("spec.training.steps", "1e2"),
    ("spec.training.steps", "200.0"),
    ("spec.training.steps", "150.5"),
    ("spec.training.steps", "0o310"),
    ("spec.training.steps", "0x64"),
    ("spec.training.steps", "1_000"),
    ("spec.training.steps", "'200'"),
    ("spec.training.seed", "-0x10"),
    ("spec.training.checkpoint.async", "yes"),
    ("spec.training.checkpoint.async", "off"),
    ("spec.training.checkpoint.async", "'true'"),
    ("spec.workers.replicas", "2.0"),
    ("spec.workers.replicas", "true"),
    ("spec.training.optimizer.lr", ".inf"),
]


def _manifest_text(path: str, spelling: str) -> str:
    manifest = load_base()
    parent = manifest
    *head, last = path.split(".")
    for part in head:
        parent = parent.setdefault(part, {})
    parent[last] = "@@VALUE@@"
    return yaml.safe_dump(manifest, sort_keys=False).replace("'@@VALUE@@'", spelling)


@pytest.mark.parametrize(("path", "spelling"), SPELLINGS, ids=[f"{p}={s}" for p, s in SPELLINGS])
def test_yaml_spellings_typed_as_kubectl_types_them(
    kubectl, tmp_path: Path, path: str, spelling: str
) -> None:
    """A file kubectl admits, lmjob validate admits, with the same value; and the reverse."""
    text = _manifest_text(path, spelling)
    file = tmp_path / "job.yaml"
    file.write_text(text)
    out = kubectl(
        "create", "--dry-run=server", "--validate=strict", "-n", "default", "-o", "json",
        "-f", str(file), check=False,
    )  # fmt: skip
    try:
        ours = load_job(file)
    except ManifestError as err:
        assert out.returncode != 0, f"{spelling}: kubectl admits it, lmjob validate says {err}"
        return
    assert out.returncode == 0, f"{spelling}: lmjob validate admits it, kubectl: {out.stderr}"
    server = json.loads(out.stdout)["spec"]
    ours_wire = ours.spec.to_wire()
    for part in path.split(".")[1:]:
        server, ours_wire = server[part], ours_wire[part]
    assert server == ours_wire, f"{spelling}: server {server!r}, lmjob {ours_wire!r}"


# spec.managedBy is immutable (a CEL transition rule): (value at creation, patch, accepted).
# The accepted rows are the control: the rule refuses changes, not updates as such.
MANAGED_BY_UPDATES = [
    ("none-other-field", None, {"spec": {"workers": {"replicas": 3}}}, True),
    ("set-other-field", "kueue.x-k8s.io/multikueue", {"spec": {"workers": {"replicas": 3}}}, True),
    ("set-same", "kueue.x-k8s.io/multikueue", {"spec": {"managedBy": "kueue.x-k8s.io/multikueue"}}, True),
    ("add", None, {"spec": {"managedBy": "kueue.x-k8s.io/multikueue"}}, False),
    ("change", "kueue.x-k8s.io/multikueue", {"spec": {"managedBy": "lmjob.dev/operator"}}, False),
    ("remove", "kueue.x-k8s.io/multikueue", {"spec": {"managedBy": None}}, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case_id", "initial", "patch", "accepted"),
    MANAGED_BY_UPDATES,
    ids=[c[0] for c in MANAGED_BY_UPDATES],
)
def test_managed_by_is_immutable(
    kubectl, namespace: str, case_id: str, initial: str | None, patch: dict, accepted: bool
) -> None:
    manifest = load_base()
    if initial is not None:
        manifest["spec"]["managedBy"] = initial
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    out = kubectl("patch", "lmj", "table-job", "-n", namespace, "--type=merge",
                  "-p", json.dumps(patch), check=False)  # fmt: skip
    assert (out.returncode == 0) is accepted, f"{case_id}:\n{out.stderr}"
    saved = _get(kubectl, namespace)["spec"].get("managedBy")
    if accepted:
        assert saved == (patch["spec"].get("managedBy") or initial)
    else:
        assert "spec.managedBy" in out.stderr and "immutable" in out.stderr, out.stderr
        assert saved == initial
