"""The committed CRD is what the models generate, stays small, and is structural."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmjob_api.crd import CRD_FILE_NAME, KINDS, Kind, build_crd, render_crd

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / CRD_FILE_NAME
log = logging.getLogger(__name__)


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_committed_crd_matches_models(kind: Kind) -> None:
    path = REPO / "crds" / kind.file_name
    assert path.read_text() == render_crd(kind), "crds/ is stale: run `python -m lmjob_api.crd`"


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_crd_size_is_far_below_annotation_limit(kind: Kind) -> None:
    size = len((REPO / "crds" / kind.file_name).read_bytes())
    log.warning("CRD size: %d bytes (%.1f KiB)", size, size / 1024)
    # Client-side apply stores the object in a 256 KiB annotation; stay far below.
    assert size < 96 * 1024


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        nodes += _walk(child, f"{path}.{name}")
    if "items" in schema:
        nodes += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += _walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def test_schema_is_structural_and_strict() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for banned in ("$ref", "oneOf", "const", "title", "nullable", "$defs"):
            assert banned not in node, f"{path} has {banned}"
        if "anyOf" not in node and not node.get("x-kubernetes-int-or-string"):
            assert "type" in node, f"{path} has no type"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), (
                f"{path}.{key} must be a boolean in OpenAPI v3"
            )
    preserved = [p for p, n in _walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    # Only foreign objects (core/v1 fragments) and kopf's bookkeeping may keep unknown fields.
    # The pod template is typed only where lmjob's merge looks (lmjob_api.pod_template).
    assert sorted(preserved) == [
        ".spec.storage.volume",
        ".spec.workers.template.spec",
        ".spec.workers.template.spec.containers[]",
        ".spec.workers.template.spec.containers[].env[]",
        ".spec.workers.template.spec.containers[].volumeMounts[]",
        ".spec.workers.template.spec.volumes[]",
        ".status.kopf",
    ]


def test_every_field_is_described() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undescribed = [
        p
        for p, n in _walk(schema["properties"]["spec"], ".spec")
        if "description" not in n and not p.endswith(("[]", "{}"))
    ]
    assert undescribed == [] or all(p.startswith(".spec.workers.env[].") for p in undescribed), (
        undescribed
    )


def test_crd_shape() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec = crd["spec"]
    assert spec["names"]["shortNames"] == ["lmj"]
    assert "all" in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.workers.replicas"
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Workers", "Stage", "Step", "Loss", "Age"]
