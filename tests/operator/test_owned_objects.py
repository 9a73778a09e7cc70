"""Builders of a job's other objects: ConfigMap, Services, rendezvous pod, PodGroup, PodMonitor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from lmjob_api.trainer_config import parse_trainer_config
from lmjob_operator.config import OperatorConfig
from lmjob_operator.config_map import build_config_map
from lmjob_operator.pod_group import POD_GROUP_APIS, build_pod_group, gang_flavour
from lmjob_operator.pod_monitor import build_pod_monitor
from lmjob_operator.rendezvous import build_rendezvous_pod, build_rendezvous_service
from lmjob_operator.service import build_service
from tests.operator.factories import UID, make_job

CONFIG = OperatorConfig(trainer_image="reg/trainer:1", rendezvous_image="")

OWNER = [
    {
        "apiVersion": "lmjob.dev/v1alpha1",
        "kind": "LargeModelJob",
        "name": "demo",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
]

# (case id, builder, spec, read, expected)
CASES: list[tuple[str, Callable[[Any], dict], dict, Callable[[dict], Any], Any]] = [
    ("config map name", build_config_map, {}, lambda o: o["metadata"]["name"], "demo-config"),
    ("config map owner", build_config_map, {}, lambda o: o["metadata"]["ownerReferences"], OWNER),
    (
        "config map holds the trainer config",
        build_config_map,
        {},
        lambda o: parse_trainer_config(yaml.safe_load(o["data"]["trainer.yaml"])).job_name,
        "demo",
    ),
    ("service name", build_service, {}, lambda o: o["metadata"]["name"], "demo"),
    ("service headless", build_service, {}, lambda o: o["spec"]["clusterIP"], "None"),
    (
        "service not-ready pods",
        build_service,
        {},
        lambda o: o["spec"]["publishNotReadyAddresses"],
        True,
    ),
    (
        "service selects workers",
        build_service,
        {},
        lambda o: o["spec"]["selector"],
        {"lmjob.dev/job-name": "demo", "lmjob.dev/role": "worker"},
    ),
    ("service owner", build_service, {}, lambda o: o["metadata"]["ownerReferences"], OWNER),
    (
        "store service",
        build_rendezvous_service,
        {},
        lambda o: (o["metadata"]["name"], o["spec"]["ports"][0]["port"]),
        ("demo-rendezvous", 29400),
    ),
    (
        "store service selects the store",
        build_rendezvous_service,
        {},
        lambda o: o["spec"]["selector"],
        {"lmjob.dev/job-name": "demo", "lmjob.dev/role": "rendezvous"},
    ),
    (
        "store pod command",
        lambda job: build_rendezvous_pod(job, CONFIG),
        {},
        lambda o: o["spec"]["containers"][0]["command"],
        ["python", "-m", "lmjob_trainer.rendezvous_store", "--port", "29400"],
    ),
    (
        "store pod image is the trainer image",
        lambda job: build_rendezvous_pod(job, CONFIG),
        {"image": "user/own:1", "command": ["x"]},
        lambda o: o["spec"]["containers"][0]["image"],
        "reg/trainer:1",
    ),
    (
        "store pod shares placement",
        lambda job: build_rendezvous_pod(job, CONFIG),
        {
            "workers": {
                "template": {
                    "spec": {
                        "tolerations": [{"key": "gpu", "operator": "Exists"}],
                        "hostNetwork": True,
                    }
                }
            }
        },
        lambda o: (o["spec"]["tolerations"], "hostNetwork" in o["spec"]),
        ([{"key": "gpu", "operator": "Exists"}], False),
    ),
    (
        "store pod never restarts in place",
        lambda job: build_rendezvous_pod(job, CONFIG),
        {},
        lambda o: o["spec"]["restartPolicy"],
        "Never",
    ),
    (
        "store pod owner",
        lambda job: build_rendezvous_pod(job, CONFIG),
        {},
        lambda o: o["metadata"]["ownerReferences"],
        OWNER,
    ),
    (
        "pod group: kubernetes (served, preferred)",
        lambda job: build_pod_group(job, gang_flavour(job, POD_GROUP_APIS)),
        {
            "workers": {"replicas": 4, "minReplicas": 2, "maxReplicas": 8},
            "scheduling": {"gang": True},
        },
        lambda o: (o["apiVersion"], o["spec"]),
        ("scheduling.k8s.io/v1alpha2", {"schedulingPolicy": {"gang": {"minCount": 2}}}),
    ),
    (
        "pod group: scheduler-plugins when Kubernetes' is not served",
        lambda job: build_pod_group(job, gang_flavour(job, ["scheduler-plugins", "volcano"])),
        {
            "workers": {"replicas": 4, "minReplicas": 2, "maxReplicas": 8},
            "scheduling": {"gang": True},
        },
        lambda o: (o["apiVersion"], o["spec"]["minMember"]),
        ("scheduling.x-k8s.io/v1alpha1", 2),
    ),
    (
        "pod group: scheduler-plugins asked for",
        lambda job: build_pod_group(job, gang_flavour(job, POD_GROUP_APIS)),
        {
            "workers": {"replicas": 4, "minReplicas": 2, "maxReplicas": 8},
            "scheduling": {"gang": True, "gangApi": "SchedulerPlugins"},
        },
        lambda o: (o["apiVersion"], o["spec"]["minMember"]),
        ("scheduling.x-k8s.io/v1alpha1", 2),
    ),
    (
        "pod group: volcano",
        lambda job: build_pod_group(job, gang_flavour(job, POD_GROUP_APIS)),
        {
            "scheduling": {
                "gang": True,
                "schedulerName": "volcano",
                "queue": "team-a",
                "priorityClassName": "hi",
            }
        },
        lambda o: (o["apiVersion"], o["spec"]),
        (
            "scheduling.volcano.sh/v1beta1",
            {"minMember": 2, "queue": "team-a", "priorityClassName": "hi"},
        ),
    ),
    (
        "pod monitor",
        build_pod_monitor,
        {"metrics": {"podMonitor": True}},
        lambda o: (
            o["apiVersion"],
            o["spec"]["podMetricsEndpoints"],
            o["spec"]["selector"]["matchLabels"],
        ),
        (
            "monitoring.coreos.com/v1",
            [{"port": "metrics", "path": "/metrics", "honorLabels": True}],
            {"lmjob.dev/job-name": "demo", "lmjob.dev/role": "worker"},
        ),
    ),
]


@pytest.mark.parametrize(
    ("build", "spec", "read", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_owned_object(
    build: Callable[[Any], dict], spec: dict, read: Callable[[dict], Any], expected: Any
) -> None:
    assert read(build(make_job(spec))) == expected


@pytest.mark.parametrize(
    ("scheduling", "served", "expected"),
    [
        ({}, POD_GROUP_APIS, None),
        ({"gang": True}, POD_GROUP_APIS, "kubernetes"),
        ({"gang": True}, ["scheduler-plugins"], "scheduler-plugins"),
        ({"gang": True}, ["volcano"], None),
        ({"gang": True, "gangApi": "SchedulerPlugins"}, POD_GROUP_APIS, "scheduler-plugins"),
        ({"gang": True, "gangApi": "Kubernetes"}, ["scheduler-plugins"], None),
        ({"gang": True, "schedulerName": "volcano"}, POD_GROUP_APIS, "volcano"),
        ({"gang": True, "schedulerName": "volcano"}, ["kubernetes"], None),
    ],
)
def test_gang_flavour(scheduling: dict, served: Any, expected: str | None) -> None:
    assert gang_flavour(make_job({"scheduling": scheduling}), served) == expected
