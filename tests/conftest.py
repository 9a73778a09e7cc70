"""Shared pytest fixtures: a real Kubernetes control plane (started lazily, once per session)
and per-test clients, namespaces, kubectl and ServiceAccount tokens.

Any test that uses `control_plane` (directly or through `kube`, `namespace`,
`kubectl`, `mint_token`) is marked `cluster` automatically.
"""

# ruff: noqa: E402 (tests.support is importable only after the sys.path line)
from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# `tests.support` is importable the same way under `pytest` and `python -m`.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lmjob_cli.localcluster.binaries import BinariesMissing
from lmjob_cli.localcluster.controlplane import ControlPlane, ControlPlaneError, Options
from lmjob_cli.localcluster.kueue import Kueue, KueueOptions
from tests.support.clients import (
    KubeClients,
    MintedToken,
    build_kube_clients,
    build_namespace_name,
    mint_service_account_token,
    wait_for_service_account,
)

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
MintToken = Callable[..., MintedToken]

_started: list[ControlPlane] = []
_kueues: list[Kueue] = []
# The last test of the run that needs the control plane: after it, the plane is stopped
# rather than left idling (an idle apiserver, etcd and controller-manager still take a
# share of CI's two cores) until the session ends.
_last_cluster_test: list[pytest.Item] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    users = [i for i in items if "control_plane" in getattr(i, "fixturenames", ())]
    for item in users:
        item.add_marker(pytest.mark.cluster)
    _last_cluster_test[:] = users[-1:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield  # the test's own fixtures are torn down first
    if nextitem is not None and _last_cluster_test and item is _last_cluster_test[0]:
        _stop_cluster()


def _stop_cluster() -> None:
    """Kueue, then the control plane (idempotent: the session fixtures call it again)."""
    for kueue in _kueues:
        if not kueue.stopped:
            kueue.stop()
    for plane in _started:
        plane.stop()


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:
    for plane in _started:
        if exitstatus != 0:
            terminalreporter.write_line(f"control-plane logs: {plane.log_dir}")
        if plane.startup_s is not None:
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in plane.milestones.items())
            terminalreporter.write_line(f"control-plane start-up: {plane.startup_s:.1f}s ({steps})")
    for kueue in _kueues:
        if exitstatus != 0:
            terminalreporter.write_line(f"kueue log: {kueue.log_path}")
        if kueue.startup_s is not None:
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in kueue.milestones.items())
            terminalreporter.write_line(f"kueue start-up: {kueue.startup_s:.1f}s ({steps})")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + controller-manager + scheduler with the repo's CRDs installed,
    and Kubernetes' own gang scheduling on (a 1.36 cluster with its GenericWorkload gate: at
    no cost to start-up, and pods without a schedulingGroup are scheduled as without it)."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), Options(gang_scheduling=True))
    error = None
    try:
        plane.start()
    except BinariesMissing as e:
        error = str(e)
    except ControlPlaneError as e:
        error = f"control plane failed to start: {e}"
    if error:
        # Never skip: CI runs every tier, and a skipped tier hides a broken build.
        pytest.fail(error, pytrace=False)
    _started.append(plane)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kueue(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue's controller manager on the session's control plane (its CRDs and webhooks
    installed), started on first use: only tests that ask for it pay its ~start-up."""
    options = KueueOptions(external_frameworks=("LargeModelJob.v1alpha1.lmjob.dev",))
    instance = Kueue(control_plane, tmp_path_factory.mktemp("kueue"), options)
    try:
        instance.start()
    except (BinariesMissing, ControlPlaneError) as e:
        pytest.fail(f"kueue failed to start: {e}", pytrace=False)
    _kueues.append(instance)
    yield instance
    if not instance.stopped:
        instance.stop()


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[KubeClients]:
    """Typed API clients as the admin user (`kube.core`, `kube.custom`, `kube.rbac`, ...)."""
    clients = build_kube_clients(control_plane.kubeconfig)
    yield clients
    clients.close()


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, control_plane: ControlPlane, kube: KubeClients
) -> Iterator[str]:
    """A fresh namespace for this test (its `default` SA exists); deleted afterwards."""
    from kubernetes import client

    name = build_namespace_name(request.node.name)
    meta = client.V1ObjectMeta(name=name, labels={"lmjob.dev/test": "true"})
    kube.core.create_namespace(client.V1Namespace(metadata=meta))
    if control_plane.options.controller_manager:
        wait_for_service_account(kube.core, name)
    yield name
    _release_lmjob_objects(kube, name)
    # Not waited for: the namespace controller finishes it in the background.
    kube.core.delete_namespace(name)


def _release_lmjob_objects(kube: KubeClients, namespace: str) -> None:
    """Drop the operator's finalizer from what the test left behind: with the test's operator
    gone nothing else would, the namespace would stay Terminating, and the namespace
    controller would retry it (listing every resource type) for the rest of the run."""
    from kubernetes.client.exceptions import ApiException

    from lmjob_api import GROUP, VERSION

    for plural in ("largemodeljobs", "largemodelsweeps"):
        try:
            items = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        except ApiException:
            continue  # the CRD is not installed on this plane
        for obj in items["items"]:
            if obj["metadata"].get("finalizers"):
                with contextlib.suppress(ApiException):  # deleted meanwhile
                    kube.custom.patch_namespaced_custom_object(
                        GROUP, VERSION, namespace, plural, obj["metadata"]["name"],
                        {"metadata": {"finalizers": None}},
                    )  # fmt: skip


@pytest.fixture
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """`kubectl(*args, input=None, check=True, kubeconfig=None)` -> CompletedProcess (text).

    Runs the built kubectl as admin, or with `kubeconfig` (e.g. a minted token's).
    """

    def run(
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return control_plane.kubectl(*args, input=input, check=check, kubeconfig=kubeconfig)

    return run


@pytest.fixture
def mint_token(control_plane: ControlPlane, kube: KubeClients, tmp_path: Path) -> MintToken:
    """`mint_token(namespace, service_account, *, create=True, expiration_seconds=3600,
    audiences=None)` -> MintedToken(token, kubeconfig, username, ...).

    Creates the ServiceAccount if missing and writes a kubeconfig that acts as it,
    so a test (or the operator under test) runs with that SA's RBAC, not as admin.
    """

    def mint(
        namespace: str,
        service_account: str,
        *,
        create: bool = True,
        expiration_seconds: int = 3600,
        audiences: list[str] | None = None,
    ) -> MintedToken:
        return mint_service_account_token(
            kube.core,
            namespace=namespace,
            service_account=service_account,
            server=control_plane.server,
            ca_pem=control_plane.ca_file.read_bytes(),
            kubeconfig_path=tmp_path / f"{namespace}-{service_account}.kubeconfig",
            create=create,
            expiration_seconds=expiration_seconds,
            audiences=audiences,
        )

    return mint
