"""`lmjob sweep` end to end: a tiny sweep of real local runs, Ctrl-C, resume, the best trial;
and the inputs it refuses before any trial starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmjob_cli.sweep import load_sweep, read_state
from lmjob_trainer import storage
from lmjob_trainer.stragglers import TEST_SLOW_RANK_ENV

from .conftest import REPO, subprocess_env, tiny_training, wait_for

MAX_TRIALS = 2


def _sweep_manifest(tmp: Path, text: Path, **spec: Any) -> Path:
    """sweeps/sweep.yaml naming `data/corpus.txt` beside it, over lr and dropout."""
    data = tmp / "sweeps" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "corpus.txt").write_bytes(text.read_bytes())
    training = tiny_training(
        Path("data/corpus.txt"),
        tmp / "cache",
        steps=8,
        evaluation={"everySteps": 4, "steps": 2},
        checkpoint={"everySteps": 4, "keep": 2},
    )
    manifest = {
        "apiVersion": "lmjob.dev/v1alpha1",
        "kind": "LargeModelSweep",
        "metadata": {"name": "tiny"},
        "spec": {
            "template": {"workers": {"replicas": 1, "procsPerWorker": 1}, "training": training},
            "parameters": [
                {
                    "path": "training.optimizer.lr",
                    "type": "float",
                    "low": 1e-4,
                    "high": 1e-2,
                    "log": True,
                },
                {"path": "training.model.dropout", "type": "float", "low": 0.0, "high": 0.2},
            ],
            "algorithm": {"type": "tpe", "seed": 3},
            "maxTrials": MAX_TRIALS,
            **spec,
        },
    }
    path = tmp / "sweeps" / "sweep.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = subprocess_env(**extra)
    # The sweep engine lives in operator/ (lmjob_sweep).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), env["PYTHONPATH"]])
    return env


def _lmjob(
    *args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lmjob_cli.main", *args],
        cwd=cwd,
        env=_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _trials(state: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(state.read_text())["status"]["trials"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.slow
def test_sweep_interrupt_resume_and_best(tmp_path: Path, text_file: Path) -> None:
    """Ctrl-C after the first trial stops the second at a checkpoint and exits 130; the same
    command then keeps trial 0 as it was, resumes trial 1 from its checkpoint, runs the rest
    and prints the best trial with a manifest that `lmjob validate` accepts."""
    manifest = _sweep_manifest(tmp_path, text_file)
    sweep_dir = tmp_path / "runs" / "tiny"
    state = sweep_dir / "sweep.json"
    trial_1 = sweep_dir / "trials" / "tiny-1"
    # Slowed steps: on a fast machine trial 1 could otherwise train its last four steps between
    # the step-4 checkpoint and the Ctrl-C, leaving nothing to resume.
    slowed = {TEST_SLOW_RANK_ENV: "0:0.5"}
    proc = _lmjob("sweep", str(manifest), cwd=tmp_path, env=slowed, start_new_session=True)

    def second_trial_checkpointed() -> bool:
        trials = _trials(state)
        return (
            len(trials) >= 2
            and trials[0]["state"] == "Complete"
            and storage.latest_complete(trial_1, "train") is not None
        )

    assert wait_for(second_trial_checkpointed, 120, interval=0.1), proc.stderr
    first = _trials(state)[0]
    first_log = (sweep_dir / "trials" / "tiny-0" / "run.log").read_text()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"run the same command again to resume: lmjob sweep {manifest}" in err
    assert "Traceback" not in err

    again = _lmjob("sweep", str(manifest), cwd=tmp_path)
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    trials = _trials(state)
    assert len(trials) == MAX_TRIALS, trials
    assert all(t["state"] in ("Complete", "Pruned") for t in trials), trials
    # Trial 0 was not run again: the same record, and one start in its log.
    assert trials[0] == first
    assert (sweep_dir / "trials" / "tiny-0" / "run.log").read_text() == first_log
    assert (trial_1 / "run.log").read_text().count("--- lmjob sweep: started") == 2
    worker_logs = "\n".join(p.read_text() for p in (trial_1 / "logs").rglob("stderr.log"))
    assert 'msg="resumed from checkpoint"' in worker_logs

    best = json.loads(state.read_text())["status"]["best"]
    complete = {t["number"]: t["value"] for t in trials if t["state"] == "Complete"}
    assert best["value"] == min(complete.values()) == complete[best["number"]]
    assert f"best: trial {best['number']}" in out
    best_manifest = sweep_dir / "best.yaml"
    assert f"lmjob run {best_manifest.relative_to(tmp_path)}" in out
    job = yaml.safe_load(best_manifest.read_text())
    assert job["metadata"]["name"] == f"tiny-{best['number']}"
    assert job["spec"]["training"]["optimizer"]["lr"] == best["parameters"]["training.optimizer.lr"]
    # Its relative data path names the corpus from best.yaml's own folder.
    assert (sweep_dir / job["spec"]["training"]["data"]["source"]).resolve() == (
        manifest.parent / "data" / "corpus.txt"
    ).resolve()
    check = _lmjob("validate", str(best_manifest), cwd=tmp_path)
    out, _ = check.communicate(timeout=60)
    assert check.returncode == 0, out


REFUSALS = [
    # (what is wrong, change to the manifest, words the message must hold)
    (
        "a path the job has no field for",
        lambda m: m["spec"]["parameters"][0].update(path="training.optimizer.nope"),
        "spec.parameters[0].path",
    ),
    (
        "a bound the job rejects",
        lambda m: m["spec"]["parameters"][1].update(low=-1.0),
        "spec.parameters[1].low",
    ),
    (
        "a job, not a sweep",
        lambda m: m.update(kind="LargeModelJob"),
        "expected one LargeModelSweep",
    ),
    (
        "a data file that is not there",
        lambda m: m["spec"]["template"]["training"]["data"].update(source="missing.txt"),
        "spec.template.training.data.source",
    ),
]


@pytest.mark.parametrize(("case", "change", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_sweep_refuses_bad_input(
    tmp_path: Path, text_file: Path, case: str, change: Any, words: str
) -> None:
    manifest = _sweep_manifest(tmp_path, text_file)
    data = yaml.safe_load(manifest.read_text())
    change(data)
    manifest.write_text(yaml.safe_dump(data))
    proc = _lmjob("sweep", str(manifest), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert words in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "trials").exists()


def test_sweep_refuses_another_sweeps_state(tmp_path: Path, text_file: Path) -> None:
    """A sweep.json written for another spec: no trial of it is mixed into this search."""
    manifest = _sweep_manifest(tmp_path, text_file)
    data = yaml.safe_load(manifest.read_text())
    other = {**data, "spec": {**data["spec"], "maxTrials": 7}, "status": {"phase": "Running"}}
    state = tmp_path / "runs" / "tiny" / "sweep.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps(other))
    proc = _lmjob("sweep", str(manifest), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "with a different spec" in err and "--dir" in err, err
    # --parallel only says how many run at once: the same search.
    same = {**data, "spec": {**data["spec"], "parallelTrials": 2}, "status": {"phase": "Running"}}
    state.write_text(json.dumps(same))
    sweep, problems = load_sweep(manifest)
    assert not problems
    assert read_state(state, sweep).phase == "Running"


REBASES = [
    # (source path in the template, manifest moved from a/ to b/c/, expected)
    ("data/x.txt", "../../a/data/x.txt"),
    ("/abs/x.txt", "/abs/x.txt"),
    ("bytes", "bytes"),
]


@pytest.mark.parametrize(("source", "expected"), REBASES)
def test_rebase_paths_keeps_naming_the_same_file(
    tmp_path: Path, source: str, expected: str
) -> None:
    from lmjob_cli.sweep_trials import rebase_paths

    spec = {"training": {"data": {"source": source, "tokenizer": source}, "steps": 3}}
    out = rebase_paths(spec, tmp_path / "a", tmp_path / "b" / "c")
    assert out["training"]["data"] == {"source": expected, "tokenizer": expected}
    assert spec["training"]["data"]["source"] == source  # the input is not changed
    assert "model" not in out["training"]
