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
import yaml

from tests.operator.harness import OperatorProcess
from tests.support.clients import build_kube_clients, mint_service_account_token

RULES_FILE = REPO_ROOT / "charts" / "lmjob" / "files" / "operator-rules.yaml"
OPERATOR_NAMESPACE = "lmjob-system"
OPERATOR_ACCOUNT = "lmjob-operator"
# Short timings so the tests see resyncs, scrapes and forced deletions in seconds.
OPERATOR_ENV = {
    "LMJOB_TRAINER_IMAGE": "registry.example/lmjob-trainer:test",
    "LMJOB_RESYNC_SECONDS": "1",
    "LMJOB_SCRAPE_TIMEOUT_SECONDS": "0.5",
    "LMJOB_FORCE_DELETE_AFTER_SECONDS": "2",
}


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig acting as the operator's own ServiceAccount, bound to a ClusterRole made
    from charts/lmjob/files/operator-rules.yaml only (the RBAC the chart ships)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    kube = build_kube_clients(control_plane.kubeconfig)
    try:
        try:
            kube.core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE))
            )
        except ApiException as err:
            if err.status != 409:
                raise
        rules = yaml.safe_load(RULES_FILE.read_text())
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "lmjob-operator-test"},
            "rules": rules,
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "lmjob-operator-test"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "lmjob-operator-test",
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": OPERATOR_ACCOUNT,
                    "namespace": OPERATOR_NAMESPACE,
                }
            ],
        }
        for create in (
            lambda: kube.rbac.create_cluster_role(role),
            lambda: kube.rbac.create_cluster_role_binding(binding),
        ):
            try:
                create()
            except ApiException as err:
                if err.status != 409:
                    raise
        minted = mint_service_account_token(
            kube.core,
            namespace=OPERATOR_NAMESPACE,
            service_account=OPERATOR_ACCOUNT,
            server=control_plane.server,
            ca_pem=control_plane.ca_file.read_bytes(),
            kubeconfig_path=tmp_path_factory.mktemp("operator") / "operator.kubeconfig",
            expiration_seconds=7200,
        )
    finally:
        kube.close()
    return minted.kubeconfig


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
