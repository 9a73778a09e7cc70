"""Kueue's queue objects for tests: a ResourceFlavor, a ClusterQueue with GPU quota for one
namespace and a LocalQueue `team`, created together, waited for until Kueue marks them
Active, and removed afterwards. Shared by the Kueue protocol tests (tests/cluster) and the
operator's Kueue tests (tests/operator)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException

KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
GPU = "nvidia.com/gpu"


@dataclass
class Queues:
    """Names of the objects; cluster-scoped ones carry the test's namespace (no clash)."""

    namespace: str
    flavor: str
    cluster_queue: str
    local_queue: str = "team"


def kueue_object(kind: str, name: str, spec: dict[str, Any] | None = None, **top: Any) -> dict:
    body = {
        "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        **top,
    }
    return {**body, "spec": spec} if spec is not None else body


def _active(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Active" and c["status"] == "True" for c in conditions)


@contextlib.contextmanager
def gpu_queues(
    custom: Any,
    namespace: str,
    *,
    gpus: int,
    flavor_spec: dict[str, Any],
    cpu: str = "16",
    memory: str = "256Gi",
    **extra: Any,
) -> Iterator[Queues]:
    """Flavor `<namespace>-gpu` (`flavor_spec`: its node labels, tolerations), ClusterQueue
    `<namespace>-cq` serving only `namespace` with `gpus` GPUs of quota (`extra`: more of
    its spec, e.g. preemption), LocalQueue `team`."""
    q = Queues(namespace, f"{namespace}-gpu", f"{namespace}-cq")
    g, v = KUEUE_GROUP, KUEUE_VERSION
    custom.create_cluster_custom_object(
        g, v, "resourceflavors", kueue_object("ResourceFlavor", q.flavor, flavor_spec)
    )
    quota = [
        {"name": "cpu", "nominalQuota": cpu},
        {"name": "memory", "nominalQuota": memory},
        {"name": GPU, "nominalQuota": str(gpus)},
    ]
    custom.create_cluster_custom_object(
        g, v, "clusterqueues",
        kueue_object("ClusterQueue", q.cluster_queue, {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", GPU],
                "flavors": [{"name": q.flavor, "resources": quota}],
            }],
            **extra,
        }),
    )  # fmt: skip
    custom.create_namespaced_custom_object(
        g, v, namespace, "localqueues",
        kueue_object("LocalQueue", q.local_queue, {"clusterQueue": q.cluster_queue}),
    )  # fmt: skip
    try:
        # Kueue's queue controllers mark both queues Active once the flavor exists.
        deadline = time.monotonic() + 30
        while not (
            _active(custom.get_cluster_custom_object(g, v, "clusterqueues", q.cluster_queue))
            and _active(
                custom.get_namespaced_custom_object(g, v, namespace, "localqueues", q.local_queue)
            )
        ):
            if time.monotonic() > deadline:
                cq = custom.get_cluster_custom_object(g, v, "clusterqueues", q.cluster_queue)
                raise AssertionError(f"queues not Active; ClusterQueue: {cq.get('status')}")
            time.sleep(0.05)
        yield q
    finally:
        # Not waited for: their finalizers go once the namespace's workloads are gone.
        with contextlib.suppress(ApiException):
            custom.delete_cluster_custom_object(g, v, "clusterqueues", q.cluster_queue)
            custom.delete_cluster_custom_object(g, v, "resourceflavors", q.flavor)
