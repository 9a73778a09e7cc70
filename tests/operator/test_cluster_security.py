"""Restricted namespaces on the real API server (PodSecurity admission): a job's pods, the
rendezvous store's included, are admitted; a template that asks for more than `restricted`
allows fails the job at once with the API server's reason, and is never retried."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.operator.harness import (
    condition,
    create_job,
    job_status,
    live_pod_names,
    phase_is,
    pods_of,
    wait_for,
)

JOB = "psa"
ENFORCE = "pod-security.kubernetes.io/enforce"


@pytest.fixture
def restricted(kube, namespace: str) -> str:
    """The test's namespace, enforcing the `restricted` Pod Security Standard."""
    kube.core.patch_namespace(namespace, {"metadata": {"labels": {ENFORCE: "restricted"}}})
    return namespace


def spec(template: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"command": ["python", "train.py"], "workers": {"replicas": 2}}
    if template is not None:
        out["workers"]["template"] = {"spec": template}
    return out


def pod_creates(operator) -> dict[str, float]:
    """The operator's pod POSTs so far, by HTTP code."""
    out: dict[str, float] = {}
    for line in operator.metrics().splitlines():
        ours = line.startswith("lmjob_operator_api_calls_total{")
        if ours and 'resource="pods"' in line and 'verb="post"' in line:
            code = re.search(r'code="(\d+)"', line)
            out[code.group(1) if code else "?"] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.cluster
@pytest.mark.parametrize(
    "template",
    [None, {"securityContext": {"runAsUser": 2000, "fsGroup": 2000}}],
    ids=["defaults", "template runs as another user"],
)
def test_restricted_namespace_admits_every_pod(operator, kube, restricted, template) -> None:
    create_job(kube.custom, restricted, JOB, spec(template))
    wait_for(lambda: len(live_pod_names(kube.core, restricted, JOB)) == 2, what="2 workers")
    wait_for(lambda: live_pod_names(kube.core, restricted, JOB, "rendezvous"), what="the store")
    store = pods_of(kube.core, restricted, JOB, "rendezvous")[0]
    assert store.spec.security_context.run_as_non_root is True
    if template:
        assert store.spec.security_context.run_as_user == 2000
    status = job_status(kube.custom, restricted, JOB)
    assert status.get("phase") != "Failed", status
    assert "403" not in pod_creates(operator)


# (case id, template spec, which pod is refused, what the API server says)
REFUSED = [
    (
        "privileged worker",
        {"containers": [{"name": "worker", "securityContext": {"privileged": True}}]},
        "worker",
        "privileged",
    ),
    (
        "privilege escalation",
        {
            "containers": [
                {"name": "trainer", "securityContext": {"allowPrivilegeEscalation": True}}
            ]
        },
        "worker",
        "allowPrivilegeEscalation != false",
    ),
    # Both pods take the pod-level securityContext; a new job's first worker goes out alone,
    # before the rendezvous pod, so it is the one refused (and reported).
    ("pods as root", {"securityContext": {"runAsUser": 0}}, "worker", "runAsUser=0"),
]


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("template", "role", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_privileged_template_fails_at_once(
    operator, kube, restricted, template: dict[str, Any], role: str, reason: str
) -> None:
    create_job(kube.custom, restricted, JOB, spec(template))
    status = wait_for(phase_is(kube.custom, restricted, JOB, "Failed"), timeout=30)
    failed = condition(status, "Failed")
    assert failed["reason"] == "PodRejected", failed
    assert f"the API server refused {role} pod" in failed["message"], failed
    assert 'violates PodSecurity "restricted:latest"' in failed["message"], failed
    assert reason in failed["message"], failed
    assert status["restarts"] == 0
    refused = pod_creates(operator).get("403", 0)
    assert 1 <= refused <= 2, refused  # the first refusal stops further creates
    # Never retried: a few resyncs later nothing more was tried and the job stays Failed.
    time.sleep(4)
    assert pod_creates(operator).get("403", 0) == refused
    later = job_status(kube.custom, restricted, JOB)
    assert later["phase"] == "Failed" and later["restarts"] == 0
    assert live_pod_names(kube.core, restricted, JOB) == []
