"""Fixtures of the operator tests.

The operator's packages are imported from this checkout (a git worktree may sit beside an
editable install of another checkout), and the operator subprocess gets the same path.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = [str(REPO_ROOT / d) for d in ("api", "cli", "operator", "trainer")]
for _dir in reversed(SOURCE_DIRS):
    if _dir not in sys.path:
        sys.path.insert(0, _dir)

# ruff: noqa: E402 (imports after the sys.path lines above, on purpose)
from collections.abc import Iterator

import pytest

from lmjob_cli.localcluster.node import build_capacity
from lmjob_cli.localcluster.process_kubelet import ProcessKubelet
from tests.operator.harness import (
    OPERATOR_ENV,
    SHAKESPEARE,
    OperatorProcess,
    provision_operator_account,
)
from tests.support.claims import bind_host_claim


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig acting as the operator's own ServiceAccount, bound to a ClusterRole made
    from charts/lmjob/files/operator-rules.yaml only (the RBAC the chart ships)."""
    return provision_operator_account(
        control_plane, tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    )


@pytest.fixture
def operator(
    operator_kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator, as a subprocess scoped to this test's namespace; its log must stay clean."""
    process = OperatorProcess(
        operator_kubeconfig, [namespace], tmp_path / "operator.log", OPERATOR_ENV
    )
    process.start()
    yield process
    process.stop()
    log = process.log()
    assert "Traceback" not in log, f"operator log has a traceback:\n{log[-5000:]}"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The first 100 kB of tiny Shakespeare: enough text for a tiny model's short run."""
    text = tmp_path / "corpus.txt"
    text.write_bytes(SHAKESPEARE.read_bytes()[:100_000])
    return text


@pytest.fixture
def kubelet(operator, kube, namespace, tmp_path: Path, request) -> Iterator[ProcessKubelet]:
    """This test's node, named as its namespace, with this machine's capacity (as a local
    cluster's node): runs the pods the scheduler binds to it and serves their logs to the API
    server; stopped (every process killed, the Node deleted) after the test. Jobs reach it
    through harness.on_node in their workers.template. Parametrized indirectly with a number,
    it also advertises that many nvidia.com/gpu (as `lmjob cluster up --gpus`)."""
    node = ProcessKubelet(
        kube.core,
        tmp_path / "node",
        node_name=namespace,
        capacity=build_capacity(gpus=getattr(request, "param", 0)),
        taint=True,
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture
def storage(kubelet: ProcessKubelet, kube, namespace) -> Iterator[Path]:
    """Claim `ckpt`, bound to a PersistentVolume whose hostPath is the folder the node keeps
    for that claim; returns that folder."""
    folder = kubelet.claim_dir("ckpt", namespace)
    bind_host_claim(kube.core, namespace, folder)
    yield folder
    kube.core.delete_persistent_volume(namespace)
