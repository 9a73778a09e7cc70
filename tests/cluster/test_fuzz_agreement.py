"""`lmjob validate` and the real API server agree on every manifest, valid or not.

Hypothesis builds manifests field by field around every rule's boundary, and mutates valid
ones (wrong types, out-of-range values, removed and unknown fields); each goes to the
offline validator and to the API server (server-side dry run, strict field validation).
Their verdicts must match, and neither may crash: the validator raises nothing, the server
answers 201 or 4xx, never 5xx. LMJOB_FUZZ_EXAMPLES raises the count (CI runs the default);
LMJOB_FUZZ_RANDOM=1 draws fresh cases instead of CI's fixed sequence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.rest import ApiException

from lmjob_api.job import GROUP, PLURAL, VERSION
from lmjob_api.validation import as_json, validate_job
from tests.support.invalid_jobs import load_base
from tests.support.manifest_strategies import mutated_jobs, plausible_jobs

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [
    doc
    for p in sorted((REPO / "examples").glob("*.yaml"))
    for doc in yaml.safe_load_all(p.read_text())
    if doc and doc.get("kind") == "LargeModelJob"
]
SEEDS = [load_base(), *EXAMPLES]
EXAMPLES_COUNT = int(os.environ.get("LMJOB_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES_COUNT,
    deadline=None,
    derandomize=os.environ.get("LMJOB_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _server_verdict(kube: Any, namespace: str, manifest: dict[str, Any]) -> str | None:
    """None when the server admits the manifest, else its message; fails on a 5xx."""
    body = json.loads(as_json(manifest))  # as kubectl would send it
    try:
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as err:
        assert err.status < 500, f"the API server failed ({err.status}) on {manifest}: {err.body}"
        return json.loads(err.body).get("message", err.body) if err.body else str(err)
    return None


def _agree(kube: Any, namespace: str, manifest: dict[str, Any]) -> bool:
    job, problems = validate_job(manifest)
    ours = None if job is not None else "; ".join(str(p) for p in problems)
    server = _server_verdict(kube, namespace, manifest)
    assert (ours is None) == (server is None), (
        "lmjob validate and the API server disagree on\n"
        f"{yaml.safe_dump(manifest, sort_keys=False)}\n"
        f"lmjob validate: {ours or 'valid'}\nAPI server: {server or 'admitted'}"
    )
    return ours is None


@pytest.fixture(scope="module")
def fuzz_namespace(fuzz_kube: Any) -> str:
    from kubernetes import client

    name = "fuzz-agreement"
    try:
        fuzz_kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as err:
        if err.status != 409:
            raise
    return name


@pytest.fixture(scope="module")
def fuzz_kube(control_plane: Any) -> Any:
    from tests.support.clients import build_kube_clients

    clients = build_kube_clients(control_plane.kubeconfig)
    yield clients
    clients.close()


VERDICTS: dict[str, list[bool]] = {"plausible": [], "mutated": []}


@FUZZ
@given(manifest=plausible_jobs())
def test_plausible_manifests_get_one_verdict(
    fuzz_kube: Any, fuzz_namespace: str, manifest: dict
) -> None:
    VERDICTS["plausible"].append(_agree(fuzz_kube, fuzz_namespace, manifest))


@FUZZ
@given(manifest=mutated_jobs(SEEDS))
def test_mutated_manifests_get_one_verdict(
    fuzz_kube: Any, fuzz_namespace: str, manifest: dict
) -> None:
    VERDICTS["mutated"].append(_agree(fuzz_kube, fuzz_namespace, manifest))


def test_the_fuzzer_reached_both_verdicts() -> None:
    """A generator that only ever made valid (or only invalid) manifests would prove little."""
    for kind, verdicts in VERDICTS.items():
        if not verdicts:
            pytest.skip("run together with the fuzz tests above")
        valid = sum(verdicts)
        assert 0.1 * len(verdicts) <= valid <= 0.9 * len(verdicts), (kind, valid, len(verdicts))


@given(st.data())
@settings(max_examples=50, deadline=None, database=None, derandomize=True)
def test_validator_never_raises_on_junk(data: st.DataObject) -> None:
    """Any YAML value where a manifest is expected gets problems, never an exception."""
    junk = data.draw(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=10,
        )
    )
    doc = {
        "apiVersion": "lmjob.dev/v1alpha1",
        "kind": "LargeModelJob",
        "metadata": {"name": "j"},
        "spec": junk,
    }
    job, problems = validate_job(doc)
    assert job is not None or problems
