"""Bad configs fail fast, before any training process starts, naming the field at fault."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmjob_api import termination
from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.validation import load_job
from lmjob_cli.main import main as lmjob
from lmjob_trainer.preflight import check_runnable

from .conftest import subprocess_env, tiny_training


def _manifest(tmp: Path, text: Path, *, procs: int = 2, **training: Any) -> dict[str, Any]:
    spec_training = tiny_training(text, tmp / "cache")
    for key, value in training.items():
        spec_training[key] = {**spec_training.get(key, {}), **value}
    return {
        "apiVersion": "lmjob.dev/v1alpha1",
        "kind": "LargeModelJob",
        "metadata": {"name": "bad"},
        "spec": {"workers": {"replicas": 1, "procsPerWorker": procs}, "training": spec_training},
    }


# (case, manifest edits, field named in the error)
CASES = [
    (
        "tp does not divide heads",
        {
            "training": {
                "parallelism": {"strategy": "fsdp+tp", "tensorParallel": 2},
                "model": {"heads": 3, "hidden": 33},
            }
        },
        "spec.training.parallelism.tensorParallel",
    ),
    (
        "fsdp+tp on CPU with fewer processes than tp",
        {"procs": 1, "training": {"parallelism": {"strategy": "fsdp+tp", "tensorParallel": 2}}},
        "spec.workers.procsPerWorker",
    ),
    (
        "world size not a multiple of tp",
        {"procs": 3, "training": {"parallelism": {"strategy": "fsdp+tp", "tensorParallel": 2}}},
        "spec.workers.procsPerWorker",
    ),
    (
        "int4 quantize without CUDA",
        {
            "compression": {
                "stages": [{"name": "q", "type": "quantize", "method": "int4-weight-only"}]
            }
        },
        "spec.compression.stages[0].method",
    ),
    (
        "data source missing",
        {"training": {"data": {"source": "no/such/file.txt"}}},
        "spec.training.data.source",
    ),
    (
        "unknown field",
        {"training": {"optimizer": {"learningRate": 0.1}}},
        "spec.training.optimizer.learningRate",
    ),
    (
        "warmup longer than training",
        {"training": {"schedule": {"warmupSteps": 100}}},
        "spec.training.schedule.warmupSteps",
    ),
]


@pytest.mark.parametrize(("edits", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lmjob_run_refuses_before_starting(
    edits: dict[str, Any],
    field: str,
    tmp_path: Path,
    text_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    edits = dict(edits)
    manifest = _manifest(
        tmp_path, text_file, procs=edits.pop("procs", 2), **edits.pop("training", {})
    )
    manifest["spec"].update(edits)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    monkeypatch.chdir(tmp_path)
    assert lmjob(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert field in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "a process started or storage was created"


def test_trainer_refuses_bad_config_file(tmp_path: Path, text_file: Path) -> None:
    """`python -m lmjob_trainer` on an invalid config: exit 2, the field named, no traceback."""
    training = tiny_training(text_file, tmp_path / "cache")
    training["batch"] = {"microBatchSize": 8, "globalBatchSize": 6}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"jobName": "t", "training": training}))
    proc = subprocess.run(
        [sys.executable, "-m", "lmjob_trainer", "--config", str(path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "training.batch.microBatchSize" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runtime_checks_name_fields(text_file: Path, tmp_path: Path) -> None:
    config = TrainerConfig.model_validate(
        {
            "training": tiny_training(
                text_file,
                tmp_path,
                parallelism={"strategy": "fsdp+tp", "tensorParallel": 4},
                model={"heads": 4, "hidden": 32},
            )
        }
    )
    fields = {p.path for p in check_runnable(config, world_size=6, cuda_devices=0)}
    assert fields == {"training.parallelism.tensorParallel"}
    assert check_runnable(config, world_size=8, cuda_devices=0) == []


def test_example_manifest_is_valid() -> None:
    job = load_job(Path(__file__).resolve().parents[2] / "examples" / "shakespeare-cpu.yaml")
    assert {s.type for s in job.spec.compression.stages} == {
        "prune",
        "lowrank",
        "quantize",
        "distill",
    }


def test_runtime_refusal_is_the_pods_termination_message(tmp_path: Path, text_file: Path) -> None:
    """What only the running trainer can tell (here: TP 2 in a world of 1) ends the process
    with exit 2 and says why in the termination message, which the operator shows."""
    training = tiny_training(text_file, tmp_path / "cache")
    training["parallelism"] = {"strategy": "fsdp+tp", "tensorParallel": 2}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"jobName": "t", "training": training}))
    message = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "lmjob_trainer", "--config", str(path)],
        env=subprocess_env(**{termination.PATH_ENV: str(message)}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = termination.decode_error(message.read_text())
    assert error is not None and "training.parallelism.tensorParallel" in error, error
    assert error.startswith("cannot run this config:")
