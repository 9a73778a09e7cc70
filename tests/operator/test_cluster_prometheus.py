"""The shipped Grafana dashboard and alerts against a real Prometheus (built by
scripts/build-k8s from its Go module), scraping the operator and real trainers run by the
process kubelet (see test_cluster_end_to_end.py for the node, claim and corpus).

Two jobs, one after the other, make every series the dashboard draws. `watched` trains two ranks, the first
slowed by the test hook (a straggler), with evaluations and checkpoints; its worker pod is
killed after a checkpoint, so the restarted group resumes from it (checkpoint loads), and it
ends with a pruning stage whose fine-tune lasts long enough for the train stage's results to
be scraped. `diverge` trains at learning rate 10 with
non-finite steps skipped: skipped steps and a NaN loss, then it fails past its limit. Each
dashboard query, its variables replaced as Grafana does with "All" selected, must return
series over the run: only MFU is absent on CPU (the trainer reports it on CUDA only).
The chart's alert rules run in the same Prometheus: every rule evaluates without error,
and the non-finite-loss and failed-job alerts fire for `diverge`. `watched` asks for its
PodMonitor (metrics.podMonitor), which the operator creates against prometheus-operator's
real CRD.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lmjob_cli.localcluster.process_kubelet import METRICS_ADDRESS_ENV, ProcessKubelet
from lmjob_trainer.stragglers import TEST_SLOW_RANK_ENV
from tests.operator.harness import (
    REPO_ROOT,
    create_job,
    free_port,
    job_status,
    on_node,
    phase_is,
    wait_for,
)
from tests.support.prometheus import Prometheus, Target, monitoring_crd_files

pytestmark = pytest.mark.slow

DASHBOARD = REPO_ROOT / "charts" / "lmjob" / "dashboards" / "lmjob-training.json"
ALERT_RULES = REPO_ROOT / "charts" / "lmjob" / "files" / "alert-rules.yaml"
SCRAPE_S = 0.5
RATE_INTERVAL = "30s"
# Series the trainer exports only on CUDA (mfu.py: a CPU has no meaningful peak).
CUDA_ONLY = {"lmjob_trainer_mfu"}
TINY_MODEL = {"layers": 2, "heads": 2, "hidden": 32, "seqLen": 32}
BATCH = {"microBatchSize": 4, "globalBatchSize": 8}
# The test hook, for every pod of the node (workers.env may not set LMJOB_* names): rank 0 of
# each job sleeps 100 ms a step: `watched`'s straggler, and `diverge`'s skipped steps last
# long enough to be scraped.
SLOW_RANK = "0:0.1"


def watched_spec(text: Path, node: str, port: int) -> dict:
    """Two ranks in one pod (rank 0 slowed: SLOW_RANK); evaluation and checkpoint every 10
    steps; straggler window 4 (a verdict from step 10 on); a pruning stage after, with a
    10-step fine-tune."""
    return {
        "workers": {
            "replicas": 1,
            "procsPerWorker": 2,
            "template": on_node(node),
        },
        "training": {
            "model": TINY_MODEL,
            "data": {"source": str(text)},
            "optimizer": {"lr": 3.0e-3},
            "schedule": {"warmupSteps": 0, "decay": "constant"},
            "steps": 80,
            "batch": BATCH,
            "evaluation": {"everySteps": 10, "steps": 1},
            "checkpoint": {"everySteps": 10},
            "stragglers": {"windowSteps": 4},
        },
        # Its fine-tune steps (slowed too) keep the train stage's result served for a while.
        "compression": {
            "stages": [{"name": "pruned", "type": "prune", "sparsity": 0.5, "finetuneSteps": 10}]
        },
        "metrics": {"port": port, "podMonitor": True},
        "storage": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}},
    }


def diverge_spec(text: Path, node: str, port: int) -> dict:
    """Plain SGD at lr 10 without clipping: non-finite within a few steps (as in
    tests/trainer/test_non_finite.py); 20 skipped steps allowed, of 100 ms each (SLOW_RANK),
    so the scrapes see them, then the job fails. Its storage is the pod's emptyDir."""
    return {
        "workers": {
            "replicas": 1,
            "procsPerWorker": 1,
            "template": on_node(node),
        },
        "training": {
            "model": TINY_MODEL,
            "data": {"source": str(text)},
            "optimizer": {"name": "sgd", "lr": 10.0, "gradClip": 0.0},
            "schedule": {"warmupSteps": 0, "decay": "constant"},
            "steps": 1000,
            "batch": BATCH,
            "evaluation": {"everySteps": 1000, "steps": 1},
            "checkpoint": {"everySteps": 1000},
            "nonFinite": {"action": "skip", "maxSkippedSteps": 20},
        },
        "metrics": {"port": port},
    }


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            yield from walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def dashboard_variables() -> list[tuple[str, str, str]]:
    """(variable, label, series selector) of every `label_values(selector, label)` query."""
    out = []
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert match, var["definition"]
            out.append((var["name"], match.group(2), match.group(1)))
    return out


def as_grafana_runs(expr: str, namespace: str) -> str:
    """The query Grafana sends with the namespace selected and every job and stage ("All",
    whose allValue is `.*`)."""
    expr = expr.replace("$namespace", namespace).replace("$job", ".*").replace("$stage", ".*")
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    assert "$" not in expr, f"a dashboard variable this test does not know: {expr}"
    return expr


