"""Loads the shared invalid-manifest table (tests/data/invalid_jobs.yaml) into concrete manifests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TABLE = Path(__file__).resolve().parents[1] / "data" / "invalid_jobs.yaml"
SWEEP_TABLE = TABLE.with_name("invalid_sweeps.yaml")


def _walk(doc: Any, parts: list[str]) -> tuple[Any, str | int]:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc.setdefault(part, {})
    last = parts[-1]
    return doc, (int(last) if isinstance(doc, list) else last)


def build_case(base: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for path, value in (case.get("set") or {}).items():
        parent, key = _walk(doc, path.split("."))
        if isinstance(parent, list) and key == len(parent):
            parent.append(value)
        else:
            parent[key] = value
    for path in case.get("delete") or []:
        parent, key = _walk(doc, path.split("."))
        del parent[key]
    return doc


def load_cases(table_path: Path = TABLE) -> list[tuple[str, dict[str, Any], str]]:
    """(id, manifest, field the error must name) for every case."""
    table = yaml.safe_load(table_path.read_text())
    return [(c["id"], build_case(table["base"], c), c["field"]) for c in table["cases"]]


def load_sweep_cases(server: bool) -> list[tuple[str, dict[str, Any], str]]:
    """The invalid-sweep table's cases the API server rejects (`server`) or only lmjob's own
    checks do (a bound the job rejects, a grid past maxTrials: the operator marks those)."""
    table = yaml.safe_load(SWEEP_TABLE.read_text())
    return [
        (c["id"], build_case(table["base"], c), c["field"])
        for c in table["cases"]
        if c.get("server", True) == server
    ]


def load_base(table_path: Path = TABLE) -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(table_path.read_text())["base"])
