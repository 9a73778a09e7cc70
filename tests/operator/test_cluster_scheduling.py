"""Gang scheduling with a served PodGroup API (scheduler-plugins' CRD; Kubernetes' own,
acted on by the real kube-scheduler with kwok's fake GPU nodes), and a pod stuck
Terminating on a dead node."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from lmjob_cli.localcluster.kwok import TOLERATION, Kwok, build_fake_node
from tests.operator.harness import (
    condition,
    create_job,
    job_status,
    live_pod_names,
    phase_is,
    pods_of,
    run_pods,
    wait_for,
)

SPEC = {"command": ["train"], "workers": {"replicas": 3, "minReplicas": 2, "maxReplicas": 4}}


@pytest.fixture
def podgroup_api(kube) -> Iterator[None]:
    """scheduling.x-k8s.io/v1alpha1 PodGroup served (the CRD only: no coscheduler runs here)."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "podgroups.scheduling.x-k8s.io"},
        "spec": {
            "group": "scheduling.x-k8s.io",
            "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    try:
        kube.apiext.create_custom_resource_definition(crd)
        created = True
    except ApiException as err:
        if err.status != 409:
            raise
        created = False

    def established() -> bool:
        got = kube.apiext.read_custom_resource_definition("podgroups.scheduling.x-k8s.io")
        return any(
            c.type == "Established" and c.status == "True" for c in got.status.conditions or []
        )

    wait_for(established, what="PodGroup CRD established")
    yield
    if created:
        kube.apiext.delete_custom_resource_definition("podgroups.scheduling.x-k8s.io")


def test_gang_creates_pod_group(podgroup_api, operator, kube, namespace) -> None:
    # Kubernetes' own PodGroup is served too (and preferred): ask for this flavour.
    gang = {"gang": True, "gangApi": "SchedulerPlugins"}
    create_job(kube.custom, namespace, "g", {**SPEC, "scheduling": gang})
    group = wait_for(
        lambda: _get(
            lambda: kube.custom.get_namespaced_custom_object(
                "scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups", "g"
            )
        ),
        what="PodGroup",
    )
    assert group["spec"]["minMember"] == 2
    assert group["metadata"]["ownerReferences"][0]["name"] == "g"
    pods = wait_for(lambda: len(p := pods_of(kube.core, namespace, "g")) == 3 and p)
    assert {p.metadata.labels["scheduling.x-k8s.io/pod-group"] for p in pods} == {"g"}
    cond = wait_for(lambda: condition(job_status(kube.custom, namespace, "g"), "GangScheduling"))
    # No node here: once the scheduler has tried, the condition carries its message.
    assert cond["reason"] in ("PodGroupCreated", "Unschedulable"), cond
    assert cond["message"].startswith("scheduling.x-k8s.io/v1alpha1 PodGroup g"), cond


@pytest.fixture
def kwok(control_plane, kube, tmp_path) -> Iterator[Callable[[str], None]]:
    """kwok playing the kubelet of fake nodes; yields `add_node(name)`: a Ready node with
    8 nvidia.com/gpu. The nodes are deleted after the test."""
    fake = Kwok(control_plane, tmp_path / "kwok")
    fake.start()
    names: list[str] = []
    suffix = secrets.token_hex(3)

    def add_node(name: str) -> None:
        names.append(f"{name}-{suffix}")
        kube.core.create_node(build_fake_node(names[-1], gpus=8))
        fake.wait_ready(kube.core, names[-1])

    try:
        yield add_node
    finally:
        for name in names:
            kube.core.delete_node(name)
        fake.stop()


# Four workers of 8 GPUs each, placeable only on the fake nodes.
GPU_JOB = {
    "command": ["train"],
    "workers": {
        "replicas": 4,
        "resources": {"limits": {"nvidia.com/gpu": 8}},
        "template": {"spec": {"tolerations": [TOLERATION]}},
    },
}


def _bound(core, namespace: str, job: str) -> list[str]:
    return [p.spec.node_name for p in pods_of(core, namespace, job) if p.spec.node_name]


def test_native_gang_binds_all_workers_or_none(kwok, operator, kube, namespace) -> None:
    for i in range(3):
        kwok(f"gpu{i}")

    # The control: without a gang, three of the four workers bind and one waits.
    create_job(kube.custom, namespace, "solo", GPU_JOB)
    wait_for(lambda: len(_bound(kube.core, namespace, "solo")) == 3, what="3 of 4 bound")
    kube.custom.delete_namespaced_custom_object(
        "lmjob.dev", "v1alpha1", namespace, "largemodeljobs", "solo"
    )
    wait_for(lambda: not pods_of(kube.core, namespace, "solo"), what="solo's pods gone")

    create_job(kube.custom, namespace, "gang", {**GPU_JOB, "scheduling": {"gang": True}})
    group = wait_for(
        lambda: _get(
            lambda: kube.custom.get_namespaced_custom_object(
                "scheduling.k8s.io", "v1alpha2", namespace, "podgroups", "gang"
            )
        ),
        what="Kubernetes' PodGroup",
    )
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 4}}
    # The scheduler tried and said why; the job says it too, and no worker holds GPUs.
    cond = wait_for(
        lambda: (
            c
            if (c := condition(job_status(kube.custom, namespace, "gang"), "GangScheduling")).get(
                "reason"
            )
            == "Unschedulable"
            else None
        ),
        what="the scheduler's reason in the job's conditions",
    )
    assert cond["status"] == "False" and "gang of 4 workers" in cond["message"], cond
    assert "unschedulable" in cond["message"], cond  # kube-scheduler's own words follow
    pods = pods_of(kube.core, namespace, "gang")
    assert [p.spec.scheduling_group.pod_group_name for p in pods] == ["gang"] * 4
    assert _bound(kube.core, namespace, "gang") == []

    kwok("gpu3")
    nodes = wait_for(
        lambda: len(b := _bound(kube.core, namespace, "gang")) == 4 and b,
        what="all four workers bound",
    )
    assert len(set(nodes)) == 4
    cond = wait_for(
        lambda: (
            c
            if (c := condition(job_status(kube.custom, namespace, "gang"), "GangScheduling")).get(
                "status"
            )
            == "True"
            else None
        ),
        what="GangScheduling True once placed",
    )
    assert cond["reason"] == "PodGroupCreated"


