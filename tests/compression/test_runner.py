"""The stage runner for real: the trainer under torchrun (2 processes, gloo), training a tiny
GPT on Shakespeare and then running its compression chain; kills and restarts; metrics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, SHAKESPEARE

from lmjob_api.exit_codes import CONFIG_ERROR
from lmjob_api.trainer_config import parse_trainer_config
from lmjob_trainer.launch import descendants

CONTRACT_METRICS = {"evalLoss", "params", "bytes", "latencyMs", "wallSeconds"}
RUN_TIMEOUT = 240


def _env() -> dict[str, str]:
    paths = [str(REPO / p) for p in ("api", "trainer")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def _config(
    tmp_path: Path, stages: list[dict[str, Any]], strategy: str = "ddp", steps: int = 30
) -> Path:
    tensor_parallel = 2 if strategy == "fsdp+tp" else 1
    data = tmp_path / "shakespeare-200k.txt"
    if not data.exists():
        data.write_bytes(SHAKESPEARE.read_bytes()[:200_000])
    config = {
        "jobName": "tiny",
        "training": {
            "model": {"layers": 2, "heads": 4, "hidden": 32, "seqLen": 32},
            "data": {"source": str(data), "validationSplit": 0.1},
            "parallelism": {"strategy": strategy, "tensorParallel": tensor_parallel},
            "optimizer": {"lr": 3e-3},
            "schedule": {"warmupSteps": 5},
            "steps": steps,
            "batch": {"microBatchSize": 8},
            "evaluation": {"everySteps": 1000, "steps": 4},
            "checkpoint": {"everySteps": 10, "keep": 2},
        },
        "compression": {"stages": stages},
    }
    parse_trainer_config(config)  # the test's own config must be valid
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _torchrun(config: Path, root: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "lmjob_trainer", "--config", str(config), "--checkpoint-dir", str(root),
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_all(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the launcher and every worker at once, like a lost node."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_all(proc)
        pytest.fail("trainer hung")
    assert proc.returncode == 0, out[-4000:]
    return out


def _report(root: Path, stage: str) -> dict[str, Any]:
    return json.loads((root / stage / "report.json").read_text())


def _load_in_fresh_process(root: Path, stages: list[str]) -> dict[str, Any]:
    """What `load_stage` gives in a new interpreter (nothing imported beforehand)."""
    code = (
        "import json, sys, torch\n"
        "from lmjob_trainer.compression import load_stage\n"
        "out = {}\n"
        "for s in sys.argv[2:]:\n"
        "    m = load_stage(sys.argv[1], s)\n"
        "    logits, _ = m(torch.randint(0, 256, (1, 32)))\n"
        "    out[s] = {'finite': bool(torch.isfinite(logits).all()), 'eval': not m.training,\n"
        "              'fc': type(m.blocks[0].mlp.fc).__name__,\n"
        "              'weight': type(m.blocks[0].mlp.fc.up.weight if hasattr(m.blocks[0].mlp.fc, 'up')\n"
        "                             else m.blocks[0].mlp.fc.weight).__name__}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), *stages],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen[str]) -> Path:
    folder, pattern = path_glob
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern)) if folder.exists() else []
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"trainer ended before the kill:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


@pytest.mark.slow
def test_every_stage_type_runs_resumes_from_a_kill_reloads_and_reports(tmp_path: Path) -> None:
    """Every stage type in one chain, killed (launcher and workers at once, like a lost node)
    in the middle of a stage's fine-tune: the rerun skips what finished, resumes that stage
    from its checkpoint, and runs the rest; every stage's folder then loads in a fresh
    process."""
    stages = [
        {"name": "heads", "type": "prune", "sparsity": 0.5, "structure": "head"},
        {"name": "prune", "type": "prune", "sparsity": 0.5, "finetuneSteps": 40},
        {"name": "lowrank", "type": "lowrank", "rankRatio": 0.5, "finetuneSteps": 10,
         "calibrationBatches": 2},
        {"name": "int8", "type": "quantize", "method": "int8-weight-only"},
        {"name": "student", "type": "distill", "student": {"layers": 1}, "steps": 10},
    ]  # fmt: skip
    # fsdp+tp: compressed layers fine-tune with FSDP alone, the student with the 2-D plan.
    config = _config(tmp_path, stages, strategy="fsdp+tp")
    root = tmp_path / "run"
    proc = _torchrun(config, root)
    _wait_for((root / "prune", "step-*/COMPLETE"), proc)
    _kill_all(proc)
    assert not (root / "prune" / "report.json").exists()
    before = {
        "train": sorted(p.name for p in (root / "train").iterdir()),
        "heads": (root / "heads" / "report.json").stat().st_mtime_ns,
    }

    out = _finish(_torchrun(config, root))
    # Earlier stages untouched: no new train checkpoint, the heads report not rewritten.
    assert sorted(p.name for p in (root / "train").iterdir()) == before["train"]
    assert (root / "heads" / "report.json").stat().st_mtime_ns == before["heads"]
    assert "training already finished" in out
    assert "stage finished before; skipped" in out
    resumed = [line for line in out.splitlines() if "stage=prune" in line and "continuing" in line]
    assert resumed and "from_step=0" not in resumed[0], out[-3000:]

    reports = {s["name"]: _report(root, s["name"]) for s in stages}
    for name, report in reports.items():
        assert report["phase"] == "Succeeded"
        assert report["metrics"].keys() >= CONTRACT_METRICS, name
        assert (root / name / "final" / "COMPLETE").exists()
        # bytes is what the folder really holds, not an estimate
        on_disk = sum(p.stat().st_size for p in (root / name / "final").iterdir())
        assert report["bytes"] == on_disk
    # The masks held through sharding, the kill and the resume.
    assert reports["heads"]["sparsity"] == pytest.approx(0.5)
    assert reports["prune"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert reports["prune"]["steps"] == 40
    assert reports["prune"]["evalLossBeforeFinetune"] is not None
    assert reports["prune"]["details"]["finetuneStrategy"] == "fsdp"
    # All 4 linears of both blocks: with half the heads gone, even the attention output
    # projection (no longer square) is smaller at half its rank.
    assert reports["lowrank"]["details"]["layersFactorized"] == 8
    assert reports["lowrank"]["params"] < reports["prune"]["params"]
    assert reports["int8"]["linearCompression"] > 3
    assert reports["int8"]["bytes"] < reports["lowrank"]["bytes"]
    assert reports["student"]["params"] < reports["int8"]["params"]
    # Each stage starts from the one before it.
    assert reports["lowrank"]["inputEvalLoss"] == pytest.approx(reports["prune"]["evalLoss"])

    loaded = _load_in_fresh_process(root, ["train", *(s["name"] for s in stages)])
    assert all(v["finite"] and v["eval"] for v in loaded.values())
    assert loaded["lowrank"]["fc"] == "LowRankLinear"
    assert loaded["int8"]["weight"] == "Int8Tensor"
    assert loaded["student"]["fc"] == loaded["train"]["fc"] == "Linear"


def test_bad_chain_fails_before_training(tmp_path: Path) -> None:
    stages = [{"name": "int4", "type": "quantize", "method": "int4-weight-only"}]
    root = tmp_path / "run"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lmjob_trainer", "--config", str(_config(tmp_path, stages)),
         "--checkpoint-dir", str(root)],
        env={**_env(), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == CONFIG_ERROR  # never retried, by torchrun or the operator
    assert "compression.stages[0].method" in done.stderr + done.stdout
    assert not (root / "train").exists()
    assert time.monotonic() - started < 60


def test_stage_phases_and_results_are_exported_as_metrics(tmp_path: Path) -> None:
    """In one process (a group of one): the stage series of docs/contracts.md after a run,
    and a rerun that skips the finished stages but exports the same numbers."""
    from lmjob_trainer.distributed import close_distributed, init_distributed
    from lmjob_trainer.metrics import TrainerMetrics
    from lmjob_trainer.train import run

    stages = [
        {"name": "prune", "type": "prune", "sparsity": 0.5, "finetuneSteps": 5},
        {"name": "int8", "type": "quantize", "method": "int8-dynamic"},
    ]
    config = parse_trainer_config(yaml.safe_load(_config(tmp_path, stages, steps=10).read_text()))
    root = tmp_path / "run"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    exported = []
    try:
        for _ in range(2):
            env = init_distributed()
            try:
                metrics = TrainerMetrics("tiny", env)
                assert run(config, env, root, metrics) == 0
            finally:
                close_distributed()
            exported.append(
                {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in metrics.registry.collect()
                    for s in family.samples
                    if s.name.startswith("lmjob_trainer_stage_")
                }
            )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    for series in exported:
        for stage in ("prune", "int8"):
            phases = [dict(k[1])["phase"] for k in series if k[0] == "lmjob_trainer_stage_info"
                      and dict(k[1])["stage"] == stage]  # fmt: skip
            assert phases == ["Succeeded"], (stage, phases)
            report = _report(root, stage)
            for metric, value in report["metrics"].items():
                key = ("lmjob_trainer_stage_result",
                       (("job", "tiny"), ("metric", metric), ("stage", stage)))  # fmt: skip
                assert series[key] == pytest.approx(value), (stage, metric)
    # The rerun skipped training and both stages, yet exports what the first run did.
    train = _report(root, "train")
    for series in exported:
        for metric in ("evalLoss", "params", "wallSeconds"):
            key = ("lmjob_trainer_stage_result",
                   (("job", "tiny"), ("metric", metric), ("stage", "train")))  # fmt: skip
            assert series[key] == pytest.approx(train[metric], abs=1e-3), metric
    assert exported[0] == exported[1]
