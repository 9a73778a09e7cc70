"""The test control plane itself: right version, RBAC enforced, controllers running,
loopback only, audited, CRDs installable."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from lmjob_cli.localcluster.binaries import find_binaries, pinned_k8s_version
from lmjob_cli.localcluster.controlplane import ControlPlane
from tests.support.clients import KubeClients, build_kube_clients

pytestmark = pytest.mark.cluster


def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def test_kubectl_and_server_report_pinned_version(kubectl) -> None:
    versions = json.loads(kubectl("version", "-o", "json").stdout)
    pinned = pinned_k8s_version()
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["minor"] == pinned.split(".")[1]


def test_rbac_forbids_until_role_is_bound(kube: KubeClients, namespace: str, mint_token) -> None:
    minted = mint_token(namespace, "reader")
    as_reader = build_kube_clients(minted.kubeconfig)
    try:
        with pytest.raises(ApiException) as denied:
            as_reader.core.list_namespaced_pod(namespace)
        assert denied.value.status == 403
        assert minted.username in denied.value.body

        kube.rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
            ),
        )
        kube.rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
                ],
            ),
        )

        def can_list() -> bool:
            # The authorizer sees new bindings through its informer: a short lag.
            try:
                as_reader.core.list_namespaced_pod(namespace)
            except ApiException as e:
                if e.status == 403:
                    return False
                raise
            return True

        eventually(can_list, timeout=10, what="the RoleBinding to take effect")
        # Bound to pods/list only: still no secrets.
        with pytest.raises(ApiException) as still_denied:
            as_reader.core.list_namespaced_secret(namespace)
        assert still_denied.value.status == 403
    finally:
        as_reader.close()


def test_garbage_collector_deletes_dependents(kube: KubeClients, namespace: str) -> None:
    owner = kube.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    kube.core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])
        ),
    )
    kube.core.delete_namespaced_config_map("owner", namespace)
    eventually(
        lambda: gone(lambda: kube.core.read_namespaced_config_map("dependent", namespace)),
        what="the garbage collector to delete the dependent ConfigMap",
    )


def test_namespace_deletion_completes(kube: KubeClients) -> None:
    name = f"t-doomed-{secrets.token_hex(3)}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    kube.core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"))
    )
    kube.core.delete_namespace(name)
    eventually(
        lambda: gone(lambda: kube.core.read_namespace(name)),
        what="the namespace controller to finish deleting the namespace",
    )


def test_audit_log_records_api_calls(
    control_plane: ControlPlane, kube: KubeClients, namespace: str
) -> None:
    since = control_plane.audit_offset()
    kube.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="audited"))
    )
    creates = [
        e
        for e in control_plane.audit_events(since)
        if e["verb"] == "create"
        and e.get("objectRef", {}).get("resource") == "configmaps"
        and e["objectRef"].get("namespace") == namespace
    ]
    assert [e["user"]["username"] for e in creates] == ["lmjob-test-admin"]
    assert creates[0]["responseStatus"]["code"] == 201


def _listening_sockets(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listen_addresses(inodes: set[int]) -> list[str]:
    """Local addresses of LISTEN-state TCP sockets among `inodes`, as hex from /proc/net."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and inode in inodes:
                found.append(local.split(":")[0])
    return found


def test_components_listen_on_loopback_only(control_plane: ControlPlane) -> None:
    # 127.0.0.1 as /proc/net/tcp writes it, and its IPv4-mapped IPv6 form.
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    for component in control_plane.components:
        assert component.pid is not None and component.alive(), component.name
        addresses = _listen_addresses(_listening_sockets(component.pid))
        assert addresses, f"{component.name} listens nowhere?"
        assert set(addresses) <= loopback, f"{component.name} listens on {addresses}"


def test_crds_from_a_folder_become_established(
    control_plane: ControlPlane, kube: KubeClients, kubectl, tmp_path: Path
) -> None:
    group = f"t{secrets.token_hex(3)}.lmjob.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    (tmp_path / "widgets.yaml").write_text(json.dumps(crd))
    (tmp_path / "not-a-crd.yaml").write_text("kind: ConfigMap\napiVersion: v1\n")
    try:
        installed = control_plane.install_crds(tmp_path, time.monotonic() + 30)
        assert installed == [f"widgets.{group}"]
        assert kubectl("get", "widgets", "-A").returncode == 0
    finally:
        kube.apiext.delete_custom_resource_definition(f"widgets.{group}")


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("etcd", ["--version"], "etcd Version: 3.6."),
        ("kwok", ["--version"], "kwok version v0.8."),
        ("helm", ["version", "--short"], "v4."),
        ("kube-apiserver", ["--version"], "Kubernetes v1.36.3"),
    ],
)
def test_built_tools_run_and_report_versions(tool: str, args: list[str], expected: str) -> None:
    binary = find_binaries([tool])[tool]
    out = subprocess.run([binary, *args], capture_output=True, text=True, check=True)
    assert expected in out.stdout + out.stderr


def test_helm_renders_against_the_server_version(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    chart = tmp_path / "kv"
    (chart / "templates").mkdir(parents=True)
    # A kubeVersion constraint is what trips helm builds stuck at a default of 1.20.
    (chart / "Chart.yaml").write_text(
        'apiVersion: v2\nname: kv\nversion: 0.1.0\nkubeVersion: ">=1.30.0-0"\n'
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kv}\n"
        'data: {kube: "{{ .Capabilities.KubeVersion.Version }}"}\n'
    )
    helm = find_binaries(["helm"])["helm"]
    out = subprocess.run(
        [
            helm,
            "install",
            "kv",
            str(chart),
            "--dry-run=server",
            "--kubeconfig",
            str(control_plane.kubeconfig),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
            "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        },
    )
    assert f'kube: "{pinned_k8s_version()}"' in out.stdout
