"""Fixtures for the install-path tests: the built helm binary, offline `helm template`
renders, and helm/kubectl runs against the test control plane."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmjob_cli.localcluster.binaries import BinariesMissing, find_binaries
from tests.chart.helm_runs import CHART, REPO, Render, run_helm, write_values

# Import the packages of the checkout under test, even where the editable install points at
# another worktree of the repository (the chart is checked against *this* operator's CLI).
for _source in ("trainer", "operator", "cli", "api"):
    if str(REPO / _source) not in sys.path:
        sys.path.insert(0, str(REPO / _source))


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    try:
        return find_binaries(["helm"])["helm"]
    except BinariesMissing as e:
        # Never skip: CI runs every tier, and a skipped tier hides a broken build.
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="session")
def render(helm_binary: Path, helm_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """`render(values=None, *, release="lmjob", namespace="lmjob-system", include_crds=False)`:
    the chart's objects from `helm template` (no cluster)."""
    values_dir = tmp_path_factory.mktemp("values")

    def run(
        values: dict[str, Any] | None = None,
        *,
        release: str = "lmjob",
        namespace: str = "lmjob-system",
        include_crds: bool = False,
    ) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if values:
            args += ["--values", str(write_values(values_dir, values))]
        if include_crds:
            args.append("--include-crds")
        out = run_helm(helm_binary, *args, home=helm_home).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return run


@pytest.fixture
def helm_cluster(
    helm_binary: Path, helm_home: Path, control_plane: Any
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`helm_cluster(*args, check=True)`: helm as admin against the test control plane."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_helm(
            helm_binary, *args, kubeconfig=control_plane.kubeconfig, check=check, home=helm_home
        )

    return run


@pytest.fixture
def make_namespace(kube: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """`make_namespace(suffix)` -> a fresh namespace's name, deleted after the test."""
    from kubernetes import client

    from tests.support.clients import build_namespace_name, wait_for_service_account

    made: list[str] = []

    def make(suffix: str) -> str:
        name = build_namespace_name(f"{request.node.name}-{suffix}")
        meta = client.V1ObjectMeta(name=name, labels={"lmjob.dev/test": "true"})
        kube.core.create_namespace(client.V1Namespace(metadata=meta))
        wait_for_service_account(kube.core, name)
        made.append(name)
        return name

    yield make
    for name in made:
        kube.core.delete_namespace(name)
