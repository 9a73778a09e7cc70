"""Bad configs fail fast, before any training process starts, naming the field at fault."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmjob_api import termination
from lmjob_api.env import CONFIG_ERROR_FILE_ENV
from lmjob_api.exit_codes import CONFIG_ERROR
from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.validation import load_job
from lmjob_cli.main import main as lmjob
from lmjob_trainer.preflight import check_runnable

from .conftest import subprocess_env, tiny_training, write_config


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


def test_lmjob_run_refuses_an_export_whose_runtime_is_missing_before_training(
    tmp_path: Path,
    text_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """spec.export's onnx needs onnxruntime: without it the run stops before training, not
    after it, naming the format and the extra that brings it."""
    manifest = _manifest(tmp_path, text_file)
    manifest["spec"]["export"] = {"formats": ["hf", "onnx"]}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an uninstalled package reads as
    assert lmjob(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.export.formats[1]" in err and "onnxruntime" in err and "lmjob[export]" in err
    assert "spec.export.formats[0]" not in err
    assert not (tmp_path / "runs").exists()


def test_trainer_refuses_bad_config_file(tmp_path: Path, text_file: Path) -> None:
    """`python -m lmjob_trainer` on an invalid config: exit 78, the field named, no traceback."""
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
    assert proc.returncode == CONFIG_ERROR
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
    with exit 78 and says why in the termination message, which the operator shows."""
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
    assert proc.returncode == CONFIG_ERROR, proc.stderr[-2000:]
    error = termination.decode_error(message.read_text())
    assert error is not None and "training.parallelism.tensorParallel" in error, error
    assert error.startswith("cannot run this config:")


def _launch(
    args: list[str], tmp: Path, timeout: float = 120, **env: str
) -> tuple[subprocess.CompletedProcess, float, str | None]:
    """`python -m lmjob_trainer.launch -- <args>` as a worker container runs it: (the
    process, its seconds, the error in its termination message)."""
    message = tmp / "termination-log"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lmjob_trainer.launch", "--", *args],
        env=subprocess_env(**{termination.PATH_ENV: str(message)}, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
    )
    error = termination.decode_error(message.read_text()) if message.exists() else None
    return proc, time.monotonic() - started, error


# torchrun as the operator starts it in a pod: 10 local restarts allowed.
TORCHRUN_ARGS = [
    "--standalone",
    "--nproc-per-node=2",
    "--max-restarts=10",
    "--monitor-interval=0.1",
]


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ({"optimizer": {"learningRate": 0.1}}, "training.optimizer.learningRate"),
        ({"data": {"source": "no/such/file.txt"}}, "training.data.source"),
    ],
    ids=["unknown field", "data source missing"],
)
def test_launcher_refuses_a_bad_config_before_torch(
    edits: dict[str, Any], field: str, tmp_path: Path, text_file: Path
) -> None:
    training = tiny_training(text_file, tmp_path / "cache")
    for key, value in edits.items():
        training[key] = {**training[key], **value}
    config = write_config(tmp_path / "c.yaml", training)
    proc, seconds, error = _launch(
        [*TORCHRUN_ARGS, "-m", "lmjob_trainer"], tmp_path, LMJOB_CONFIG=str(config)
    )
    assert proc.returncode == CONFIG_ERROR, proc.stderr[-2000:]
    assert error is not None and field in error, error
    assert "torch.distributed" not in proc.stderr, "torchrun was started"
    assert seconds < 15, seconds


