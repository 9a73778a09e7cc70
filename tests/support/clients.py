"""Kubernetes API clients for tests: typed API bundle, throwaway namespaces, minted SA tokens."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from lmjob_cli.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig


@dataclass
class KubeClients:
    """The typed APIs tests use most, sharing one ApiClient (close it when done)."""

    api: client.ApiClient
    core: client.CoreV1Api
    apps: client.AppsV1Api
    rbac: client.RbacAuthorizationV1Api
    custom: client.CustomObjectsApi
    apiext: client.ApiextensionsV1Api
    coordination: client.CoordinationV1Api

    def close(self) -> None:
        self.api.close()


def build_kube_clients(kubeconfig: Path) -> KubeClients:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    return KubeClients(
        api=api,
        core=client.CoreV1Api(api),
        apps=client.AppsV1Api(api),
        rbac=client.RbacAuthorizationV1Api(api),
        custom=client.CustomObjectsApi(api),
        apiext=client.ApiextensionsV1Api(api),
        coordination=client.CoordinationV1Api(api),
    )


def build_namespace_name(test_name: str) -> str:
    """A valid, unique namespace name that still says which test made it."""
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].rstrip("-")
    return f"t-{stem}-{secrets.token_hex(3)}"


def wait_for_service_account(
    core: client.CoreV1Api, namespace: str, name: str = "default", timeout: float = 20
) -> None:
    """Wait until the controller manager has created `name`: pods are rejected until then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account(name, namespace)
            return
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@dataclass(frozen=True)
class MintedToken:
    """A bound ServiceAccount token and a kubeconfig that uses it."""

    namespace: str
    service_account: str
    token: str
    kubeconfig: Path

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def mint_service_account_token(
    core: client.CoreV1Api,
    *,
    namespace: str,
    service_account: str,
    server: str,
    ca_pem: bytes,
    kubeconfig_path: Path,
    create: bool = True,
    expiration_seconds: int = 3600,
    audiences: list[str] | None = None,
) -> MintedToken:
    """Mint a token through the TokenRequest API, creating the SA first if `create`."""
    if create:
        body = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=service_account))
        try:
            core.create_namespaced_service_account(namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise
    # Empty audiences means the apiserver's own: a token the apiserver accepts.
    spec = client.V1TokenRequestSpec(
        audiences=audiences or [], expiration_seconds=expiration_seconds
    )
    response = core.create_namespaced_service_account_token(
        service_account, namespace, client.AuthenticationV1TokenRequest(spec=spec)
    )
    token = response.status.token
    kubeconfig = build_kubeconfig(
        server=server,
        ca_pem=ca_pem,
        user=f"{namespace}-{service_account}",
        token=token,
        namespace=namespace,
    )
    write_kubeconfig(kubeconfig_path, kubeconfig)
    return MintedToken(namespace, service_account, token, kubeconfig_path)


def provision_service_account(
    control_plane: Any,
    *,
    namespace: str,
    account: str,
    role: dict[str, Any],
    binding_name: str,
    kubeconfig_path: Path,
    secrets: tuple[client.V1Secret, ...] = (),
) -> Path:
    """A ServiceAccount bound cluster-wide to `role` (a ClusterRole manifest, created here),
    with a kubeconfig holding a minted token for it: how a test or benchmark runs a
    controller under exactly the rules it ships, with `secrets` created beside it; objects
    already there are fine. Returns the kubeconfig."""
    kube = build_kube_clients(control_plane.kubeconfig)
    try:
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": binding_name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
        ns = client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        creates = [
            lambda: kube.core.create_namespace(ns),
            *(
                lambda obj=obj: kube.core.create_namespaced_secret(namespace, obj)
                for obj in secrets
            ),
            lambda: kube.rbac.create_cluster_role(role),
            lambda: kube.rbac.create_cluster_role_binding(binding),
        ]
        for create in creates:
            try:
                create()
            except ApiException as err:
                if err.status != 409:
                    raise
        minted = mint_service_account_token(
            kube.core,
            namespace=namespace,
            service_account=account,
            server=control_plane.server,
            ca_pem=control_plane.ca_file.read_bytes(),
            kubeconfig_path=kubeconfig_path,
            expiration_seconds=7200,
        )
    finally:
        kube.close()
    return minted.kubeconfig
