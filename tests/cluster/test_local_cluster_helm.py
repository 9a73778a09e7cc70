"""The README's third path, the user's way: `lmjob cluster up`, `helm install` of the chart,
`kubectl apply -f` of the local-cluster Shakespeare example (shrunk to seconds), then
`lmjob cluster down`.

The operator runs as the chart's Deployment pod on the local node, with a token the node got
from the TokenRequest API for the chart's ServiceAccount: the API server's audit log names
that account (and the pod the token is bound to) for the job's status writes, and the same
token is refused what the chart's RBAC does not grant.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from lmjob_cli.localcluster import lifecycle
from lmjob_cli.localcluster.binaries import find_binaries
from tests.chart.helm_runs import CHART, run_helm
from tests.cluster.test_local_cluster import eventually, lmjob_cluster, running
from tests.operator.harness import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "shakespeare-local-cluster.yaml"
NAMESPACE = "default"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:lmjob-operator"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("helm-cluster")
    up = lmjob_cluster(state_dir, "up")
    if up.returncode != 0:
        pytest.fail(f"lmjob cluster up failed:\n{up.stderr}", pytrace=False)
    yield state_dir
    lmjob_cluster(state_dir, "down")  # after a failure; the test itself takes it down


def tiny_example(path: Path) -> None:
    """The example as written (its claims, its text on the cluster's storage), with a model
    and step counts for seconds, and one compression stage."""
    *claims, job = yaml.safe_load_all(EXAMPLE.read_text())
    spec = job["spec"]
    spec["workers"]["procsPerWorker"] = 1
    spec["training"] |= {
        "model": {"architecture": "gpt", "layers": 1, "heads": 2, "hidden": 16, "seqLen": 16},
        "schedule": {"warmupSteps": 2},
        "steps": 10,
        "batch": {"microBatchSize": 2, "globalBatchSize": 2},
        "evaluation": {"everySteps": 10, "steps": 1},
        "checkpoint": {"everySteps": 10},
    }
    spec["compression"]["stages"] = [
        {"name": "prune", "type": "prune", "sparsity": 0.5, "finetuneSteps": 2}
    ]
    spec["export"] = {"formats": ["hf"]}  # the last stage, verified by transformers
    spec["metrics"]["port"] = free_port()
    path.write_text(yaml.safe_dump_all([*claims, job]))


def audit_events(state_dir: Path, username: str) -> list[dict[str, Any]]:
    lines = (state_dir / "logs" / "audit.log").read_text().splitlines()
    events = (json.loads(line) for line in lines if username in line)
    return [e for e in events if e["user"]["username"] == username]


def answer_with_token(server: str, ca: Path, token: str, path: str) -> int:
    request = urllib.request.Request(server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca)):
            return 200
    except urllib.error.HTTPError as err:
        return err.code


def test_helm_installed_operator_trains_a_kubectl_applied_job(
    cluster: Path, tmp_path: Path
) -> None:
    kubeconfig = cluster / "admin.kubeconfig"
    tools = find_binaries(["helm", "kubectl"])
    run_helm(
        tools["helm"],
        *("install", "lmjob", str(CHART), "--wait", "--timeout", "90s"),
        # The CRD is up's (crds/); the ports are free ones, as pods share this machine's.
        *("--set", "crds.enabled=false"),
        *("--set", f"metrics.port={free_port()}", "--set", f"health.port={free_port()}"),
        kubeconfig=kubeconfig,
        home=tmp_path / "helm",
    )
    api = config.new_client_from_config(config_file=str(kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        (operator,) = core.list_namespaced_pod(
            NAMESPACE, label_selector="app.kubernetes.io/component=operator"
        ).items
        assert operator.status.phase == "Running"
        assert (operator.spec.node_name, operator.spec.service_account_name) == (
            "local-0",
            "lmjob-operator",
        )

        manifest = tmp_path / "job.yaml"
        tiny_example(manifest)
        applied = subprocess.run(
            [str(tools["kubectl"]), "apply", "-f", str(manifest)],
            capture_output=True,
            text=True,
            env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
            timeout=60,
        )
        assert applied.returncode == 0, applied.stderr

        def succeeded() -> dict[str, Any] | None:
            job = custom.get_namespaced_custom_object(
                "lmjob.dev", "v1alpha1", NAMESPACE, "largemodeljobs", "shakespeare"
            )
            status = job.get("status") or {}
            assert status.get("phase") != "Failed", status
            return status if status.get("phase") == "Succeeded" else None

        status = eventually(succeeded, "job shakespeare to succeed", 150)
        assert [(s["name"], s["phase"]) for s in status["stages"]] == [
            ("train", "Succeeded"),
            ("prune", "Succeeded"),
            ("prune.hf", "Succeeded"),
        ], status
        assert all("evalLoss" in s["metrics"] for s in status["stages"][:2]), status
        assert status["stages"][2]["metrics"]["maxAbsDiff"] <= 1e-4, status

        # Outputs on the claim the default StorageClass provisioned, a folder of the cluster.
        claim = core.read_namespaced_persistent_volume_claim("shakespeare-checkpoints", NAMESPACE)
        volume = core.read_persistent_volume(claim.spec.volume_name)
        assert volume.spec.storage_class_name == "local-path"
        outputs = Path(volume.spec.host_path.path)
        assert outputs.parent == cluster / "volumes"
        assert status["stages"][1]["checkpoint"].startswith(str(outputs / "prune"))
        assert any((outputs / "prune").iterdir())
        exported = Path(status["stages"][2]["checkpoint"])
        assert exported == outputs / "exports" / "prune.hf"
        assert (exported / "config.json").is_file() and (exported / "model.safetensors").is_file()

        # The operator pod did it, as its ServiceAccount with a token bound to that pod.
        log = core.read_namespaced_pod_log(operator.metadata.name, NAMESPACE)
        assert f"[{NAMESPACE}/shakespeare] phase Pending → Running" in log, log
        assert re.search(rf"\[{NAMESPACE}/shakespeare\] phase \w+ → Succeeded", log), log
        writes = [
            e
            for e in audit_events(cluster, ACCOUNT)
            if e.get("objectRef", {}).get("resource") == "largemodeljobs"
            and e["objectRef"].get("subresource") == "status"
            and e["verb"] == "patch"
        ]
        assert writes, "no status patch by the operator's ServiceAccount"
        bound_to = {
            p for e in writes for p in e["user"]["extra"]["authentication.kubernetes.io/pod-name"]
        }
        assert bound_to == {operator.metadata.name}

        # ... and with the chart's RBAC only: its token reads jobs, never Secrets.
        (token_file,) = (cluster / "nodes" / "local-0" / "pods").glob(
            f"{operator.metadata.name}-*/volumes/kube-api-access-*/token"
        )
        token, ca = token_file.read_text(), token_file.parent / "ca.crt"
        server = api.configuration.host
        assert (
            answer_with_token(server, ca, token, "/apis/lmjob.dev/v1alpha1/largemodeljobs") == 200
        )
        assert (
            answer_with_token(server, ca, token, f"/api/v1/namespaces/{NAMESPACE}/secrets") == 403
        )
    finally:
        api.close()

    pids = lifecycle.pids(cluster) + lifecycle.processes_under(cluster / "nodes")
    assert len(pids) >= 4 + 1 + 1, pids  # the control plane, the node, the operator pod
    down = lmjob_cluster(cluster, "down")
    assert down.returncode == 0, down.stderr
    eventually(lambda: not [p for p in pids if running(p)], f"every process of {pids} to end", 10)