def _get(read):
    try:
        return read()
    except ApiException as err:
        if err.status == 404:
            return None
        raise


@pytest.fixture
def dead_node(kube) -> Iterator[str]:
    """A Node no kubelet answers for; tainted so the scheduler never picks it by itself."""
    name = f"dead-{secrets.token_hex(3)}"
    kube.core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1NodeSpec(
                taints=[client.V1Taint(key="lmjob.dev/test", value="dead", effect="NoSchedule")]
            ),
        )
    )
    yield name
    kube.core.delete_node(name)


def test_pod_stuck_terminating_on_a_dead_node_is_replaced(
    operator, kube, namespace, dead_node
) -> None:
    create_job(kube.custom, namespace, "st", SPEC)
    wait_for(lambda: len(live_pod_names(kube.core, namespace, "st")) == 3)
    target = client.V1ObjectReference(kind="Node", name=dead_node)
    kube.core.create_namespaced_pod_binding(
        "st-worker-1",
        namespace,
        client.V1Binding(metadata=client.V1ObjectMeta(name="st-worker-1"), target=target),
        _preload_content=False,  # the answer is a Status, which the client cannot parse as a Binding
    )
    run_pods(kube.core, namespace, "st")
    wait_for(phase_is(kube.custom, namespace, "st", "Running"))
    old_uid = next(
        p.metadata.uid
        for p in pods_of(kube.core, namespace, "st")
        if p.metadata.name == "st-worker-1"
    )

    # The node is gone: the pod is evicted, and with no kubelet to confirm it stays Terminating.
    kube.core.delete_namespaced_pod("st-worker-1", namespace, grace_period_seconds=1)
    pod = kube.core.read_namespaced_pod("st-worker-1", namespace)
    assert pod.metadata.deletion_timestamp is not None and pod.spec.node_name == dead_node

    # The operator force-deletes it once its grace period is long past, and replaces it.
    replacement = wait_for(
        lambda: next(
            (
                p
                for p in pods_of(kube.core, namespace, "st")
                if p.metadata.name == "st-worker-1" and p.metadata.uid != old_uid
            ),
            None,
        ),
        timeout=30,
        what="replacement of the stuck pod",
    )
    assert replacement.spec.node_name is None
    status = job_status(kube.custom, namespace, "st")
    assert status["restarts"] == 0