@pytest.mark.slow
def test_config_error_inside_a_worker_is_not_restarted(tmp_path: Path, text_file: Path) -> None:
    """A problem only a running worker finds (tensor parallel 4 in a world of 2 processes)
    ends the launcher with 78 at the first failure, not after torchrun's 10 restarts."""
    training = tiny_training(
        text_file,
        tmp_path / "cache",
        parallelism={"strategy": "fsdp+tp", "tensorParallel": 4},
        model={"heads": 4, "hidden": 32},
    )
    config = write_config(tmp_path / "c.yaml", training)
    proc, seconds, error = _launch(
        [*TORCHRUN_ARGS, "-m", "lmjob_trainer"],
        tmp_path,
        LMJOB_CONFIG=str(config),
        **{CONFIG_ERROR_FILE_ENV: str(tmp_path / "marker")},
    )
    assert proc.returncode == CONFIG_ERROR, proc.stderr[-3000:]
    assert error is not None and "training.parallelism.tensorParallel" in error, error
    # Restarting means a fresh torch import per round: 10 of them take far longer.
    assert proc.stderr.count("attempts left") <= 1, proc.stderr[-3000:]
    assert seconds < 45, seconds


# A user's program (spec.command): it opts in by writing the marker before exiting 78.
OPT_IN = (
    "import os, sys, pathlib; "
    "pathlib.Path(os.environ['LMJOB_CONFIG_ERROR_FILE']).write_text('my.flag: must be set'); "
    "sys.exit(78)"
)


@pytest.mark.slow
def test_own_command_opts_in_under_torchrun(tmp_path: Path) -> None:
    """spec.command runs under the launcher too (`--no-python`, as the operator starts it)."""
    proc, seconds, said = _launch(
        [*TORCHRUN_ARGS, "--no-python", sys.executable, "-c", OPT_IN], tmp_path
    )
    assert proc.returncode == CONFIG_ERROR, proc.stderr[-3000:]
    assert said == "my.flag: must be set"
    assert seconds < 45, seconds


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "

# (case id, what the child process (standing in for torchrun) runs, launcher's exit code)
SUPERVISE_CASES = [
    ("exit code passes through", "import sys; sys.exit(3)", 3, False),
    ("killed by a signal is 128+N", "import os, signal; os.kill(os.getpid(), 9)", 137, False),
    (
        "marker ends it",
        "import time; pathlib.Path(MARKER).write_text('x: bad'); time.sleep(60)",
        78,
        True,
    ),
    (
        "marker ends one that ignores SIGTERM",
        STUBBORN + "pathlib.Path(MARKER).write_text('x: bad'); time.sleep(60)",
        78,
        True,
    ),
    (
        "marker then exit 1 (as torchrun does)",
        "pathlib.Path(MARKER).write_text('x: bad'); sys.exit(1)",
        78,
        True,
    ),
]


@pytest.mark.parametrize(
    ("program", "code", "error"),
    [c[1:] for c in SUPERVISE_CASES],
    ids=[c[0] for c in SUPERVISE_CASES],
)
def test_supervise(
    program: str, code: int, error: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmjob_trainer.launch import supervise

    message = tmp_path / "termination-log"
    monkeypatch.setenv(termination.PATH_ENV, str(message))
    marker = tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", f"import pathlib, sys; MARKER = {str(marker)!r}; {program}"]
    )
    started = time.monotonic()
    assert supervise(child, marker, grace=0.5) == code
    assert time.monotonic() - started < 20
    assert child.poll() is not None
    said = termination.decode_error(message.read_text()) if message.exists() else None
    assert said == ("x: bad" if error else None)


@pytest.mark.slow
def test_lmjob_run_stops_at_a_config_error_a_worker_finds(tmp_path: Path) -> None:
    """`lmjob run` watches the same marker as the pod's launcher: a problem found inside a
    worker (a text shorter than one sequence, seen only once tokenised) ends the run with the
    message, without the in-process agent restarting the workers."""
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("To be.\n")
    manifest = _manifest(tmp_path, tiny, procs=1)
    manifest["spec"]["runPolicy"] = {"backoffLimit": 5}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lmjob_cli.main", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=subprocess_env(),
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "tokens are too few for model.seqLen" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    attempts = list((tmp_path / "runs" / "bad" / "logs").glob("*/attempt_*"))
    assert len(attempts) == 1, attempts  # never restarted
    assert seconds < 60, seconds
