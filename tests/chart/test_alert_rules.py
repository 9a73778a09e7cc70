"""The chart's alerting rules (charts/lmjob/files/alert-rules.yaml): valid for Prometheus'
own `promtool check rules`, each alert firing in its scenario and silent for a healthy job
under `promtool test rules` (tests/chart/alert-rules.test.yaml), written over series the
operator and the trainer really export, and rendered unchanged into the PrometheusRule."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from lmjob_api import trainer_metrics
from lmjob_cli.localcluster.binaries import BinariesMissing, find_binaries
from tests.chart.helm_runs import CHART, Render

RULES = CHART / "files" / "alert-rules.yaml"
UNIT_TESTS = Path(__file__).with_name("alert-rules.test.yaml")


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return find_binaries(["promtool"])["promtool"]
    except BinariesMissing as e:
        pytest.fail(str(e), pytrace=False)  # never skip: CI runs every tier


def run_promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=60)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exported_series() -> set[str]:
    """Every series name the operator and the trainer expose (histograms and counters with
    their suffixes), from their metric objects rather than a list kept here."""
    from lmjob_operator import metrics as operator_metrics

    names = {trainer_metrics.series(v) for k, v in vars(trainer_metrics).items()
             if k.isupper() and isinstance(v, str) and k not in ("PREFIX",)}  # fmt: skip
    families = [
        family
        for wrapper in vars(operator_metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
        for family in wrapper.describe()
    ]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names |= {f.name + s for f in families for s in suffixes[f.type]}
    for base in list(names):  # the trainer's histograms
        names |= {base + s for s in suffixes["histogram"]}
    return names


def test_promtool_checks_the_rules(promtool: Path) -> None:
    out = run_promtool(promtool, "check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout, out.stdout


def test_each_alert_fires_in_its_scenario_and_not_otherwise(promtool: Path) -> None:
    out = run_promtool(promtool, "test", "rules", str(UNIT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout, out.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in alerts():
        mine = [c for c in cases if c["alertname"] == alert["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{alert['alert']} never shown firing"
        assert any(not c["exp_alerts"] for c in mine), f"{alert['alert']} never shown silent"


def test_rules_use_only_exported_series() -> None:
    exported = exported_series()
    assert "lmjob_operator_pod_restarts_total" in exported  # the reader itself works
    assert "lmjob_trainer_step_seconds_bucket" in exported
    for alert in alerts():
        used = set(re.findall(r"\blmjob_[a-z_]+", alert["expr"]))
        assert used and used <= exported, (alert["alert"], sorted(used - exported))


def test_prometheus_rule_renders_the_rules_file(render: Render) -> None:
    assert not [d for d in render() if d["kind"] == "PrometheusRule"]  # off by default
    docs = render({"prometheusRule": {"enabled": True, "labels": {"release": "kube-prom"}}})
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "lmjob-system"
    assert rule["metadata"]["labels"]["release"] == "kube-prom"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
