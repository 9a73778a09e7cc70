"""The operator's API calls: raw JSON over aiohttp, one field manager, counted.

Manifests are plain dicts built by the builders; sending them as they are (instead of
through a client library's generated models) keeps every field of a user's pod template and
skips model (de)serialisation, which dominates the cost of creating many pods. The session
is aiohttp's, which kopf brings: no generated client is imported (about 20 MiB of memory).
Credentials come from connection.login, the same as kopf's; a 401 logs in again once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from lmjob_operator import metrics
from lmjob_operator.connection import build_auth_headers, build_ssl_context, login
from lmjob_operator.naming import FIELD_MANAGER

# A new connection costs a TLS handshake (milliseconds of CPU each; a large job's first pass
# opens one per concurrent request): keep idle ones 60 s instead of aiohttp's 15 s. One the
# server closed in between is dropped by aiohttp, or fails one request that the pass retries.
KEEPALIVE_SECONDS = 60.0

log = logging.getLogger(__name__)
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, body: dict[str, Any] | str) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        detail = body.get("message", "") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{status} {reason}: {detail}")

    @property
    def message(self) -> str:
        return self.body.get("message", "") if isinstance(self.body, dict) else str(self.body)


@dataclass(frozen=True)
class ResourcePath:
    """Where a kind of object lives: `/api/v1` or `/apis/<group>/<version>`, plus its plural."""

    group: str
    version: str
    plural: str

    def url(self, namespace: str, name: str = "", sub: str = "") -> str:
        """The object's URL; an empty `namespace` means a cluster-scoped kind."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        scope = f"/namespaces/{quote(namespace)}" if namespace else ""
        url = f"{base}{scope}/{self.plural}"
        if name:
            url += f"/{quote(name)}"
        if sub:
            url += f"/{sub}"
        return url


PODS = ResourcePath("", "v1", "pods")
SERVICES = ResourcePath("", "v1", "services")
CONFIG_MAPS = ResourcePath("", "v1", "configmaps")


