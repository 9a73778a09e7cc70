"""The operator's API calls: raw JSON over kubernetes' asyncio client, one field manager, counted.

Manifests are plain dicts built by the builders; sending them as they are (instead of
through the client's generated models) keeps every field of a user's pod template and
skips model (de)serialisation, which dominates the cost of creating many pods.
Authentication and TLS come from the client's configuration (kubeconfig or in-cluster).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config
from kubernetes.aio.config.incluster_config import InClusterConfigLoader

from lmjob_operator import metrics
from lmjob_operator.credentials import named_in_cluster
from lmjob_operator.naming import FIELD_MANAGER

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
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        url = f"{base}/namespaces/{quote(namespace)}/{self.plural}"
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

    def __init__(self, api: aio_client.ApiClient) -> None:
        self._api = api

    @classmethod
    async def connect(cls) -> Kube:
        """The ServiceAccount folder a local cluster's node names (credentials.py), else
        kubeconfig (KUBECONFIG or ~/.kube/config) if there is one, else in-cluster."""
        configuration = aio_client.Configuration()
        named = named_in_cluster()
        if named is not None:
            InClusterConfigLoader(
                token_filename=str(named.token_file), cert_filename=str(named.ca_file)
            ).load_and_set(configuration)
        else:
            try:
                await aio_config.load_kube_config(client_configuration=configuration)
            except aio_config.ConfigException:
                aio_config.load_incluster_config(client_configuration=configuration)
        # Enough parallel connections to create a large job's pods at once.
        configuration.connection_pool_maxsize = 32
        return cls(aio_client.ApiClient(configuration))

    async def close(self) -> None:
        await self._api.close()

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
        headers = {"Accept": "application/json", "Content-Type": content_type}
        started = time.monotonic()
        method_, url, headers, body, _ = await self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        code = "error"
        try:
            response = await self._api.call_api(method_, url, header_params=headers, body=body)
            data = await response.read()
            code = str(response.status)
        finally:
            metrics.API_CALLS.labels(verb=method.lower(), resource=resource, code=code).inc()
            metrics.API_SECONDS.labels(verb=method.lower()).observe(time.monotonic() - started)
        try:
            decoded: Any = json.loads(data) if data else {}
        except ValueError:
            decoded = data.decode("utf-8", errors="replace")
        if not 200 <= response.status < 300:
            raise ApiError(response.status, response.reason or "", decoded)
        return decoded if isinstance(decoded, dict) else {}

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
