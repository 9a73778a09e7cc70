"""Shared plumbing of the benchmarks: launch a script's worker mode under torchrun, collect
the JSON that rank 0 writes, and describe the machine. Not part of the product."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "examples" / "data" / "tinyshakespeare.txt"


def use_checkout() -> None:
    """This checkout first on sys.path: its packages (api, cli, operator, trainer) and the
    repo root (for tests.support), so a benchmark runs the code beside it, installed or not."""
    for path in (REPO, *(REPO / d for d in ("operator", "trainer", "cli", "api"))):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of worker processes: this checkout's code first on the path."""
    env = dict(os.environ)
    paths = [str(REPO / d) for d in ("api", "trainer", "cli")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    env.update(extra)
    return env


def launch(
    script: str,
    args: list[str],
    *,
    nproc: int = 2,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `script --worker ARGS` on `nproc` processes; returns what rank 0 wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            *(extra or ["--standalone"]),
            script,
            "--worker",
            "--out",
            str(out),
            *args,
        ]
        subprocess.run(cmd, env=worker_env(**(env or {})), check=True)
        return json.loads(out.read_text())


def write_result(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=1))


def machine() -> str:
    """One line about where the numbers come from."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, load average {load:.1f}"
    )


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"lmjob-bench-{prefix}-"))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser, with the hidden arguments of its worker mode."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    return p


def worker_session(training: dict[str, Any], root: str) -> Any:
    """In a worker: join the launch's process group and set up a trainer session."""
    from lmjob_api.trainer_config import TrainerConfig
    from lmjob_trainer.distributed import init_distributed
    from lmjob_trainer.metrics import TrainerMetrics
    from lmjob_trainer.session import build_session

    env = init_distributed()
    config = TrainerConfig.model_validate({"jobName": "bench", "training": training})
    return build_session(config, env, Path(root), TrainerMetrics("bench", env))
