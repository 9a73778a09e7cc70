"""The Argo CD health check for LargeModelJob, run by a real Lua 5.1 interpreter (the dialect
Argo CD embeds) on every case of its `health_test.yaml`, in Argo CD's own test format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from lmjob_api import LargeModelJob, LargeModelJobStatus

REPO = Path(__file__).resolve().parents[2]
CHECK_DIR = REPO / "deploy" / "argocd" / "lmjob.dev" / "LargeModelJob"
SCRIPT = (CHECK_DIR / "health.lua").read_text()
CASES = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"]
PHASES = {"Pending", "Running", "Restarting", "Compressing", "Succeeded", "Failed", "Suspended"}


def run_health_check(obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD would compute: the script's `hs` table for the global `obj`."""
    lua = LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return {key: result[key] for key in ("status", "message") if result[key] is not None}


def load_case(case: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health(case: dict[str, Any]) -> None:
    assert run_health_check(load_case(case)) == case["healthStatus"]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_sample_is_a_real_job(case: dict[str, Any]) -> None:
    # The samples must be statuses the operator can write, or the table proves nothing.
    obj = load_case(case)
    status = obj.pop("status", None)
    LargeModelJob.model_validate(obj)
    if status is not None and status["phase"] in PHASES:
        LargeModelJobStatus.model_validate(status)


def test_every_phase_and_health_is_covered() -> None:
    phases = {load_case(c).get("status", {}).get("phase") for c in CASES}
    assert phases >= PHASES
    healths = {c["healthStatus"]["status"] for c in CASES}
    assert healths >= {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_interpreter_is_lua51() -> None:
    # Argo CD runs gopher-lua (Lua 5.1): integer division, goto, utf8 and the like would break.
    assert LuaRuntime().eval("_VERSION") == "Lua 5.1"
