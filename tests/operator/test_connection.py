"""The operator's one login (connection.py) and kube.py's aiohttp client against a real API
server: client certificates, a ServiceAccount token, a token that stops working (401 → log in
again), and the generated client staying out of the operator process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import kopf
import pytest

from lmjob_operator.connection import build_auth_headers, has_own_credentials
from lmjob_operator.kube import ApiError, Kube
from tests.operator.harness import SOURCE_DIRS

T = TypeVar("T")


@pytest.mark.parametrize(
    ("info", "own", "headers"),
    [
        (kopf.ConnectionInfo(server="s", token="t"), True, {"Authorization": "Bearer t"}),
        (
            kopf.ConnectionInfo(server="s", token="t", scheme="Bearer"),
            True,
            {"Authorization": "Bearer t"},
        ),
        (kopf.ConnectionInfo(server="s", certificate_data="x", private_key_data="y"), True, {}),
        (
            kopf.ConnectionInfo(server="s", username="u", password="p"),
            True,
            {"Authorization": "Basic dTpw"},
        ),
        # An exec plugin's user: nothing to authenticate with until the plugin runs.
        (kopf.ConnectionInfo(server="s"), False, {}),
    ],
)
def test_credentials_and_headers(info: kopf.ConnectionInfo, own: bool, headers: dict) -> None:
    assert has_own_credentials(info) is own
    assert build_auth_headers(info) == headers


async def _namespaces(kube: Kube) -> list[str]:
    try:
        found = await kube.request("GET", "/api/v1/namespaces", resource="namespaces")
        return [item["metadata"]["name"] for item in found["items"]]
    finally:
        await kube.close()


@pytest.mark.cluster
def test_kube_connects_with_client_certificates(
    control_plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The admin kubeconfig carries base64 certificate data (no files), as kind's do.
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.delenv("LMJOB_SERVICE_ACCOUNT_DIR", raising=False)
    names = asyncio.run(_connect_and(_namespaces))
    assert "kube-system" in names


@pytest.mark.cluster
def test_kube_logs_in_again_after_a_401(
    control_plane, operator_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start with a token the API server refuses; the kubeconfig then gets the real one, as a
    # rotated token file would: the one retry after the 401 must pick it up.
    good = operator_kubeconfig.read_text()
    stale = tmp_path / "operator.kubeconfig"
    token = next(line.split(":", 1)[1].strip() for line in good.splitlines() if "token:" in line)
    stale.write_text(good.replace(token, "not-a-token"))
    monkeypatch.setenv("KUBECONFIG", str(stale))
    monkeypatch.delenv("LMJOB_SERVICE_ACCOUNT_DIR", raising=False)

    async def scenario(kube: Kube) -> tuple[int, dict]:
        try:
            try:
                await kube.request("GET", "/api/v1/namespaces/default/pods", resource="pods")
                refused = 0
            except ApiError as err:
                refused = err.status
            stale.write_text(good)
            found = await kube.request("GET", "/api/v1/namespaces/default/pods", resource="pods")
            return refused, found
        finally:
            await kube.close()

    refused, found = asyncio.run(_connect_and(scenario))
    assert refused == 401
    assert found.get("kind") == "PodList"


async def _connect_and(fn: Callable[[Kube], Awaitable[T]]) -> T:
    return await fn(await Kube.connect())


def test_operator_process_never_imports_the_generated_client() -> None:
    # What `python -m lmjob_operator` imports before kopf runs: its entry module, then the
    # handlers (kopf's import of the client is what __main__ turns away).
    code = (
        "import runpy, sys\n"
        "sys.argv = ['lmjob_operator', '--help']\n"
        "try:\n"
        "    runpy.run_module('lmjob_operator', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "import lmjob_operator.handlers\n"
        "loaded = sorted(m for m, v in sys.modules.items() if m.startswith('kubernetes') and v)\n"
        "print(loaded)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(SOURCE_DIRS)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
