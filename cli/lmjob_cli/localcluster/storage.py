"""A local cluster's storage: a default StorageClass whose claims get hostPath volumes under
the cluster's folder, and a volume holding the checkout's example data.

- `lmjob cluster up` creates StorageClass `local-path` (the default class, provisioner
  `lmjob.dev/local-path`, Immediate binding) and PersistentVolume `lmjob-examples`: a hostPath
  folder seeded with `examples/data/` that a claim names by `volumeName` (as one names an
  admin's pre-made volume on any cluster).
- Every node process runs `Provisioner`, the external provisioner of that class: for a pending
  claim of the class it creates PersistentVolume `pvc-<claim uid>`, a folder
  `volumes/<namespace>-<claim>-<uid>/` with the claim in its claimRef; the real
  controller-manager's volume controller binds the two, and kube-scheduler then places the
  claim's pods. A released volume of the class is deleted with its folder (reclaim policy
  Delete); the example volume, released, becomes Available again for the next claim (its data
  stays). All nodes run it: PV names are deterministic, so a second creator just gets a 409.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

STORAGE_CLASS = "local-path"
PROVISIONER = "lmjob.dev/local-path"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
EXAMPLES_VOLUME = "lmjob-examples"
EXAMPLES_LABEL = "lmjob.dev/examples"
ALL_MODES = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"]


def volumes_dir(state_dir: Path) -> Path:
    return state_dir / "volumes"


def _create(create: Any, body: dict[str, Any]) -> None:
    try:
        create(body)
    except ApiException as err:
        if err.status != 409:  # already there: up is idempotent
            raise


def ensure_storage(api: client.ApiClient, state_dir: Path, examples: Path | None) -> None:
    """The StorageClass and the example-data volume (seeded from `examples`), if missing."""
    _create(
        client.StorageV1Api(api).create_storage_class,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {DEFAULT_CLASS: "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        },
    )
    folder = volumes_dir(state_dir) / EXAMPLES_VOLUME
    folder.mkdir(parents=True, exist_ok=True)
    if examples is not None and examples.is_dir():
        for source in examples.iterdir():
            target = folder / source.name
            if source.is_file() and not target.exists():
                shutil.copyfile(source, target)
    _create(
        client.CoreV1Api(api).create_persistent_volume,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": EXAMPLES_VOLUME, "labels": {EXAMPLES_LABEL: "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ALL_MODES,
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder), "type": "Directory"},
            },
        },
    )


def volume_for(claim: Any, folder: Path) -> dict[str, Any]:
    """The PersistentVolume provisioned for `claim`, pre-bound to it, in `folder`."""
    request = (claim.spec.resources.requests or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{claim.metadata.uid}",
            "annotations": {PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": request},
            "accessModes": claim.spec.access_modes or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": claim.spec.storage_class_name,
            "volumeMode": claim.spec.volume_mode or "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": claim.metadata.namespace,
                "name": claim.metadata.name,
                "uid": claim.metadata.uid,
            },
            "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
        },
    }


class Provisioner:
    """The local-path class's provisioner, polling every `interval` seconds until stop()."""

    def __init__(self, core: client.CoreV1Api, state_dir: Path, interval: float = 1.0) -> None:
        self.core = core
        self.root = volumes_dir(state_dir)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="provisioner")

    def start(self) -> Provisioner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # the node goes on; the next pass retries
                log.exception("provisioner pass failed")
            self._stop.wait(self.interval)

    def sync(self) -> None:
        for claim in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if (
                claim.spec.storage_class_name == STORAGE_CLASS
                and not claim.spec.volume_name
                and claim.metadata.deletion_timestamp is None
                and claim.status.phase == "Pending"
            ):
                self._provision(claim)
        for volume in self.core.list_persistent_volume().items:
            if volume.status.phase != "Released":
                continue
            if (volume.metadata.annotations or {}).get(PROVISIONED_BY) == PROVISIONER:
                self._delete(volume)
            elif (volume.metadata.labels or {}).get(EXAMPLES_LABEL) == "true":
                # Retained data, free for the next claim that names it.
                self.core.patch_persistent_volume(
                    volume.metadata.name, {"spec": {"claimRef": None}}
                )

    def _provision(self, claim: Any) -> None:
        meta = claim.metadata
        folder = self.root / f"{meta.namespace}-{meta.name}-{meta.uid}"
        folder.mkdir(parents=True, exist_ok=True)
        _create(self.core.create_persistent_volume, volume_for(claim, folder))
        log.info("provisioned %s for claim %s/%s", folder, meta.namespace, meta.name)

    def _delete(self, volume: Any) -> None:
        path = Path(volume.spec.host_path.path) if volume.spec.host_path else None
        if path is not None and self.root in path.parents:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(ApiException):
            self.core.delete_persistent_volume(volume.metadata.name)
        log.info("deleted released volume %s", volume.metadata.name)
