"""`lmjob submit|list|status|logs|delete` against the real API server, with the operator running."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmjob_cli.cluster import format_status
from lmjob_cli.main import main
from tests.operator.harness import get_job, live_pod_names, phase_is, run_pods, wait_for
from tests.support.invalid_jobs import load_sweep_cases

REPO = Path(__file__).resolve().parents[2]


def lmjob(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_lifecycle(operator, kube, namespace, control_plane, capsys) -> None:
    kc = ["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace]
    code, out, _ = lmjob(capsys, "submit", str(REPO / "examples" / "byo-command.yaml"), *kc)
    assert code == 0 and out == f"largemodeljob/resnet-byo created in {namespace}\n"
    wait_for(lambda: len(live_pod_names(kube.core, namespace, "resnet-byo")) == 2)
    run_pods(kube.core, namespace, "resnet-byo")
    wait_for(
        lambda: (
            (s := phase_is(kube.custom, namespace, "resnet-byo", "Running")())
            and s["workers"]["ready"] == 2
        )
    )

    code, out, _ = lmjob(capsys, "list", *kc)
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:6] == ["NAME", "PHASE", "WORKERS", "STAGE", "STEP", "LOSS"]
    assert row.split()[:3] == ["resnet-byo", "Running", "2/2"]

    code, out, _ = lmjob(capsys, "status", "resnet-byo", *kc)
    assert code == 0
    assert "Phase:       Running" in out
    assert "Workers:     2/2 active/desired, 2 ready, world size 8" in out

    # A worker that does not exist: the API server's answer in one line, no traceback.
    code, _, err = lmjob(capsys, "logs", "resnet-byo", "--worker", "7", *kc)
    assert code == 1 and err.startswith("lmjob: ") and "resnet-byo-worker-7" in err
    assert err.count("\n") == 1

    code, _, err = lmjob(capsys, "submit", str(REPO / "examples" / "byo-command.yaml"), *kc)
    assert code == 1 and "already exists" in err

    code, out, _ = lmjob(capsys, "delete", "resnet-byo", "--wait", *kc)
    assert code == 0
    assert get_job(kube.custom, namespace, "resnet-byo") is None


def test_submit_rejects_invalid_manifest_offline(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: lmjob.dev/v1alpha1\nkind: LargeModelJob\nmetadata: {name: x}\n"
        "spec: {command: [t], workers: {replicas: 2, minReplicas: 3}}\n"
    )
    code, _, err = lmjob(capsys, "submit", str(bad), "--kubeconfig", str(tmp_path / "none"))
    assert code == 1
    assert "spec.workers.minReplicas" in err


def test_submit_rejects_a_sweep_the_server_would_admit(tmp_path: Path, capsys) -> None:
    """A sweep whose bound breaks the job's own rules: CEL cannot see it, submit does."""
    case_id, manifest, field = next(c for c in load_sweep_cases(server=False))
    bad = tmp_path / "sweep.yaml"
    bad.write_text(yaml.safe_dump(manifest))
    code, _, err = lmjob(capsys, "submit", str(bad), "--kubeconfig", str(tmp_path / "none"))
    assert code == 1, case_id
    assert field in err and "Traceback" not in err


def test_format_status() -> None:
    obj = {
        "metadata": {"name": "gpt", "namespace": "ml"},
        "status": {
            "phase": "Compressing",
            "workers": {"summary": "4/4", "ready": 4},
            "worldSize": 32,
            "restarts": 1,
            "progress": {
                "stage": "prune",
                "step": 50,
                "totalSteps": 200,
                "loss": 1.234567,
                "tokensPerSecond": 51000.0,
            },
            "checkpoint": {"latest": "/ckpt/prune/step-000000050", "step": 50},
            "goodput": {
                "ratio": 0.8,
                "wallSeconds": 300.0,
                "seconds": {"productive": 240.0, "redone": 12.0, "restart": 30.0, "other": 18.0},
            },
            "stages": [{"name": "train", "phase": "Succeeded", "metrics": {"evalLoss": 1.47}}],
            "conditions": [
                {"type": "Running", "status": "True", "reason": "Compressing", "message": "4 of 4"}
            ],
        },
    }
    text = format_status(obj)
    assert "Job:         ml/gpt" in text
    assert "Progress:    prune step 50/200, loss 1.235, 5.1e+04 tokens/s" in text
    assert "Checkpoint:  /ckpt/prune/step-000000050 (step 50)" in text
    assert "evalLoss=1.47" in text
    assert "Running         True   Compressing" in text
    assert (
        "Goodput:     80.0 % of 5m00s (productive 4m00s, redone 12.0s, restart 30.0s, other 18.0s)"
        in text
    ), text
