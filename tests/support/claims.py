"""A PersistentVolumeClaim bound to a hostPath volume of a process node's folder: how the
e2e tests (and the cluster benchmarks) give a job storage that outlives its pods."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def bind_host_claim(core: Any, namespace: str, folder: Path, claim: str = "ckpt") -> None:
    """Create claim `claim` in `namespace`, bound to a ReadWriteMany hostPath volume at
    `folder` (the volume named as the namespace); returns once the claim is Bound (60 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": namespace},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder)},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": namespace,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    deadline = time.monotonic() + 60
    while core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase != "Bound":
        if time.monotonic() > deadline:
            raise TimeoutError(f"claim {namespace}/{claim} not Bound after 60 s")
        time.sleep(0.1)
