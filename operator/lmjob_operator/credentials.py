"""Where the operator's in-cluster credentials are: the pod's ServiceAccount folder.

On a real node the kubelet mounts the projected `kube-api-access-*` volume at the fixed
path every Kubernetes client reads (/var/run/secrets/kubernetes.io/serviceaccount). A local
cluster's node runs pods as processes, which cannot mount: it writes the same files (a bound
token from the TokenRequest API, the cluster CA, the namespace) into the pod's own folder and
names that folder in LMJOB_SERVICE_ACCOUNT_DIR. Both of the operator's clients (kopf's and
kube.py's) load their in-cluster configuration from here, so the operator acts as its
ServiceAccount on either kind of node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SERVICE_ACCOUNT_DIR_ENV = "LMJOB_SERVICE_ACCOUNT_DIR"
DEFAULT_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class InCluster:
    """The files of a pod's ServiceAccount folder and the API server the pod's env names."""

    folder: Path
    server: str

    @property
    def token_file(self) -> Path:
        return self.folder / "token"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def namespace_file(self) -> Path:
        return self.folder / "namespace"


def service_account_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(SERVICE_ACCOUNT_DIR_ENV) or DEFAULT_SERVICE_ACCOUNT_DIR)


def named_in_cluster(environ: Mapping[str, str] | None = None) -> InCluster | None:
    """The in-cluster credentials when the pod's env names a ServiceAccount folder (a local
    cluster's node), else None: then the clients' own defaults apply."""
    env = os.environ if environ is None else environ
    if not env.get(SERVICE_ACCOUNT_DIR_ENV):
        return None
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ValueError(
            f"{SERVICE_ACCOUNT_DIR_ENV} is set but KUBERNETES_SERVICE_HOST/PORT are not: "
            "the node must name the API server too"
        )
    host = f"[{host}]" if ":" in host else host
    return InCluster(service_account_dir(env), f"https://{host}:{port}")