class Kube:
    """An async API client for the operator's few verbs."""

    # Enough parallel connections to create a large job's pods at once.
    CONNECTIONS = 32

    def __init__(
        self, session: aiohttp.ClientSession, server: str, headers: dict[str, str]
    ) -> None:
        self._session = session
        self._server = server.rstrip("/")
        self._auth = headers

    @classmethod
    async def connect(cls) -> Kube:
        """The ServiceAccount folder a local cluster's node names (credentials.py), else
        kubeconfig (KUBECONFIG or ~/.kube/config), else the pod's ServiceAccount."""
        info = login()
        if info is None:
            raise RuntimeError(
                "no Kubernetes credentials: run in a pod with a ServiceAccount or set KUBECONFIG"
            )
        connector = aiohttp.TCPConnector(
            limit=cls.CONNECTIONS, ssl=build_ssl_context(info), keepalive_timeout=KEEPALIVE_SECONDS
        )
        session = aiohttp.ClientSession(connector=connector)
        return cls(session, info.server, build_auth_headers(info))

    async def close(self) -> None:
        await self._session.close()

    async def open_connections(self, count: int) -> None:
        """Open `count` pooled connections now (concurrent GET /version, allowed to every
        authenticated user): a job's first pass then sends its pods at once instead of
        waiting on a TLS handshake per request. Best effort: a failure only costs that."""
        count = min(count, self.CONNECTIONS)
        results = await asyncio.gather(
            *(self.request("GET", "/version", resource="version") for _ in range(count)),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning(
                "opened %d of %d API connections: %s", count - len(failed), count, failed[0]
            )

    async def request(
        self,
        method: str,
        path: str,
        *,
        resource: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; returns the decoded JSON answer, raises ApiError for non-2xx."""
        data = None if body is None else json.dumps(body).encode()
        status, reason, raw = await self._send(
            method, path, query or [], data, content_type, resource
        )
        if status == 401:
            # A rotated token (bound ServiceAccount tokens expire): log in again, once.
            info = login()
            if info is not None:
                self._auth = build_auth_headers(info)
                status, reason, raw = await self._send(
                    method, path, query or [], data, content_type, resource
                )
        try:
            decoded: Any = json.loads(raw) if raw else {}
        except ValueError:
            decoded = raw.decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            raise ApiError(status, reason, decoded)
        return decoded if isinstance(decoded, dict) else {}

    async def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        data: bytes | None,
        content_type: str,
        resource: str,
        accept: str = "application/json",
    ) -> tuple[int, str, bytes]:
        headers = {"Accept": accept, "Content-Type": content_type, **self._auth}
        started = time.monotonic()
        code = "error"
        try:
            async with self._session.request(
                method, self._server + path, params=query, data=data, headers=headers
            ) as response:
                raw = await response.read()
                code = str(response.status)
                return response.status, response.reason or "", raw
        finally:
            metrics.API_CALLS.labels(verb=method.lower(), resource=resource, code=code).inc()
            metrics.API_SECONDS.labels(verb=method.lower()).observe(time.monotonic() - started)

    async def read_log(
        self, namespace: str, pod: str, *, container: str, tail_lines: int, timeout: float
    ) -> str:
        """The last `tail_lines` lines of a pod container's log (pods/log, served by its
        node's kubelet through the API server). ApiError for a non-2xx answer, TimeoutError
        past `timeout` seconds: a slow node never holds a pass for long."""
        path = PODS.url(namespace, pod, "log")
        query = [("container", container), ("tailLines", str(tail_lines))]
        async with asyncio.timeout(timeout):
            status, reason, raw = await self._send(
                "GET", path, query, None, "application/json", "pods/log", accept="*/*"
            )
        if not 200 <= status < 300:
            try:
                decoded: Any = json.loads(raw)
            except ValueError:
                decoded = raw.decode("utf-8", errors="replace")
            raise ApiError(status, reason, decoded)
        return raw.decode("utf-8", errors="replace")

    async def get(self, where: ResourcePath, namespace: str, name: str) -> dict | None:
        """The object, or None when there is none (404)."""
        try:
            return await self.request("GET", where.url(namespace, name), resource=where.plural)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def create(self, where: ResourcePath, namespace: str, body: dict[str, Any]) -> dict:
        return await self.request(
            "POST",
            where.url(namespace),
            resource=where.plural,
            query=[("fieldManager", FIELD_MANAGER)],
            body=body,
        )

    async def apply(self, where: ResourcePath, namespace: str, body: dict[str, Any]) -> dict:
        """Server-side apply with the operator's field manager (force: the operator owns it)."""
        return await self.request(
            "PATCH",
            where.url(namespace, body["metadata"]["name"]),
            resource=where.plural,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=body,
            content_type=APPLY,
        )

    async def merge_patch(
        self, where: ResourcePath, namespace: str, name: str, body: dict, sub: str = ""
    ) -> dict:
        return await self.request(
            "PATCH",
            where.url(namespace, name, sub),
            resource=where.plural + (f"/{sub}" if sub else ""),
            query=[("fieldManager", FIELD_MANAGER)],
            body=body,
            content_type=MERGE,
        )

    async def delete(
        self,
        where: ResourcePath,
        namespace: str,
        name: str,
        *,
        uid: str = "",
        grace_period_seconds: int | None = None,
        propagation: str = "Background",
    ) -> None:
        """Delete by name; with `uid`, only that incarnation (a precondition), never its successor."""
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": propagation,
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        await self.request(
            "DELETE", where.url(namespace, name), resource=where.plural, body=options
        )

    async def has_api(self, group: str, version: str, plural: str) -> bool:
        """Whether the cluster serves `plural` in `group/version` (discovery, no RBAC needed)."""
        try:
            found = await self.request("GET", f"/apis/{group}/{version}", resource="discovery")
        except ApiError as err:
            if err.status in (404, 503):
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources", []))
