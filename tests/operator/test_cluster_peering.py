"""Two operator replicas with kopf peering: one works, the other waits and takes over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operator.harness import (
    OPERATOR_ENV,
    OperatorProcess,
    create_job,
    live_pod_names,
    patch_spec,
    wait_for,
)

PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def peering(kube, namespace: str) -> Iterator[None]:
    """The peering CRD and the `lmjob-operator` peering object (the chart installs both)."""
    from kubernetes.client.rest import ApiException

    created = False
    try:
        kube.apiext.create_custom_resource_definition(PEERING_CRD)
        created = True
    except ApiException as err:
        if err.status != 409:  # already there (e.g. from the chart's tests): leave it be
            raise

    def established() -> bool:
        crd = kube.apiext.read_custom_resource_definition("kopfpeerings.kopf.dev")
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for(established, what="peering CRD")
    body = {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": "lmjob-operator"},
    }
    wait_for(lambda: _create(kube, namespace, body), what="peering object")
    yield
    if created:  # the session's control plane is shared with other suites
        kube.apiext.delete_custom_resource_definition("kopfpeerings.kopf.dev")


def _create(kube, namespace: str, body: dict) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        kube.custom.create_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", body
        )
        return True
    except ApiException as err:
        return err.status == 409


def test_one_replica_active_then_failover(
    peering, operator_kubeconfig: Path, kube, namespace, tmp_path
) -> None:
    def replica(name: str, priority: int) -> OperatorProcess:
        return OperatorProcess(
            operator_kubeconfig,
            [namespace],
            tmp_path / f"{name}.log",
            OPERATOR_ENV,
            extra_args=["--priority", str(priority)],
        )

    active, standby = replica("active", 200), replica("standby", 100)
    active.start()
    standby.start()
    try:
        wait_for(lambda: "Pausing operations" in standby.log(), timeout=30, what="standby pauses")
        create_job(kube.custom, namespace, "ha", {"command": ["t"], "workers": {"replicas": 2}})
        wait_for(
            lambda: len(live_pod_names(kube.core, namespace, "ha")) == 2,
            what="pods by the active one",
        )
        assert "deleted pod" not in standby.log() and "Handler 'job_changed'" not in standby.log()

        active.stop()  # a graceful exit withdraws it from the peering object
        wait_for(lambda: "Resuming operations" in standby.log(), timeout=30, what="standby resumes")
        patch_spec(kube.custom, namespace, "ha", {"workers": {"replicas": 3}})
        wait_for(
            lambda: len(live_pod_names(kube.core, namespace, "ha")) == 3,
            timeout=30,
            what="standby works",
        )
    finally:
        active.stop()
        standby.stop()
    for process in (active, standby):
        assert "Traceback" not in process.log(), process.log()[-3000:]