def pod_exists(kube, namespace: str, name: str) -> bool:
    return any(p.metadata.name == name for p in kube.core.list_namespaced_pod(namespace).items)


@pytest.fixture
def podmonitor_crd(kubectl) -> Iterator[None]:
    """prometheus-operator's real PodMonitor CRD, installed for this test only (no other
    test's operator may find the API)."""
    (crd,) = monitoring_crd_files("podmonitors")
    kubectl("apply", "--server-side", "-f", str(crd))
    kubectl("wait", "--for=condition=Established", "crd/podmonitors.monitoring.coreos.com")
    yield
    kubectl("delete", "-f", str(crd), "--wait=false")


def test_every_dashboard_query_returns_series_from_a_real_prometheus(
    podmonitor_crd: None,
    kubelet: ProcessKubelet,
    storage: Path,
    kube,
    namespace: str,
    corpus: Path,
    operator,
    tmp_path: Path,
) -> None:
    ports = {"watched": free_port(), "diverge": free_port()}
    trainers = [
        Target(f"trainer-{job}", f"127.0.0.1:{port}",
               {"namespace": namespace, "pod": f"{job}-worker-0"})
        for job, port in ports.items()
    ]  # fmt: skip
    operator_target = Target("lmjob-operator", f"127.0.0.1:{operator.metrics_port}")
    prometheus = Prometheus(
        tmp_path / "prometheus",
        [operator_target, *trainers],
        interval_s=SCRAPE_S,
        rule_files=(ALERT_RULES,),
    )
    kubelet.extra_env[TEST_SLOW_RANK_ENV] = SLOW_RANK
    # Static targets are written before any pod has its own address: each job has one pod,
    # and one job runs at a time, so its trainer may serve on every address, 127.0.0.1 too.
    kubelet.extra_env[METRICS_ADDRESS_ENV] = "0.0.0.0"
    prometheus.start()
    try:
        started = time.time()
        # One job at a time: a node's rendezvous stores share one loopback port.
        diverge = diverge_spec(corpus, namespace, ports["diverge"])
        create_job(kube.custom, namespace, "diverge", diverge)
        wait_for(phase_is(kube.custom, namespace, "diverge", "Failed"), timeout=90)
        wait_for(lambda: not pod_exists(kube, namespace, "diverge-rendezvous"), timeout=30)
        watched_job = watched_spec(corpus, namespace, ports["watched"])
        create_job(kube.custom, namespace, "watched", watched_job)
        wait_for(
            lambda: prometheus.query('lmjob_trainer_checkpoint_info{job="watched"}'),
            timeout=120,
            interval=0.5,
            what="a checkpoint of watched, scraped",
        )
        kubelet.kill("watched-worker-0")  # the restarted group resumes from it
        watched = wait_for(phase_is(kube.custom, namespace, "watched", "Succeeded"), timeout=150)
        time.sleep(2 * SCRAPE_S)  # the operator's last phase counts, scraped
        ended = time.time()

        assert watched["restarts"] == 1, watched
        failed = next(c for c in job_status(kube.custom, namespace, "diverge")["conditions"]
                      if c["type"] == "Failed")  # fmt: skip
        assert "steps skipped" in failed["message"], failed

        missing = [
            (title, expr)
            for title, expr in dashboard_queries()
            if not prometheus.query_range(as_grafana_runs(expr, namespace), started, ended)
        ]
        expected = [
            (t, e) for t, e in dashboard_queries() if set(re.findall(r"lmjob_\w+", e)) & CUDA_ONLY
        ]
        if torch.cuda.is_available():
            expected = []
        assert missing == expected, missing

        for name, label, selector in dashboard_variables():
            values = prometheus.label_values(
                label, as_grafana_runs(selector, namespace), started, ended
            )
            want = {"namespace": {namespace}, "job": {"watched", "diverge"},
                    "stage": {"train"}}[name]  # fmt: skip
            assert want <= set(values), (name, values)

        # The chart's alerts, evaluated by the same Prometheus over these series.
        rules = [r for g in prometheus.rule_groups() for r in g["rules"]]
        assert rules and all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
        ]
        for alert, selector in (
            ("LmjobNonFiniteLoss", f'namespace="{namespace}", job="diverge"'),
            ("LmjobJobFailed", ""),
        ):
            fired = prometheus.query_range(
                f'ALERTS{{alertname="{alert}", alertstate="firing"{", " if selector else ""}{selector}}}',
                started,
                ended,
            )
            assert fired, f"{alert} never fired"
        straggling = prometheus.query_range(
            f'lmjob_trainer_straggler{{namespace="{namespace}", job="watched"}}', started, ended
        )
        assert {s["metric"]["rank"] for s in straggling} == {"0"}, straggling
        # ... and the operator named it in the job's status: the Stragglers condition's event.
        named = [
            e.message
            for e in kube.core.list_namespaced_event(namespace).items
            if e.reason == "StragglersFound" and e.involved_object.name == "watched"
        ]
        assert named and all("rank 0" in m for m in named), named
    finally:
        prometheus.stop()

    # The operator's PodMonitor, accepted by the API server under the real CRD's schema.
    monitor = kube.custom.get_namespaced_custom_object(
        "monitoring.coreos.com", "v1", namespace, "podmonitors", "watched"
    )
    assert monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    conditions = {c["type"]: c for c in watched["conditions"]}
    assert conditions["PodMonitor"]["status"] == "True", conditions.get("PodMonitor")
