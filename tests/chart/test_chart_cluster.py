"""The install path on the real control plane: server-side validation of the rendered chart,
a real helm install / upgrade / uninstall, the operator's permissions proven with its own
ServiceAccount token, the kustomize base, and the CRD under client-side apply."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm_runs import CHART, REPO, run_helm, write_values
from tests.support.prometheus import monitoring_crd_files

pytestmark = pytest.mark.cluster

CRD_NAME = "largemodeljobs.lmjob.dev"
KOPF_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
JOB_SAMPLE = (
    REPO / "deploy" / "argocd" / "lmjob.dev" / "LargeModelJob" / "testdata" / "running.yaml"
)
# Everything a release may create, except the CRDs (kept on purpose).
RELEASE_KINDS = (
    "deployments,replicasets,pods,services,serviceaccounts,configmaps,roles,rolebindings,"
    "clusterroles,clusterrolebindings,clusterkopfpeerings,kopfpeerings"
)
# prometheus-operator's own CRDs (copied from its Go module by scripts/build-k8s): the
# chart's monitors and the operator's PodMonitor meet the real schema, not a stub's.
MONITORING_PLURALS = ("servicemonitors", "podmonitors", "prometheusrules")

Kubectl = Callable[..., Any]
HelmCluster = Callable[..., Any]


def leftovers(kubectl: Kubectl, release: str) -> list[str]:
    out = kubectl("get", RELEASE_KINDS, "--all-namespaces", "-o", "name",
                  "-l", f"app.kubernetes.io/instance={release}")  # fmt: skip
    return out.stdout.split()


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def can_i(kubectl: Kubectl, kubeconfig: Path, *args: str) -> bool:
    out = kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def create_job(kubectl: Kubectl, namespace: str) -> str:
    job = yaml.safe_load(JOB_SAMPLE.read_text())
    job.pop("status")
    job["metadata"] = {"name": "rbac-probe", "namespace": namespace}
    kubectl("create", "-f", "-", input=json.dumps(job))
    return "rbac-probe"


def build_pod(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "worker", "image": "trainer:test"}]},
        }
    )


def build_event(namespace: str, job: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{job}."},
            "involvedObject": {
                "apiVersion": "lmjob.dev/v1alpha1",
                "kind": "LargeModelJob",
                "name": job,
                "namespace": namespace,
            },
            "reason": "Created",
            "message": "created 1 worker pod",
            "type": "Normal",
            "source": {"component": "lmjob-operator"},
        }
    )


def assert_operator_can_run_jobs(kubectl: Kubectl, kubeconfig: Path, namespace: str) -> None:
    """Do, as the operator, what it does for a job: create a pod, patch status, post an event."""
    job = create_job(kubectl, namespace)
    kubectl("create", "-n", namespace, "-f", "-", input=build_pod(f"{job}-worker-0"),
            kubeconfig=kubeconfig)  # fmt: skip
    kubectl("patch", "largemodeljob", job, "-n", namespace, "--subresource=status",
            "--type=merge", "-p", '{"status": {"phase": "Running"}}',
            kubeconfig=kubeconfig)  # fmt: skip
    phase = kubectl("get", "lmj", job, "-n", namespace, "-o", "jsonpath={.status.phase}")
    assert phase.stdout == "Running"
    kubectl("create", "-n", namespace, "-f", "-", input=build_event(namespace, job),
            kubeconfig=kubeconfig)  # fmt: skip
    assert can_i(kubectl, kubeconfig, "watch", "pods", "-n", namespace)
    assert can_i(kubectl, kubeconfig, "delete", "pods", "-n", namespace)


def assert_no_secrets(kubectl: Kubectl, kubeconfig: Path, namespace: str) -> None:
    for verb in ("get", "list", "watch", "create"):
        assert not can_i(kubectl, kubeconfig, verb, "secrets", "-n", namespace)
    denied = kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr


@pytest.fixture
def monitoring_crds(kubectl: Kubectl) -> Iterator[None]:
    files = monitoring_crd_files(*MONITORING_PLURALS)
    # Server-side: the real CRDs outgrow client-side apply's last-applied annotation.
    for crd in files:
        kubectl("apply", "--server-side", "-f", str(crd))
    kubectl("wait", "--for=condition=Established",
            *[f"crd/{plural}.monitoring.coreos.com" for plural in MONITORING_PLURALS])  # fmt: skip
    yield
    # Other suites' operators must not find a PodMonitor API they did not ask for.
    for crd in files:
        kubectl("delete", "-f", str(crd), "--wait=false")


def test_crd_applies_client_side(kubectl: Kubectl, helm_binary: Path, helm_home: Path) -> None:
    """No --server-side: the CRD fits kubectl's last-applied-configuration annotation."""
    kubectl("apply", "-f", str(REPO / "crds" / "lmjob.dev_largemodeljobs.yaml"))
    rendered = run_helm(helm_binary, "template", "x", str(CHART), "--show-only",
                        "templates/crd-largemodeljobs.yaml", home=helm_home).stdout  # fmt: skip
    kubectl("apply", "-f", "-", input=rendered)
    kubectl("apply", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    crd = json.loads(kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    assert "kubectl.kubernetes.io/last-applied-configuration" in crd["metadata"]["annotations"]


@pytest.mark.parametrize(
    "scenario",
    ["defaults", "namespaced", "monitoring"],
    ids=["defaults", "namespaced", "monitoring"],
)
def test_template_accepted_by_server(
    scenario: str,
    kubectl: Kubectl,
    namespace: str,
    make_namespace: Callable[[str], str],
    helm_binary: Path,
    helm_home: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    values: dict[str, Any] = {"peering": {"name": f"dry-{scenario}"}}
    if scenario == "namespaced":
        values["watchNamespaces"] = [make_namespace("a"), make_namespace("b")]
    if scenario == "monitoring":
        request.getfixturevalue("monitoring_crds")
        values |= {
            "podMonitor": {"enabled": True},
            "metrics": {"serviceMonitor": {"enabled": True}},
            "prometheusRule": {"enabled": True},
            "replicaCount": 2,
        }
    kubectl("apply", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    rendered = run_helm(helm_binary, "template", f"dry-{scenario}", str(CHART),
                        "--namespace", namespace, "--values",
                        str(write_values(tmp_path, values)), home=helm_home).stdout  # fmt: skip
    # Every namespaced object names its namespace (Roles live in the watched ones): no -n.
    out = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered)
    applied = [line for line in out.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len([d for d in yaml.safe_load_all(rendered) if d])


def test_operator_pod_monitor_meets_the_real_crd(
    monitoring_crds: None, kubectl: Kubectl, namespace: str
) -> None:
    """The PodMonitor the operator creates for `metrics.podMonitor`, server-side validated
    (strict: an unknown field fails) against prometheus-operator's schema; a misspelt field
    is refused, so the schema is the real one."""
    from lmjob_operator.pod_monitor import build_pod_monitor
    from tests.operator.factories import make_job

    monitor = build_pod_monitor(make_job({"metrics": {"podMonitor": True}}))
    monitor["metadata"]["namespace"] = namespace
    out = kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                  input=json.dumps(monitor))  # fmt: skip
    assert "(server dry run)" in out.stdout, out.stdout
    monitor["spec"]["podMetricsEndpoints"][0]["honorLabel"] = True
    refused = kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                      input=json.dumps(monitor), check=False)  # fmt: skip
    assert (
        refused.returncode != 0
        and 'unknown field "spec.podMetricsEndpoints[0].honorLabel"' in refused.stderr
    ), refused.stderr


def test_install_upgrade_uninstall(
    helm_cluster: HelmCluster, kubectl: Kubectl, kube: Any, namespace: str
) -> None:
    release = "lmjc"
    # The operator pod must pass the `restricted` Pod Security Standard.
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # A first install where kopf's peering CRDs are absent: Helm must create them (crds/)
    # before it maps the peering object in templates/.
    kubectl("delete", "crd", *KOPF_CRDS, "--ignore-not-found", "--wait=true")
    # The session's CRD was applied by kubectl: Helm 4 adopts it, as it would for a user
    # moving from `kubectl apply -f crds/` (or the kustomize base) to the chart.
    helm_cluster("install", release, str(CHART), "--namespace", namespace,
                 "--take-ownership", "--force-conflicts",
                 "--set", f"peering.name={release}")  # fmt: skip
    deployment = kube.apps.read_namespaced_deployment("lmjc-lmjob-operator", namespace)
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["LMJOB_TRAINER_IMAGE"] == "ghcr.io/lmjob/trainer:0.1.0"
    kube.core.read_namespaced_service("lmjc-lmjob-operator-metrics", namespace)
    kube.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", release)

    # The Deployment's pod is admitted under `restricted` (it stays Pending: no nodes).
    def operator_pods() -> list[Any]:
        selector = "app.kubernetes.io/component=operator"
        return kube.core.list_namespaced_pod(namespace, label_selector=selector).items

    try:
        wait_until(operator_pods, 30, "the operator pod to be created")
    except AssertionError as e:
        replica_sets = kube.apps.list_namespaced_replica_set(namespace).items
        why = [c.message for rs in replica_sets for c in rs.status.conditions or []]
        raise AssertionError(f"{e}: {why}") from None

    helm_cluster("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
                 "--set", "trainer.image.tag=0.2.0", "--set", "replicaCount=2",
                 "--set", "metrics.enabled=false")  # fmt: skip
    deployment = kube.apps.read_namespaced_deployment("lmjc-lmjob-operator", namespace)
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["LMJOB_TRAINER_IMAGE"] == "ghcr.io/lmjob/trainer:0.2.0"
    assert deployment.spec.replicas == 2
    services = kube.core.list_namespaced_service(namespace).items
    assert not [s for s in services if s.metadata.name.endswith("-metrics")]
    history = json.loads(helm_cluster("history", release, "-n", namespace, "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]

    helm_cluster("uninstall", release, "--namespace", namespace)
    wait_until(lambda: not leftovers(kubectl, release), 60, "the release's objects to go")
    crd = kube.apiext.read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    for name in KOPF_CRDS:  # crds/ is never deleted by Helm
        kube.apiext.read_custom_resource_definition(name)


def test_cluster_mode_permissions(
    helm_cluster: HelmCluster,
    kubectl: Kubectl,
    namespace: str,
    make_namespace: Callable[[str], str],
    mint_token: Callable[..., Any],
) -> None:
    release = "lmjr"
    elsewhere = make_namespace("jobs")
    helm_cluster("install", release, str(CHART), "--namespace", namespace,
                 "--set", "crds.enabled=false", "--set", f"peering.name={release}")  # fmt: skip
    try:
        token = mint_token(namespace, "lmjr-lmjob-operator", create=False)
        # Cluster-wide: jobs in any namespace.
        assert_operator_can_run_jobs(kubectl, token.kubeconfig, elsewhere)
        assert can_i(kubectl, token.kubeconfig, "patch", "clusterkopfpeerings")
        assert_no_secrets(kubectl, token.kubeconfig, elsewhere)
        assert not can_i(kubectl, token.kubeconfig, "create", "deployments", "-n", elsewhere)
    finally:
        helm_cluster("uninstall", release, "--namespace", namespace)


def test_namespaced_mode_permissions(
    helm_cluster: HelmCluster,
    kubectl: Kubectl,
    namespace: str,
    make_namespace: Callable[[str], str],
    mint_token: Callable[..., Any],
) -> None:
    release = "lmjn"
    watched, other = make_namespace("watched"), make_namespace("other")
    helm_cluster("install", release, str(CHART), "--namespace", namespace,
                 "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{watched}}}",
                 "--set", f"peering.name={release}")  # fmt: skip
    try:
        token = mint_token(namespace, "lmjn-lmjob-operator", create=False)
        assert_operator_can_run_jobs(kubectl, token.kubeconfig, watched)
        assert can_i(kubectl, token.kubeconfig, "patch", "kopfpeerings", "-n", watched)
        assert_no_secrets(kubectl, token.kubeconfig, watched)
        # Nothing outside the watched namespace, not even reading.
        for namespace_ in (other, namespace):
            for verb, resource in (("create", "pods"), ("list", "pods"), ("list", "lmj")):
                assert not can_i(kubectl, token.kubeconfig, verb, resource, "-n", namespace_)
        denied = kubectl("create", "-n", other, "-f", "-", input=build_pod("intruder"),
                         kubeconfig=token.kubeconfig, check=False)  # fmt: skip
        assert denied.returncode != 0 and "Forbidden" in denied.stderr
        assert not can_i(kubectl, token.kubeconfig, "list", "pods", "--all-namespaces")
        # The cluster-scoped part: reading CRDs (kopf notices new ones).
        assert can_i(kubectl, token.kubeconfig, "watch", "customresourcedefinitions")
    finally:
        helm_cluster("uninstall", release, "--namespace", namespace)
    wait_until(lambda: not leftovers(kubectl, release), 60, "the release's objects to go")


def test_kustomize_base_applies(kubectl: Kubectl, kube: Any) -> None:
    base = REPO / "deploy" / "kustomize"
    kubectl("apply", "-k", str(base))  # client-side, as `kubectl apply -k` does by default
    try:
        deployment = kube.apps.read_namespaced_deployment("lmjob-operator", "lmjob-system")
        assert deployment.spec.template.spec.service_account_name == "lmjob-operator"
        binding = kube.rbac.read_cluster_role_binding("lmjob-operator")
        assert binding.subjects[0].namespace == "lmjob-system"
    finally:
        # Everything but the CRDs: other tests in this session still use them.
        rendered = kubectl("kustomize", str(base)).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
        kubectl("delete", "-f", "-", "--wait=false", input=yaml.safe_dump_all(rest))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def test_operator_runs_under_the_chart(
    helm_cluster: HelmCluster,
    kubectl: Kubectl,
    kube: Any,
    namespace: str,
    make_namespace: Callable[[str], str],
    mint_token: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The real operator, started with the Deployment's own args and env and the chart's
    ServiceAccount token (namespaced mode, peered), gets healthy and creates a job's pods:
    the chart's RBAC is enough for everything kopf and lmjob do."""
    release = "lmjo"
    watched = make_namespace("watched")
    helm_cluster("install", release, str(CHART), "--namespace", namespace,
                 "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{watched}}}",
                 "--set", f"peering.name={release}")  # fmt: skip
    log_path = tmp_path / "operator.log"
    proc = None
    try:
        deployment = kube.apps.read_namespaced_deployment("lmjo-lmjob-operator", namespace)
        container = deployment.spec.template.spec.containers[0]
        health, metrics = free_port(), free_port()
        args = [
            f"--liveness=http://127.0.0.1:{health}/healthz"
            if a.startswith("--liveness=")
            else f"--metrics-port={metrics}"
            if a.startswith("--metrics-port=")
            else a
            for a in container.args
        ]
        token = mint_token(namespace, "lmjo-lmjob-operator", create=False)
        env = dict(os.environ, KUBECONFIG=str(token.kubeconfig))
        env |= {e.name: e.value for e in container.env if e.value is not None}
        sources = [str(REPO / d) for d in ("api", "cli", "operator", "trainer")]
        env["PYTHONPATH"] = os.pathsep.join([*sources, env.get("PYTHONPATH", "")])
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "lmjob_operator", *args],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{health}/healthz"
        wait_until(lambda: healthy(url) or proc.poll() is not None, 30, "the operator's /healthz")
        assert proc.poll() is None, log_path.read_text()[-3000:]

        job = create_job(kubectl, watched)
        selector = f"lmjob.dev/job-name={job},lmjob.dev/role=worker"
        wait_until(
            lambda: kube.core.list_namespaced_pod(watched, label_selector=selector).items,
            30,
            "the operator to create the job's worker pods",
        )
        wait_until(
            lambda: (
                kubectl("get", "lmj", job, "-n", watched, "-o", "jsonpath={.status.phase}").stdout
            ),
            30,
            "the operator to write the job's status",
        )
        peering = kube.custom.get_namespaced_custom_object(
            "kopf.dev", "v1", watched, "kopfpeerings", release
        )
        assert peering.get("status"), "the operator never announced itself in its peering"
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        helm_cluster("uninstall", release, "--namespace", namespace)
    text = log_path.read_text()
    assert "Traceback" not in text and "Forbidden" not in text and " 403" not in text, text[-3000:]


@pytest.fixture
def own_control_plane(tmp_path: Path) -> Iterator[Any]:
    """An API server of this test's own (no controllers needed: the CRD finalizer runs in
    kube-apiserver), for a test that deletes the CRD every other test relies on."""
    from lmjob_cli.localcluster.controlplane import ControlPlane, Options

    plane = ControlPlane(
        tmp_path / "plane", Options(controller_manager=False, scheduler=False, crd_dir=None)
    )
    plane.start()
    yield plane
    plane.stop()


def test_uninstall_keeps_the_crd_and_jobs_unless_told(
    own_control_plane: Any, helm_binary: Path, helm_home: Path
) -> None:
    """`crds.keep` (default true) keeps the CRD, and with it every job, on uninstall;
    `crds.keep=false` removes the CRD."""
    from tests.support.clients import build_kube_clients

    kubeconfig = own_control_plane.kubeconfig

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return run_helm(helm_binary, *args, kubeconfig=kubeconfig, home=helm_home)

    def kubectl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return own_control_plane.kubectl(*args, **kwargs)

    kube = build_kube_clients(kubeconfig)
    try:
        install = ("install", "lmjk", str(CHART), "-n", "lmjob-system", "--create-namespace")
        helm(*install, "--set", "peering.name=lmjk")
        kubectl("create", "namespace", "team")
        create_job(kubectl, "team")
        helm("uninstall", "lmjk", "-n", "lmjob-system", "--wait")
        kube.apiext.read_custom_resource_definition(CRD_NAME)
        jobs = kube.custom.list_namespaced_custom_object(
            "lmjob.dev", "v1alpha1", "team", "largemodeljobs"
        )["items"]
        assert [j["metadata"]["name"] for j in jobs] == ["rbac-probe"]

        helm(*install, "--take-ownership", "--set", "peering.name=lmjk", "--set", "crds.keep=false")
        helm("uninstall", "lmjk", "-n", "lmjob-system", "--wait")

        def crd_gone() -> bool:
            names = [c.metadata.name for c in kube.apiext.list_custom_resource_definition().items]
            return CRD_NAME not in names

        wait_until(crd_gone, 60, "the CRD to be deleted")
    finally:
        kube.close()
