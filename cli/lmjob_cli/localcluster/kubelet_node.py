"""The process kubelet's Node and log endpoint, so that the scheduler can place pods on it and
`kubectl logs` and `lmjob logs` reach its pods through the real API server, as a real kubelet's.

The API server serves `pods/log` by calling `https://<node address>:<kubelet port>/
containerLogs/<ns>/<pod>/<container>` on the node the pod is bound to. So this module
registers a Node (InternalIP 127.0.0.1, the log server's port as its kubelet endpoint,
capacity when given), keeps it Ready with lease and status heartbeats (else the node lifecycle
controller would mark its pods NotReady), and serves each pod's current container log, with
`tailLines` and `follow`. An end-to-end test's node is tainted NoSchedule, so the scheduler
places only that test's job there (its pods tolerate the taint and select the node by name);
a local cluster's nodes are untainted.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kubernetes import client
from kubernetes.client.rest import ApiException

from lmjob_cli.localcluster.certs import build_kubelet_serving

NODE_ADDRESS = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
FOLLOW_POLL_SECONDS = 0.1
TAINT = {"key": "lmjob.dev/process-kubelet", "value": "true", "effect": "NoSchedule"}

# (namespace, pod name) -> (its current container's log so far, whether that container still
# runs), or None when no container of that pod ran here.
LogSource = Callable[[str, str], tuple[bytes, bool] | None]


def _now(micro: bool = False) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.now(UTC).strftime(fmt)


def _handler(source: LogSource) -> type[BaseHTTPRequestHandler]:
    class ContainerLogs(BaseHTTPRequestHandler):
        """GET /containerLogs/<namespace>/<pod>/<container>[?tailLines=N][&follow=true]."""

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404, "only /containerLogs is served here")
                return
            namespace, pod = parts[1], parts[2]
            found = source(namespace, pod)
            if found is None:
                self.send_error(404, f"no container of pod {pod} ran on this node")
                return
            query = parse_qs(url.query)
            text, running = found
            sent = len(text)
            if "tailLines" in query:
                lines = text.splitlines(keepends=True)
                tail = max(0, int(query["tailLines"][0]))
                text = b"".join(lines[len(lines) - tail :]) if tail else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(text)
            self.wfile.flush()
            if query.get("follow") != ["true"]:
                return
            # Stream what the container prints until it exits (or the client goes away).
            with contextlib.suppress(OSError):
                while running:
                    time.sleep(FOLLOW_POLL_SECONDS)
                    found = source(namespace, pod)
                    if found is None:
                        break
                    full, running = found
                    if len(full) > sent:
                        self.wfile.write(full[sent:])
                        self.wfile.flush()
                        sent = len(full)

        def log_message(self, *args: object) -> None:
            pass

    return ContainerLogs


class KubeletNode:
    """One Node standing for the process kubelet, with its log endpoint and heartbeats."""

    def __init__(
        self,
        core: client.CoreV1Api,
        name: str,
        folder: Path,
        source: LogSource,
        *,
        taint: bool = False,
        capacity: dict[str, str] | None = None,
    ) -> None:
        self.core = core
        self.taint = taint
        self.capacity = capacity
        self.leases = client.CoordinationV1Api(core.api_client)
        self.name = name
        self.folder = folder
        self.source = source
        self._server: ThreadingHTTPServer | None = None
        self._beat_at = 0.0

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_address[1]

    def start(self) -> None:
        cert = build_kubelet_serving(self.folder)
        server = ThreadingHTTPServer((NODE_ADDRESS, 0), _handler(self.source))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert.cert, cert.key)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="kubelet-logs").start()
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name}},
            "spec": {"taints": [TAINT] if self.taint else []},
        }
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _now(micro=True),
            },
        }
        try:
            self.core.create_node(node)
        except ApiException as err:
            # A node process restarted after a crash finds its Node: take it over as is.
            if err.status != 409:
                raise
            self.core.patch_node(self.name, {"spec": node["spec"]})
        try:
            self.leases.create_namespaced_lease(LEASE_NAMESPACE, lease)
        except ApiException as err:
            if err.status != 409:
                raise
        self.heartbeat(force=True)

    def heartbeat(self, force: bool = False) -> None:
        """Renew the lease and the Ready condition, at most every HEARTBEAT_SECONDS."""
        if not force and time.monotonic() - self._beat_at < HEARTBEAT_SECONDS:
            return
        self._beat_at = time.monotonic()
        now = _now()
        self.leases.patch_namespaced_lease(
            self.name, LEASE_NAMESPACE, {"spec": {"renewTime": _now(micro=True)}}
        )
        resources = (
            {"capacity": self.capacity, "allocatable": self.capacity} if self.capacity else {}
        )
        self.core.patch_node_status(
            self.name,
            {
                "status": {
                    **resources,
                    "addresses": [{"type": "InternalIP", "address": NODE_ADDRESS}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "process kubelet is posting ready status",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                }
            },
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for delete in (
            lambda: self.core.delete_node(self.name),
            lambda: self.leases.delete_namespaced_lease(self.name, LEASE_NAMESPACE),
        ):
            try:
                delete()
            except ApiException as err:
                if err.status != 404:
                    raise
