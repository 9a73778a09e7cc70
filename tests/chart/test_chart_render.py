"""The chart, rendered offline with the built helm: lint, values schema, and what each mode
produces (security settings, RBAC defined once, CRD keep policy, peering, monitoring)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm_runs import CHART, REPO, Render, find, run_helm, write_values

OPERATOR_RULES = yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())
CLUSTER_SCOPED = {
    "customresourcedefinitions",
    "namespaces",
    "clusterkopfpeerings",
    # Kueue: the admitted flavors and the priority class a queued job names (read only).
    "resourceflavors",
    "workloadpriorityclasses",
    "priorityclasses",
}
CONTRACTS = (REPO / "docs" / "contracts.md").read_text()

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "ha-monitoring": {
        "replicaCount": 2,
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "podMonitor": {"enabled": True},
        "image": {"digest": "sha256:" + "a" * 64},
    },
    "minimal": {
        "crds": {"enabled": False},
        "peering": {"enabled": False},
        "metrics": {"enabled": False},
        "grafana": {"dashboards": {"enabled": False}},
        "rbac": {"aggregateToDefaultRoles": False},
        "serviceAccount": {"create": False, "name": "existing"},
    },
}


def rule_grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a list of PolicyRules grants."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=list(SCENARIOS))
def test_lint_strict(scenario: str, helm_binary: Path, helm_home: Path, tmp_path: Path) -> None:
    values = write_values(tmp_path, SCENARIOS[scenario])
    out = run_helm(helm_binary, "lint", "--strict", str(CHART), "--values", str(values),
                   home=helm_home)  # fmt: skip
    assert "0 chart(s) failed" in out.stdout


def test_generated_files_are_current(helm_binary: Path) -> None:
    """values.schema.json, the CRD template, the kustomize base and the Argo CD patch."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart_gen.py"), "--check", "--helm", helm_binary],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_crd_templates_match_crds_folder(render: Render) -> None:
    rendered = {d["metadata"]["name"]: d for d in find(render(), "CustomResourceDefinition")}
    sources = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    assert set(rendered) == {s["metadata"]["name"] for s in sources}
    for source in sources:
        crd = rendered[source["metadata"]["name"]]
        assert crd["spec"] == source["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


@pytest.mark.parametrize(
    ("crds", "expected"),
    [
        ({"keep": False}, (2, None)),
        ({"enabled": False}, (0, None)),
        ({}, (2, "keep")),
    ],
)
def test_crd_switches(render: Render, crds: dict[str, Any], expected: tuple[int, Any]) -> None:
    found = find(render({"crds": crds}), "CustomResourceDefinition")
    assert len(found) == expected[0]
    for crd in found:
        annotations = crd["metadata"].get("annotations") or {}
        assert annotations.get("helm.sh/resource-policy") == expected[1]


def test_kopf_peering_crds_are_in_crds_folder(render: Render) -> None:
    # Helm installs crds/ before templates, so the peering objects map on a first install.
    names = {
        d["metadata"]["name"] for d in find(render(include_crds=True), "CustomResourceDefinition")
    }
    assert names == {
        "largemodeljobs.lmjob.dev",
        "largemodelsweeps.lmjob.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"image": {"repo": "x"}}, "additional properties 'repo' not allowed"),
        ({"replicaCount": -1}, "minimum"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"crds": {"keep": "yes"}}, "keep"),
        ({"replicaCount": 2, "peering": {"enabled": False}}, "needs peering.enabled"),
    ],
)
def test_bad_values_rejected(
    bad: dict[str, Any], message: str, helm_binary: Path, helm_home: Path, tmp_path: Path
) -> None:
    values = write_values(tmp_path, bad)
    result = run_helm(helm_binary, "template", "x", str(CHART), "--values", str(values),
                      home=helm_home, check=False)  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr


def test_values_schema_documents_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        assert node.get("description"), f"values.yaml: {path} has no comment"
        if "properties" in node:
            for key, child in value.items():
                walk(node["properties"][key], child, f"{path}.{key}")

    for key, value in values.items():
        walk(schema["properties"][key], value, key)


def test_operator_pod_is_locked_down(render: Render) -> None:
    docs = render()
    (deployment,) = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(docs)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["serviceAccountName"] == "lmjob-operator"


def test_operator_args_and_env(render: Render) -> None:
    container = operator_container(render())
    assert container["image"] == "ghcr.io/lmjob/operator:0.1.0"
    assert env_of(container)["LMJOB_TRAINER_IMAGE"] == "ghcr.io/lmjob/trainer:0.1.0"
    assert "LMJOB_RENDEZVOUS_IMAGE" not in env_of(container)  # the operator's fallback
    args = container["args"]
    assert "--peering-name=lmjob-operator" in args
    assert "--liveness=http://0.0.0.0:8081/healthz" in args
    assert "--metrics-port=8080" in args
    assert not [a for a in args if a.startswith("--namespace")]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 8080}

    digest = "sha256:" + "b" * 64
    container = operator_container(
        render({"trainer": {"image": {"repository": "r/t", "tag": "1.2", "digest": digest}}})
    )
    assert env_of(container)["LMJOB_TRAINER_IMAGE"] == f"r/t@{digest}"
    container = operator_container(render({"trainer": {"rendezvousImage": {"repository": "r/s"}}}))
    assert env_of(container)["LMJOB_RENDEZVOUS_IMAGE"] == "r/s:0.1.0"


