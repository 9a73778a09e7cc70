"""Create a job on the real API server → its ConfigMap, Services and Pods, checked field by field;
status, printer columns, events and progress as users see them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
import yaml

from tests.operator.harness import (
    condition,
    create_job,
    free_port,
    job_status,
    live_pod_names,
    phase_is,
    pods_of,
    run_pods,
    wait_for,
)
from tests.operator.test_progress_scrape import _Metrics, exposition

SPEC = {
    "image": "registry.example/custom-trainer:7",
    "workers": {
        "replicas": 3,
        "minReplicas": 2,
        "maxReplicas": 4,
        "resources": {"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}},
        "env": [{"name": "HF_HOME", "value": "/cache"}],
        "template": {
            "metadata": {"labels": {"team": "nlp"}},
            "spec": {
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "containers": [{"name": "worker", "env": [{"name": "EXTRA", "value": "1"}]}],
            },
        },
    },
    "training": {
        "model": {"architecture": "gpt", "layers": 2, "heads": 2, "hidden": 32, "seqLen": 32},
        "data": {"source": "/data/tiny.txt", "tokenizer": "bytes"},
        "steps": 200,
    },
    "compression": {"stages": [{"name": "int8", "type": "quantize", "method": "int8-weight-only"}]},
    "storage": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}, "path": "/ckpt"},
    "metrics": {"port": 9444},
}


def test_create_makes_every_object(operator, kube, namespace, kubectl) -> None:
    job = create_job(kube.custom, namespace, "gpt", SPEC)
    uid = job["metadata"]["uid"]
    owner = {
        "api_version": "lmjob.dev/v1alpha1",
        "kind": "LargeModelJob",
        "name": "gpt",
        "uid": uid,
        "controller": True,
        "block_owner_deletion": True,
    }
    wait_for(lambda: len(live_pod_names(kube.core, namespace, "gpt")) == 3, what="3 worker pods")

    config_map = kube.core.read_namespaced_config_map("gpt-config", namespace)
    assert config_map.metadata.owner_references[0].to_dict() == owner
    trainer = yaml.safe_load(config_map.data["trainer.yaml"])
    assert trainer["jobName"] == "gpt"
    assert trainer["training"]["steps"] == 200
    assert [s["name"] for s in trainer["compression"]["stages"]] == ["int8"]

    service = kube.core.read_namespaced_service("gpt", namespace)
    assert service.spec.cluster_ip == "None"
    assert service.spec.publish_not_ready_addresses is True
    assert service.spec.selector == {"lmjob.dev/job-name": "gpt", "lmjob.dev/role": "worker"}
    assert service.metadata.owner_references[0].to_dict() == owner
    store_service = kube.core.read_namespaced_service("gpt-rendezvous", namespace)
    assert store_service.spec.ports[0].port == 29400
    store = pods_of(kube.core, namespace, "gpt", "rendezvous")
    assert [p.metadata.name for p in store] == ["gpt-rendezvous"]
    assert store[0].spec.containers[0].image == "registry.example/lmjob-trainer:test"

    pods = pods_of(kube.core, namespace, "gpt")
    assert [p.metadata.name for p in pods] == ["gpt-worker-0", "gpt-worker-1", "gpt-worker-2"]
    for index, pod in enumerate(pods):
        assert pod.metadata.owner_references[0].to_dict() == owner
        labels = pod.metadata.labels
        assert labels["lmjob.dev/job-name"] == "gpt"
        assert labels["lmjob.dev/worker-index"] == str(index)
        assert labels["team"] == "nlp"
        assert pod.spec.hostname == f"gpt-worker-{index}"
        assert pod.spec.subdomain == "gpt"
        assert pod.spec.restart_policy == "Never"
        assert pod.spec.automount_service_account_token is False
        assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
        worker = pod.spec.containers[0]
        assert worker.name == "worker"
        assert worker.image == "registry.example/custom-trainer:7"
        assert worker.command == [
            "python",
            "-m",
            "lmjob_trainer.launch",
            "--",
            "-m",
            "lmjob_trainer",
        ]
        assert worker.resources.limits == {"nvidia.com/gpu": "2", "memory": "8Gi"}
        assert worker.resources.requests == {"nvidia.com/gpu": "2", "memory": "8Gi"}  # defaulted
        env = {e.name: e.value for e in worker.env}
        assert env == {
            "PET_NNODES": "2:4",
            "PET_NPROC_PER_NODE": "2",
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": f"gpt-rendezvous.{namespace}.svc:29400",
            "PET_RDZV_ID": f"{uid}-0",
            "PET_RDZV_CONF": "is_host=false,read_timeout=300",
            "PET_MAX_RESTARTS": "10",
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "LMJOB_CONFIG": "/etc/lmjob/trainer.yaml",
            "LMJOB_CHECKPOINT_DIR": "/ckpt",
            "LMJOB_JOB_NAME": "gpt",
            "LMJOB_NAMESPACE": namespace,
            "LMJOB_METRICS_PORT": "9444",
            "LMJOB_TERMINATION_LOG": "/dev/termination-log",
            "LMJOB_CONFIG_ERROR_FILE": "/dev/shm/lmjob-config-error",
            "LMJOB_POD_NAME": None,  # from the downward API, below
            "LMJOB_NODE_NAME": None,
            "HF_HOME": "/cache",
            "EXTRA": "1",
        }
        fields = {e.name: e.value_from.field_ref.field_path for e in worker.env if e.value_from}
        assert fields == {"LMJOB_POD_NAME": "metadata.name", "LMJOB_NODE_NAME": "spec.nodeName"}
        assert worker.ports[0].container_port == 9444
        assert worker.termination_message_path == "/dev/termination-log"
        assert worker.termination_message_policy == "FallbackToLogsOnError"
        mounts = {m.mount_path: (m.name, bool(m.read_only)) for m in worker.volume_mounts}
        assert mounts == {
            "/etc/lmjob": ("lmjob-config", True),
            "/ckpt": ("lmjob-storage", False),
            "/dev/shm": ("lmjob-dshm", False),
        }
        volumes = {v.name: v for v in pod.spec.volumes}
        assert volumes["lmjob-config"].config_map.name == "gpt-config"
        assert volumes["lmjob-storage"].persistent_volume_claim.claim_name == "ckpt"
        assert volumes["lmjob-dshm"].empty_dir.medium == "Memory"

    status = wait_for(
        lambda: (
            (w := job_status(kube.custom, namespace, "gpt").get("workers", {})).get("active") == 3
            and w
        ),
        what="status.workers",
    )
    assert status == {
        "desired": 3,
        "active": 3,
        "ready": 0,
        "failed": 0,
        "selector": "lmjob.dev/job-name=gpt,lmjob.dev/role=worker",
        "summary": "3/3",
    }
    assert job_status(kube.custom, namespace, "gpt")["phase"] == "Pending"

    run_pods(kube.core, namespace, "gpt")
    # Running comes with minReplicas (2) running pods; wait for the third one too.
    status = wait_for(
        lambda: (
            (s := phase_is(kube.custom, namespace, "gpt", "Running")())
            and s["workers"]["ready"] == 3
            and s
        ),
        what="Running with 3 ready",
    )
    assert condition(status, "Running")["reason"] == "WorkersRunning"
    assert status["worldSize"] == 6
    assert status["observedGeneration"] == 1
    assert status["startTime"]
    table = kubectl("get", "lmj", "gpt", "-n", namespace, "--no-headers").stdout.split()
    assert table[:2] == ["gpt", "Running"] and table[2] == "3/3"

    events = kube.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=gpt"
    ).items
    assert {"WorkersCreated", "WorkersRunning"} <= {e.reason for e in events}


@pytest.fixture
def trainer_metrics() -> Iterator[int]:
    text = exposition(
        phases={"train": "Running", "int8": "Pending"},
        steps={"train": (120, 200, 1.5)},
        checkpoints={"train": ("/ckpt/train/step-000000100", 100)},
        job="gpt",  # the operator reads only the job's own series
    )
    handler = type("Handler", (_Metrics,), {"text": text})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_progress_reaches_status_and_columns(
    operator, kube, namespace, kubectl, trainer_metrics
) -> None:
    spec = {**SPEC, "metrics": {"port": trainer_metrics}, "workers": {"replicas": 2}}
    spec.pop("image")
    create_job(kube.custom, namespace, "gpt", spec)
    wait_for(lambda: len(live_pod_names(kube.core, namespace, "gpt")) == 2, what="2 pods")
    run_pods(kube.core, namespace, "gpt")  # podIP 127.0.0.1: the stand-in trainer answers there
    status = wait_for(
        lambda: (s := job_status(kube.custom, namespace, "gpt")).get("progress") and s,
        what="progress",
    )
    assert status["progress"]["stage"] == "train"
    assert status["progress"]["step"] == 120
    assert status["progress"]["totalSteps"] == 200
    assert status["progress"]["loss"] == 1.5
    assert status["checkpoint"] == {"latest": "/ckpt/train/step-000000100", "step": 100}
    assert [(s["name"], s["phase"]) for s in status["stages"]] == [
        ("train", "Running"),
        ("int8", "Pending"),
    ]
    assert status["worldSize"] == 4
    table = kubectl("get", "lmj", "gpt", "-n", namespace, "--no-headers").stdout.split()
    assert table[:5] == ["gpt", "Running", "2/2", "train", "120"] and table[5] == "1.5"

    metrics = operator.metrics()
    assert 'lmjob_operator_jobs{phase="Running"} 1.0' in metrics
    assert "lmjob_operator_reconcile_duration_seconds_count" in metrics
    assert 'lmjob_operator_api_calls_total{code="201",resource="pods",verb="post"} 3.0' in metrics
