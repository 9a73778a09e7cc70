"""`lmjob run` end to end: a tiny job through the real launcher, Ctrl-C, and resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmjob_api import termination
from lmjob_api.goodput import LEDGER, Tally
from lmjob_trainer import storage

from .conftest import losses, subprocess_env, tiny_training, wait_for


def _write_job(tmp: Path, text: Path, name: str, **training: object) -> Path:
    """jobs/job.yaml naming `data/corpus.txt`, which lies beside it (jobs/data/)."""
    data = tmp / "jobs" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "corpus.txt").write_bytes(text.read_bytes())
    spec_training = tiny_training(Path("data/corpus.txt"), Path("cache"), **training)
    manifest = {
        "apiVersion": "lmjob.dev/v1alpha1",
        "kind": "LargeModelJob",
        "metadata": {"name": name},
        "spec": {
            "workers": {"replicas": 1, "procsPerWorker": 2},
            "training": spec_training,
            "compression": {"stages": [{"name": "int8", "type": "quantize"}]},
            "metrics": {"port": 9400},
        },
    }
    path = tmp / "jobs" / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _lmjob_run(
    manifest: Path, cwd: Path, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lmjob_cli.main", "run", str(manifest)],
        cwd=cwd,
        env=subprocess_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_lmjob_run_interrupt_and_resume(tmp_path: Path, text_file: Path) -> None:
    """The whole local path: relative paths resolved against the manifest's folder, storage
    under the working directory, Ctrl-C leaving a checkpoint, the same command resuming and
    finishing with the summary table and a sample."""
    manifest = _write_job(tmp_path, text_file, "tiny", steps=150, checkpoint={"everySteps": 1000})
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    run_dir = cwd / "runs" / "tiny"
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches every process.
    proc = _lmjob_run(manifest, cwd, start_new_session=True)
    assert wait_for(lambda: len(losses(run_dir)) >= 5, 180, interval=0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-4000:]
    assert "run the same command again to resume" in err
    latest = storage.latest_complete(run_dir, "train")
    assert latest is not None and 5 <= latest[0] < 150, latest
    assert (run_dir / "trainer.yaml").is_file()

    # As in a pod, where the operator sets it: rank 0 leaves the stages' final results there.
    message = tmp_path / "termination-log"
    again = _lmjob_run(manifest, cwd, env={termination.PATH_ENV: str(message)})
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-4000:]
    final = {s.name: s for s in termination.decode_stages(message.read_text()) or []}
    assert final["train"].phase == final["int8"].phase == "Succeeded", final
    int8_report = storage.read_report(run_dir, "int8")
    for metric, value in int8_report.metrics.items():
        assert final["int8"].metrics[metric] == pytest.approx(value, rel=1e-5), metric
    assert final["train"].metrics["evalLoss"] == pytest.approx(
        storage.read_report(run_dir, "train").metrics["evalLoss"], rel=1e-5
    )
    resumed_log = "\n".join(p.read_text() for p in (run_dir / "logs").rglob("stderr.log"))
    assert f'msg="resumed from checkpoint" path={latest[1]}' in resumed_log
    report = storage.read_report(run_dir, "train")
    assert report.phase == "Succeeded" and report.steps == 150
    assert report.metrics["evalLoss"] < 3.5
    lines = out.splitlines()
    assert any(line.split()[:3] == ["train", "Succeeded", "150"] for line in lines), out
    # The table: one row per stage, with what each report measured.
    table = {
        cells[0]: cells
        for cells in (re.split(r"\s{2,}", line.strip()) for line in lines)
        if cells[0] in ("stage", "train", "int8")
    }
    assert table["stage"][4:8] == ["params", "size", "sparsity", "latency"], out
    int8 = storage.read_report(run_dir, "int8").metrics
    _, phase, steps, eval_loss, params, size, _, latency, output = table["int8"]
    assert (phase, steps) == ("Succeeded", "0"), out
    assert float(eval_loss) == pytest.approx(int8["evalLoss"], abs=1e-4)
    assert params == f"{int8['params'] / 1000:.1f}k", out
    assert size == f"{int8['bytes'] / 1024:.1f} KiB", out
    assert latency == f"{int8['latencyMs']:.1f} ms", out
    assert output == "runs/tiny/int8/final", out
    assert table["train"][4] == f"{report.metrics['params'] / 1000:.1f}k", out
    assert "sample from the trained model" in out
    assert "finished in" in err
    # Goodput over both runs: saved on Ctrl-C, so no step was done twice; the time between
    # the two commands is a restart; every step's time is productive, once.
    tally = Tally.of_file(run_dir / LEDGER)
    assert tally.seconds["redone"] == 0 and tally.seconds["restart"] > 0, tally
    history = storage.read_history(run_dir, "train")
    assert tally.seconds["productive"] == pytest.approx(
        sum(h["seconds"] for h in history.values() if "seconds" in h), rel=1e-6
    )
    assert re.search(r"^goodput \d+\.\d % of .*\(productive ", err, re.M), err[-2000:]


@pytest.mark.slow
def test_lmjob_run_stops_at_the_active_deadline(tmp_path: Path, text_file: Path) -> None:
    """runPolicy.activeDeadlineSeconds holds locally as on a cluster: the run stops, the
    workers checkpoint, the command fails; running it again would resume."""
    manifest = _write_job(
        tmp_path, text_file, "late", steps=1_000_000, checkpoint={"everySteps": 1_000_000}
    )
    job = yaml.safe_load(manifest.read_text())
    job["spec"]["runPolicy"] = {"activeDeadlineSeconds": 30}
    manifest.write_text(yaml.safe_dump(job))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    started = time.monotonic()
    proc = _lmjob_run(manifest, cwd)
    _, err = proc.communicate(timeout=180)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, err[-4000:]
    assert "runPolicy.activeDeadlineSeconds (30 s) passed" in err, err[-4000:]
    assert 30 <= elapsed < 150, elapsed
    # The only checkpoint is the one written on the way out.
    latest = storage.latest_complete(cwd / "runs" / "late", "train")
    assert latest is not None and latest[0] > 0, err[-4000:]
    assert f"train: checkpoint at step {latest[0]}" in err
    assert storage.read_report(cwd / "runs" / "late", "train") is None
