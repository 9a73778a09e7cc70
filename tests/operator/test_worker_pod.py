"""build_worker_pod: env contract, command, resources, volumes and the template merge, as tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lmjob_api.env import WORKER_ENV
from lmjob_operator.config import OperatorConfig
from lmjob_operator.pod_group import POD_GROUP_APIS, gang_flavour
from lmjob_operator.rendezvous import build_rendezvous_pod
from lmjob_operator.spec_checks import check_runnable
from lmjob_operator.worker_pod import build_worker_pod, procs_per_worker
from tests.operator.factories import UID, make_job

CONFIG = OperatorConfig(trainer_image="registry.example/lmjob-trainer:1")


def pod_for(
    spec: dict[str, Any] | None = None,
    index: int = 1,
    round_: int = 0,
    save_seconds: float | None = None,
) -> dict[str, Any]:
    """The pod as the operator builds it on a cluster serving every PodGroup API."""
    job = make_job(spec)
    gang = gang_flavour(job, POD_GROUP_APIS)
    return build_worker_pod(job, index, round_, CONFIG, gang=gang, save_seconds=save_seconds)


def main_container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in main_container(pod)["env"]}


def env_names(pod: dict[str, Any]) -> list[str]:
    return [e["name"] for e in main_container(pod)["env"]]


def mounts_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in main_container(pod)["volumeMounts"]}


def volumes_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["spec"]["volumes"]}


LAUNCHER = ["python", "-m", "lmjob_trainer.launch", "--"]

# (case id, spec overrides, what to read from the pod, expected value)
CASES: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], Any], Any]] = [
    ("name", {}, lambda p: p["metadata"]["name"], "demo-worker-1"),
    ("namespace", {}, lambda p: p["metadata"]["namespace"], "ns"),
    (
        "labels",
        {},
        lambda p: {k: v for k, v in p["metadata"]["labels"].items() if k.startswith("lmjob.dev/")},
        {
            "lmjob.dev/job-name": "demo",
            "lmjob.dev/role": "worker",
            "lmjob.dev/worker-index": "1",
            "lmjob.dev/rendezvous-round": "0",
            "lmjob.dev/elastic-bounds": "2-2",
        },
    ),
    (
        "owner reference",
        {},
        lambda p: p["metadata"]["ownerReferences"],
        [
            {
                "apiVersion": "lmjob.dev/v1alpha1",
                "kind": "LargeModelJob",
                "name": "demo",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    ),
    ("hostname", {}, lambda p: p["spec"]["hostname"], "demo-worker-1"),
    ("subdomain is the headless service", {}, lambda p: p["spec"]["subdomain"], "demo"),
    ("restartPolicy", {}, lambda p: p["spec"]["restartPolicy"], "Never"),
    ("no credentials", {}, lambda p: p["spec"]["automountServiceAccountToken"], False),
    ("default image", {}, lambda p: main_container(p)["image"], CONFIG.trainer_image),
    ("own image", {"image": "me/img:2"}, lambda p: main_container(p)["image"], "me/img:2"),
    (
        "built-in trainer command",
        {},
        lambda p: main_container(p)["command"],
        [*LAUNCHER, "-m", "lmjob_trainer"],
    ),
    (
        "own command under torchrun",
        {"command": ["python", "-m", "mypkg.train", "--x"]},
        lambda p: main_container(p)["command"],
        [*LAUNCHER, "--no-python", "python", "-m", "mypkg.train", "--x"],
    ),
    ("PET_NNODES fixed", {}, lambda p: env_of(p)["PET_NNODES"], "2:2"),
    (
        "PET_NNODES elastic",
        {"workers": {"replicas": 3, "minReplicas": 2, "maxReplicas": 6}},
        lambda p: env_of(p)["PET_NNODES"],
        "2:6",
    ),
    ("PET_NPROC_PER_NODE default", {}, lambda p: env_of(p)["PET_NPROC_PER_NODE"], "1"),
    (
        "PET_NPROC_PER_NODE from GPU limit",
        {"workers": {"resources": {"limits": {"nvidia.com/gpu": 8}}}},
        lambda p: env_of(p)["PET_NPROC_PER_NODE"],
        "8",
    ),
    (
        "PET_NPROC_PER_NODE explicit",
        {"workers": {"procsPerWorker": 4, "resources": {"limits": {"nvidia.com/gpu": 8}}}},
        lambda p: env_of(p)["PET_NPROC_PER_NODE"],
        "4",
    ),
    ("PET_RDZV_BACKEND", {}, lambda p: env_of(p)["PET_RDZV_BACKEND"], "c10d"),
    (
        "PET_RDZV_ENDPOINT is the store's service",
        {},
        lambda p: env_of(p)["PET_RDZV_ENDPOINT"],
        "demo-rendezvous.ns.svc:29400",
    ),
    ("PET_RDZV_ID is uid and round", {}, lambda p: env_of(p)["PET_RDZV_ID"], f"{UID}-0"),
    ("PET_RDZV_CONF", {}, lambda p: env_of(p)["PET_RDZV_CONF"], "is_host=false,read_timeout=300"),
    ("PET_MAX_RESTARTS", {}, lambda p: env_of(p)["PET_MAX_RESTARTS"], "10"),
    ("LMJOB_CONFIG", {}, lambda p: env_of(p)["LMJOB_CONFIG"], "/etc/lmjob/trainer.yaml"),
    (
        "no LMJOB_CONFIG for own command",
        {"command": ["train"]},
        lambda p: "LMJOB_CONFIG" in env_of(p),
        False,
    ),
    (
        "LMJOB_CHECKPOINT_DIR",
        {"storage": {"path": "/ckpt"}},
        lambda p: env_of(p)["LMJOB_CHECKPOINT_DIR"],
        "/ckpt",
    ),
    ("LMJOB_JOB_NAME", {}, lambda p: env_of(p)["LMJOB_JOB_NAME"], "demo"),
    ("LMJOB_NAMESPACE", {}, lambda p: env_of(p)["LMJOB_NAMESPACE"], "ns"),
    (
        "LMJOB_METRICS_PORT",
        {"metrics": {"port": 9555}},
        lambda p: env_of(p)["LMJOB_METRICS_PORT"],
        "9555",
    ),
    (
        "user env after the contract",
        {"workers": {"env": [{"name": "HF_HOME", "value": "/cache"}]}},
        lambda p: env_names(p)[-1],
        "HF_HOME",
    ),
    (
        "GPU resources",
        {"workers": {"resources": {"limits": {"nvidia.com/gpu": 8, "memory": "64Gi"}}}},
        lambda p: main_container(p)["resources"],
        {"limits": {"nvidia.com/gpu": "8", "memory": "64Gi"}},
    ),
    (
        "metrics port",
        {"metrics": {"port": 9555}},
        lambda p: main_container(p)["ports"][0],
        {"name": "metrics", "containerPort": 9555, "protocol": "TCP"},
    ),
    (
        "config mounted read-only",
        {},
        lambda p: mounts_of(p)["/etc/lmjob"],
        {"name": "lmjob-config", "mountPath": "/etc/lmjob", "readOnly": True},
    ),
    (
        "config volume",
        {},
        lambda p: volumes_of(p)["lmjob-config"],
        {"name": "lmjob-config", "configMap": {"name": "demo-config"}},
    ),
    (
        "storage defaults to emptyDir",
        {},
        lambda p: volumes_of(p)["lmjob-storage"],
        {"name": "lmjob-storage", "emptyDir": {}},
    ),
    (
        "storage volume",
        {"storage": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}, "path": "/ckpt"}},
        lambda p: (volumes_of(p)["lmjob-storage"], mounts_of(p)["/ckpt"]["name"]),
        (
            {"name": "lmjob-storage", "persistentVolumeClaim": {"claimName": "ckpt"}},
            "lmjob-storage",
        ),
    ),
    (
        "memory-backed /dev/shm",
        {},
        lambda p: (volumes_of(p)["lmjob-dshm"], mounts_of(p)["/dev/shm"]["name"]),
        ({"name": "lmjob-dshm", "emptyDir": {"medium": "Memory"}}, "lmjob-dshm"),
    ),
    (
        "scheduler and priority",
        {"scheduling": {"schedulerName": "my-sched", "priorityClassName": "high"}},
        lambda p: (p["spec"]["schedulerName"], p["spec"]["priorityClassName"]),
        ("my-sched", "high"),
    ),
    (
        "template metadata merged, ours win",
        {
            "workers": {
                "template": {
                    "metadata": {
                        "labels": {"team": "a", "lmjob.dev/job-name": "evil"},
                        "annotations": {"note": "x"},
                    }
                }
            }
        },
        lambda p: (
            p["metadata"]["labels"]["team"],
            p["metadata"]["labels"]["lmjob.dev/job-name"],
            p["metadata"]["annotations"]["note"],
        ),
        ("a", "demo", "x"),
    ),
    (
        "template spec fields kept",
        {
            "workers": {
                "template": {
                    "spec": {
                        "tolerations": [{"key": "gpu", "operator": "Exists"}],
                        "nodeSelector": {"pool": "a100"},
                        "restartPolicy": "Never",
                    }
                }
            }
        },
        lambda p: (p["spec"]["tolerations"], p["spec"]["nodeSelector"], p["spec"]["restartPolicy"]),
        ([{"key": "gpu", "operator": "Exists"}], {"pool": "a100"}, "Never"),
    ),
    (
        "termination message: the trainer writes where the kubelet reads",
        {},
        lambda p: (
            main_container(p)["terminationMessagePath"],
            env_of(p)["LMJOB_TERMINATION_LOG"],
            main_container(p)["terminationMessagePolicy"],
        ),
        ("/dev/termination-log", "/dev/termination-log", "FallbackToLogsOnError"),
    ),
    (
        "termination message path from the template",
        {
            "workers": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "worker",
                                "terminationMessagePath": "/tmp/last-words",
                                "terminationMessagePolicy": "File",
                            }
                        ]
                    }
                }
            }
        },
        lambda p: (
            main_container(p)["terminationMessagePath"],
            env_of(p)["LMJOB_TERMINATION_LOG"],
            main_container(p)["terminationMessagePolicy"],
        ),
        ("/tmp/last-words", "/tmp/last-words", "File"),
    ),
    (
        "template may re-enable the token",
        {"workers": {"template": {"spec": {"automountServiceAccountToken": True}}}},
        lambda p: p["spec"]["automountServiceAccountToken"],
        True,
    ),
    (
        "worker container merges into ours",
        {
            "workers": {
                "resources": {"limits": {"nvidia.com/gpu": 1}},
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "worker",
                                "imagePullPolicy": "Always",
                                "env": [{"name": "EXTRA", "value": "1"}],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                                "resources": {"limits": {"memory": "8Gi", "nvidia.com/gpu": 4}},
                            },
                            {"name": "sidecar", "image": "busybox"},
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                    }
                },
            }
        },
        lambda p: (
            [c["name"] for c in p["spec"]["containers"]],
            main_container(p)["imagePullPolicy"],
            env_of(p)["EXTRA"],
            mounts_of(p)["/data"]["name"],
            main_container(p)["resources"]["limits"],
            "data" in volumes_of(p),
        ),
        (
            ["worker", "sidecar"],
            "Always",
            "1",
            "data",
            {"memory": "8Gi", "nvidia.com/gpu": "1"},
            True,
        ),
    ),
    (
        "gang: Kubernetes' PodGroup by default, linked by spec.schedulingGroup",
        {"scheduling": {"gang": True}},
        lambda p: (
            p["spec"]["schedulingGroup"],
            "scheduling.x-k8s.io/pod-group" in p["metadata"]["labels"],
        ),
        ({"podGroupName": "demo"}, False),
    ),
    (
        "gang: scheduler-plugins label",
        {"scheduling": {"gang": True, "gangApi": "SchedulerPlugins"}},
        lambda p: (
            p["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"],
            "schedulingGroup" in p["spec"],
        ),
        ("demo", False),
    ),
    (
        "no gang: no scheduling group",
        {},
        lambda p: "schedulingGroup" in p["spec"],
        False,
    ),
    (
        "gang: volcano annotation",
        {"scheduling": {"gang": True, "schedulerName": "volcano", "queue": "q"}},
        lambda p: (
            p["metadata"]["annotations"]["scheduling.k8s.io/group-name"],
            "kueue.x-k8s.io/queue-name" in p["metadata"]["labels"],
        ),
        ("demo", False),
    ),
    (
        # The job's Kueue Workload queues it (kueue_sync): its pods are not queued again.
        "no Kueue pod labels for a queued job",
        {"workers": {"replicas": 3}, "scheduling": {"queue": "team-a"}},
        lambda p: sorted(
            k
            for k in [*p["metadata"]["labels"], *p["metadata"].get("annotations", {})]
            if k.startswith("kueue.x-k8s.io/")
        ),
        [],
    ),
]


@pytest.mark.parametrize(
    ("spec", "read", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_worker_pod(
    spec: dict[str, Any], read: Callable[[dict[str, Any]], Any], expected: Any
) -> None:
    assert read(pod_for(spec)) == expected


def test_every_contract_variable_is_set() -> None:
    assert set(WORKER_ENV) <= set(env_of(pod_for()))


def test_round_changes_rendezvous_id_only() -> None:
    first, later = env_of(pod_for(round_=0)), env_of(pod_for(round_=3))
    assert later["PET_RDZV_ID"] == f"{UID}-3"
    assert {k: v for k, v in first.items() if k != "PET_RDZV_ID"} == {
        k: v for k, v in later.items() if k != "PET_RDZV_ID"
    }


def test_builder_is_pure() -> None:
    job = make_job(
        {"workers": {"template": {"spec": {"containers": [{"name": "worker", "env": []}]}}}}
    )
    before = job.model_dump()
    assert build_worker_pod(job, 0, 0, CONFIG) == build_worker_pod(job, 0, 0, CONFIG)
    assert job.model_dump() == before


@pytest.mark.parametrize(
    ("limits", "expected"),
    [({}, 1), ({"nvidia.com/gpu": 2}, 2), ({"nvidia.com/gpu": "4"}, 4), ({"cpu": 8}, 1)],
)
def test_procs_per_worker_default(limits: dict[str, Any], expected: int) -> None:
    assert procs_per_worker(make_job({"workers": {"resources": {"limits": limits}}})) == expected


def test_runnable_template_has_no_problems() -> None:
    job = make_job(
        {
            "workers": {
                "template": {
                    "spec": {
                        "containers": [{"name": "worker", "env": [{"name": "OK", "value": "1"}]}]
                    }
                }
            }
        }
    )
    assert check_runnable(job) == []


@pytest.mark.parametrize(
    ("containers", "sidecars"),
    [
        # A Kubeflow-style template: its only container is the worker, whatever its name.
        ([{"name": "pytorch", "env": [{"name": "A", "value": "1"}]}], []),
        (
            [
                {"name": "log-shipper", "image": "fluent/fluent-bit:3"},
                {"name": "worker", "env": [{"name": "A", "value": "1"}]},
            ],
            ["log-shipper"],
        ),
    ],
)
def test_template_worker_container_merges(
    containers: list[dict[str, Any]], sidecars: list[str]
) -> None:
    job = make_job({"workers": {"template": {"spec": {"containers": containers}}}})
    pod = build_worker_pod(job, 0, 0, OperatorConfig())
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["worker", *sidecars]
    worker = pod["spec"]["containers"][0]
    assert worker["image"] == OperatorConfig().trainer_image
    assert {"name": "A", "value": "1"} in worker["env"]
    assert all(c.get("image") for c in pod["spec"]["containers"])


RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _template(pod: dict[str, Any] | None = None, *containers: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if pod is not None:
        spec["securityContext"] = pod
    if containers:
        spec["containers"] = list(containers)
    return {"workers": {"template": {"spec": spec}}}


def _security(pod: dict[str, Any]) -> tuple[Any, ...]:
    """(pod securityContext, each container's, each init container's)."""
    return (
        pod["spec"]["securityContext"],
        [c["securityContext"] for c in pod["spec"]["containers"]],
        [c["securityContext"] for c in pod["spec"].get("initContainers", [])],
    )


SIDECAR = {"name": "log-shipper", "image": "fluent/fluent-bit:3"}

# (case id, spec overrides, expected (pod, [containers], [init containers]) securityContexts)
SECURITY_CASES: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    ("restricted by default", {}, (RESTRICTED_POD, [RESTRICTED_CONTAINER], [])),
    (
        "template pod securityContext wins key by key",
        _template({"runAsUser": 2000, "fsGroup": 3000, "seccompProfile": {"type": "Localhost"}}),
        (
            {
                "runAsNonRoot": True,
                "runAsUser": 2000,
                "fsGroup": 3000,
                "seccompProfile": {"type": "Localhost"},
            },
            [RESTRICTED_CONTAINER],
            [],
        ),
    ),
    (
        "template may allow root",
        _template({"runAsNonRoot": False}),
        ({**RESTRICTED_POD, "runAsNonRoot": False}, [RESTRICTED_CONTAINER], []),
    ),
    (
        "worker container asks for privilege",
        _template(None, {"name": "trainer", "securityContext": {"privileged": True}}),
        # No allowPrivilegeEscalation false: the API server refuses it beside privileged.
        (RESTRICTED_POD, [{"capabilities": {"drop": ["ALL"]}, "privileged": True}], []),
    ),
    (
        "CAP_SYS_ADMIN drops the escalation default too",
        _template(
            None, {"name": "worker", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}
        ),
        (RESTRICTED_POD, [{"capabilities": {"add": ["SYS_ADMIN"]}}], []),
    ),
    (
        "worker container replaces capabilities and escalation",
        _template(
            None,
            {
                "name": "worker",
                "securityContext": {
                    "allowPrivilegeEscalation": True,
                    "capabilities": {"add": ["SYS_PTRACE"]},
                },
            },
            SIDECAR,
        ),
        (
            RESTRICTED_POD,
            [
                {"allowPrivilegeEscalation": True, "capabilities": {"add": ["SYS_PTRACE"]}},
                RESTRICTED_CONTAINER,
            ],
            [],
        ),
    ),
    (
        "sidecars and init containers are restricted too, theirs wins",
        {
            "workers": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "worker"},
                            {**SIDECAR, "securityContext": {"readOnlyRootFilesystem": True}},
                        ],
                        "initContainers": [{"name": "fetch", "image": "busybox"}],
                    }
                }
            }
        },
        (
            RESTRICTED_POD,
            [RESTRICTED_CONTAINER, {**RESTRICTED_CONTAINER, "readOnlyRootFilesystem": True}],
            [RESTRICTED_CONTAINER],
        ),
    ),
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [c[1:] for c in SECURITY_CASES],
    ids=[c[0] for c in SECURITY_CASES],
)
def test_security_context(spec: dict[str, Any], expected: tuple[Any, ...]) -> None:
    assert _security(pod_for(spec)) == expected


# (case id, spec overrides, expected (pod, [container]) securityContexts of the store)
RENDEZVOUS_SECURITY_CASES: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    ("restricted by default", {}, (RESTRICTED_POD, [RESTRICTED_CONTAINER], [])),
    (
        "takes the template's pod securityContext",
        _template({"runAsUser": 2000}),
        ({**RESTRICTED_POD, "runAsUser": 2000}, [RESTRICTED_CONTAINER], []),
    ),
    (
        "not the worker container's",
        _template(None, {"name": "worker", "securityContext": {"privileged": True}}),
        (RESTRICTED_POD, [RESTRICTED_CONTAINER], []),
    ),
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [c[1:] for c in RENDEZVOUS_SECURITY_CASES],
    ids=[c[0] for c in RENDEZVOUS_SECURITY_CASES],
)
def test_rendezvous_security_context(spec: dict[str, Any], expected: tuple[Any, ...]) -> None:
    assert _security(build_rendezvous_pod(make_job(spec), CONFIG)) == expected


def test_config_error_marker_is_on_the_shm_volume() -> None:
    pod = pod_for()
    marker = env_of(pod)["LMJOB_CONFIG_ERROR_FILE"]
    assert marker.startswith(mounts_of(pod)["/dev/shm"]["mountPath"] + "/")


def test_pod_and_node_names_come_from_the_downward_api() -> None:
    """The trainer labels stragglers with its pod and node without Kubernetes credentials."""
    env = {e["name"]: e for e in main_container(pod_for())["env"]}
    assert env["LMJOB_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["LMJOB_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


@pytest.mark.parametrize(
    ("workers", "save_seconds", "expected"),
    [
        ({}, None, None),  # nothing measured yet: Kubernetes' default
        ({}, 4.0, 30),  # a quick save: the 30 s floor
        ({}, 100.0, 160),  # 100 × 1.5 + 10
        ({"terminationGracePeriodSeconds": 20}, 100.0, 20),  # explicit wins (and warns)
        ({"template": {"spec": {"terminationGracePeriodSeconds": 45}}}, 100.0, 45),
    ],
)
def test_grace_period(workers: dict, save_seconds: float | None, expected: int | None) -> None:
    pod = pod_for({"workers": workers}, save_seconds=save_seconds)
    assert pod["spec"].get("terminationGracePeriodSeconds") == expected
