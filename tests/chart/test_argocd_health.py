"""The Argo CD health checks for LargeModelJob and LargeModelSweep, run by a real Lua 5.1
interpreter (the dialect Argo CD embeds) on every case of each kind's `health_test.yaml`, in
Argo CD's own test format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa.lua51 import LuaRuntime
from pydantic import BaseModel

from lmjob_api import LargeModelJob, LargeModelJobStatus
from lmjob_api.sweep import LargeModelSweep, LargeModelSweepStatus

REPO = Path(__file__).resolve().parents[2]
CHECKS = REPO / "deploy" / "argocd" / "lmjob.dev"
# kind → (its model, its status model, every phase the operator writes, healths to cover)
KINDS: dict[str, tuple[type[BaseModel], type[BaseModel], set[str], set[str]]] = {
    "LargeModelJob": (
        LargeModelJob,
        LargeModelJobStatus,
        {"Pending", "Running", "Restarting", "Compressing", "Succeeded", "Failed", "Suspended"},
        {"Healthy", "Progressing", "Degraded", "Suspended"},
    ),
    "LargeModelSweep": (
        LargeModelSweep,
        LargeModelSweepStatus,
        {"Pending", "Running", "Succeeded", "Failed"},
        {"Healthy", "Progressing", "Degraded"},
    ),
}
CASES = [
    (kind, case)
    for kind in KINDS
    for case in yaml.safe_load((CHECKS / kind / "health_test.yaml").read_text())["tests"]
]
IDS = [f"{kind}-{Path(c['inputPath']).stem}" for kind, c in CASES]


def run_health_check(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD would compute: the script's `hs` table for the global `obj`."""
    lua = LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute((CHECKS / kind / "health.lua").read_text())
    return {key: result[key] for key in ("status", "message") if result[key] is not None}


def load_case(kind: str, case: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load((CHECKS / kind / case["inputPath"]).read_text())


@pytest.mark.parametrize(("kind", "case"), CASES, ids=IDS)
def test_health(kind: str, case: dict[str, Any]) -> None:
    assert run_health_check(kind, load_case(kind, case)) == case["healthStatus"]


@pytest.mark.parametrize(("kind", "case"), CASES, ids=IDS)
def test_sample_is_a_real_object(kind: str, case: dict[str, Any]) -> None:
    # The samples must be statuses the operator can write, or the table proves nothing.
    model, status_model, phases, _ = KINDS[kind]
    obj = load_case(kind, case)
    status = obj.pop("status", None)
    model.model_validate(obj)
    if status is not None and status["phase"] in phases:
        status_model.model_validate(status)


@pytest.mark.parametrize("kind", KINDS)
def test_every_phase_and_health_is_covered(kind: str) -> None:
    _, _, phases, healths = KINDS[kind]
    cases = [c for k, c in CASES if k == kind]
    assert {load_case(kind, c).get("status", {}).get("phase") for c in cases} >= phases
    assert {c["healthStatus"]["status"] for c in cases} >= healths


def test_interpreter_is_lua51() -> None:
    # Argo CD runs gopher-lua (Lua 5.1): integer division, goto, utf8 and the like would break.
    assert LuaRuntime().eval("_VERSION") == "Lua 5.1"
