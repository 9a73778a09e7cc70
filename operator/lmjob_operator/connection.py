"""How the operator reaches the API server: one login for kopf's client and kube.py's.

kopf's own login functions (no client library) cover what operators run with: a pod's
ServiceAccount, a local node's named ServiceAccount folder (credentials.py), a kubeconfig
with a token or client certificates. Only a kubeconfig whose user needs a plugin (`exec`,
an `auth-provider` without a token) goes through the generated `kubernetes` client, which is
imported then and only then: it costs the operator about 20 MiB of memory otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import kopf

from lmjob_operator.credentials import named_in_cluster

log = logging.getLogger(__name__)


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Credentials for both clients (kopf passes `settings` and `logger` to a login handler;
    kube.py passes its own). Read again on every call: tokens rotate on disk."""
    named = named_in_cluster()
    if named is not None:
        return kopf.ConnectionInfo(
            server=named.server,
            ca_path=str(named.ca_file),
            token=named.token_file.read_text().strip(),
            scheme="Bearer",
            default_namespace=named.namespace_file.read_text().strip(),
        )
    kwargs.setdefault("settings", kopf.OperatorSettings())
    kwargs.setdefault("logger", log)
    # KUBECONFIG (or ~/.kube/config) first, then the pod's ServiceAccount (docs/operator.md).
    info = kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        info = kopf.login_with_service_account(**kwargs)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT")
        if info is not None and host and port:
            # The address the kubelet gives the pod, as client libraries use (kopf's default,
            # kubernetes.default.svc, needs cluster DNS).
            host = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
    if info is not None and not has_own_credentials(info):
        info = _login_via_client(**kwargs)
    return info


def has_own_credentials(info: kopf.ConnectionInfo) -> bool:
    """Whether the login carries what authenticates by itself (else a plugin must mint it)."""
    return bool(
        info.token
        or info.certificate_path
        or info.certificate_data
        or (info.username and info.password)
    )


def _login_via_client(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # __main__ hides the client from kopf's import (sys.modules entry None); let it load now.
    if sys.modules.get("kubernetes", ...) is None:
        del sys.modules["kubernetes"]
    return kopf.login_via_client(**kwargs)


def build_ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext:
    """TLS for the API server: its CA (file or kubeconfig data), our client certificate."""
    cadata = _decoded(info.ca_data).decode() if info.ca_data else None
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None, cadata=cadata
    )
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert, key = info.certificate_path, info.private_key_path
    with tempfile.TemporaryDirectory() as tmp:
        # ssl loads a client pair from files only: kubeconfig data goes through a private dir.
        if info.certificate_data:
            cert = Path(tmp) / "client.crt"
            cert.write_bytes(_decoded(info.certificate_data))
        if info.private_key_data:
            key = Path(tmp) / "client.key"
            key.write_bytes(_decoded(info.private_key_data))
        if cert:
            context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def build_auth_headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    if info.username and info.password:
        pair = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def _decoded(data: str | bytes) -> bytes:
    """kubeconfig `*-data` fields are base64; kopf passes them through as read."""
    raw = data.encode() if isinstance(data, str) else data
    return raw if raw.lstrip().startswith(b"-----BEGIN") else base64.b64decode(raw)