def test_cluster_mode_rbac_is_the_rules_file(render: Render) -> None:
    docs = render()
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    (role,) = find(docs, "ClusterRole", "lmjob-operator")
    assert role["rules"] == OPERATOR_RULES
    (binding,) = find(docs, "ClusterRoleBinding", "lmjob-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "lmjob-operator", "namespace": "lmjob-system"}
    ]
    (peering,) = find(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "lmjob-operator"


def test_namespaced_mode_grants_nothing_namespaced_cluster_wide(render: Render) -> None:
    docs = render(SCENARIOS["namespaced"])
    container = operator_container(docs)
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    roles = find(docs, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"team-a", "team-b"}
    assert {b["metadata"]["namespace"] for b in find(docs, "RoleBinding")} == {"team-a", "team-b"}
    (cluster_role,) = find(docs, "ClusterRole", "lmjob-operator")
    cluster_grants = rule_grants(cluster_role["rules"])
    assert {resource for _, resource, _ in cluster_grants} <= CLUSTER_SCOPED
    role_grants = rule_grants(roles[0]["rules"])
    assert not {resource for _, resource, _ in role_grants} & CLUSTER_SCOPED
    # Defined once: the split loses and adds nothing.
    assert cluster_grants | role_grants == rule_grants(OPERATOR_RULES)
    assert not [g for g in role_grants | cluster_grants if g[1] == "secrets"]
    peerings = find(docs, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"team-a", "team-b"}
    assert not find(docs, "ClusterKopfPeering")


def test_aggregated_roles(render: Render) -> None:
    docs = render()
    (view,) = find(docs, "ClusterRole", "lmjob-view")
    (edit,) = find(docs, "ClusterRole", "lmjob-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    for kind in ("largemodeljobs", "largemodelsweeps"):
        assert ("lmjob.dev", kind, "create") in rule_grants(edit["rules"])
        assert ("lmjob.dev", f"{kind}/status", "get") in rule_grants(view["rules"])
    assert not {v for _, r, v in rule_grants(view["rules"])} - {"get", "list", "watch"}
    # Nobody but the operator writes status.
    assert not [g for g in rule_grants(edit["rules"]) if g[1].endswith("/status")]


def test_minimal_scenario(render: Render) -> None:
    docs = render(SCENARIOS["minimal"])
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment"]
    container = operator_container(docs)
    assert "--standalone" in container["args"]
    assert "--metrics-port=0" in container["args"]
    (deployment,) = find(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_monitoring(render: Render) -> None:
    docs = render(SCENARIOS["ha-monitoring"])
    (service,) = find(docs, "Service")
    (monitor,) = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The goodput gauge's own `namespace` and `job` labels (the LargeModelJob's) survive.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    (deployment,) = find(docs, "Deployment")
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    (pod_monitor,) = find(docs, "PodMonitor")
    spec = pod_monitor["spec"]
    assert spec["selector"]["matchLabels"] == {"lmjob.dev/role": "worker"}
    assert spec["namespaceSelector"] == {"any": True}
    # The trainer's `job` label (the LargeModelJob) must survive the scrape.
    assert spec["podMetricsEndpoints"][0]["honorLabels"] is True
    assert deployment["spec"]["replicas"] == 2
    assert operator_container(docs)["image"] == "ghcr.io/lmjob/operator@sha256:" + "a" * 64


def contract_metrics() -> set[str]:
    return set(re.findall(r"^\| `(lmjob_trainer_\w+)[{`]", CONTRACTS, re.M))


def test_dashboard_uses_contract_metrics(render: Render) -> None:
    (config_map,) = find(render(), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"lmjob_trainer_\w+", exprs)}
    known = contract_metrics()
    assert len(known) >= 15, "docs/contracts.md metric table not found"
    assert used <= known, f"dashboard queries metrics outside the contract: {used - known}"
    assert used == known, f"contract metrics missing from the dashboard: {known - used}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


BUILT_IN_GROUPS = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "apiextensions.k8s.io/v1"}


def test_kustomize_base_applies_in_one_go() -> None:
    """`kubectl apply -k` maps every kind before creating anything: each object must be a
    built-in or of a CRD that already exists, never of one created in the same apply."""
    base = REPO / "deploy" / "kustomize"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((base / name).read_text())
        if d
    ]
    custom = [d for d in docs if d["apiVersion"] not in BUILT_IN_GROUPS]
    assert not custom, [f"{d['kind']}/{d['metadata']['name']}" for d in custom]
    assert {d["kind"] for d in docs} >= {"Namespace", "CustomResourceDefinition", "Deployment"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=list(SCENARIOS))
def test_operator_accepts_the_chart_args(render: Render, scenario: str) -> None:
    """The Deployment's args parse with `python -m lmjob_operator`'s own parser."""
    from lmjob_operator.__main__ import build_parser

    container = operator_container(render(SCENARIOS[scenario]))
    args = build_parser().parse_args(container["args"])
    assert args.namespace == SCENARIOS[scenario].get("watchNamespaces", [])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.liveness.endswith(f":{ports['health']}/healthz")
    assert args.metrics_port == ports.get("metrics", 0)
    assert args.standalone is not SCENARIOS[scenario].get("peering", {"enabled": True})["enabled"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, ["rollout status deployment/lmjob-operator", "in every namespace"]),
        (
            {"watchNamespaces": ["team-a"], "crds": {"enabled": False}},
            ["kubectl apply -n team-a -f", "in: team-a (and nowhere else)", "crds.enabled=false"],
        ),
    ],
)
def test_notes_tell_the_next_step(
    values: dict[str, Any], expected: list[str], helm_binary: Path, helm_home: Path, tmp_path: Path
) -> None:
    out = run_helm(helm_binary, "install", "lmjob", str(CHART), "--namespace", "lmjob-system",
                   "--dry-run=client", "--values", str(write_values(tmp_path, values)),
                   home=helm_home).stdout  # fmt: skip
    notes = out[out.index("NOTES:") :]
    for text in expected:
        assert text in notes
