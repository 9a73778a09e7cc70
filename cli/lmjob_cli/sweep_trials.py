"""The trials of `lmjob sweep` as local runs: each one `lmjob run` in its own process group.

A trial's folder `<sweep dir>/trials/<job>/` holds its manifest (`job.yaml`), the output of
its `lmjob run` (`run.log`) and its storage (checkpoints, `train/history.jsonl`, each
stage's `report.json`), so a restarted trial resumes from its own checkpoint. What the
engine needs of a trial (its evaluations so far, each finished stage's metrics) is read
from those files, the same ones `lmjob run`'s summary reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmjob_api.job import API_VERSION
from lmjob_sweep.engine import TrialObservation
from lmjob_trainer import storage

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"
MANIFEST = "job.yaml"
RUN_LOG = "run.log"
# Seconds a stopped trial has to checkpoint and exit before its process group is killed:
# `lmjob run` gives its workers 120 s after Ctrl-C.
STOP_GRACE = 150.0
# Spec fields that hold a path which `lmjob run` resolves against the manifest's folder.
PATH_FIELDS = (
    ("training", "data", "source"),
    ("training", "data", "tokenizer"),
    ("training", "data", "cacheDir"),
    ("training", "model", "path"),
)


def rebase_paths(spec: dict[str, Any], source: Path, target: Path) -> dict[str, Any]:
    """The wire-form job `spec` written for a manifest in `target` instead of `source`:
    relative paths keep naming the same files (absolute ones and `bytes` are kept)."""
    out = dict(spec)
    for fields in PATH_FIELDS:
        parent: Any = out
        for name in fields[:-1]:
            if not isinstance(parent.get(name), dict):
                parent = None
                break
            parent[name] = dict(parent[name])  # copy on the way down: `spec` stays unchanged
            parent = parent[name]
        if parent is None:
            continue
        value = parent.get(fields[-1])
        if isinstance(value, str) and value != "bytes" and not os.path.isabs(value):
            parent[fields[-1]] = os.path.relpath(source.resolve() / value, target.resolve())
    return out


def job_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LargeModelJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when `lmjob sweep` dies, even by SIGKILL, so no
    trial runs on unwatched beside its resumed self (Linux; elsewhere a no-op)."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(busy: set[int]) -> int:
    """A TCP port nothing listens on now, outside `busy`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in busy:
            return port


@dataclass
class _Process:
    proc: subprocess.Popen
    port: int
    stop_sent: float | None = None


class LocalTrials:
    """Starts, observes and stops trial runs under `<sweep dir>/trials/`.

    `base` is the sweep manifest's folder (the template's relative paths are relative to
    it); `stages` is `train` then the compression stages, in order.
    """

    def __init__(
        self, sweep_dir: Path, base: Path, stages: list[str], env: dict[str, str] | None = None
    ) -> None:
        self.root = sweep_dir / TRIALS_DIR
        self.base = base
        self.stages = stages
        self.env = env or {}
        self._procs: dict[str, _Process] = {}
        self._exits: dict[str, int] = {}
        self._histories: dict[str, dict[int, dict[str, Any]]] = {}

    def run_dir(self, name: str) -> Path:
        return self.root / name

    def start(self, name: str, spec: dict[str, Any]) -> None:
        """Run trial `name` (its wire job spec) as `lmjob run`; a trial that ran before
        resumes from its checkpoint, and a stage that finished is not redone."""
        run_dir = self.run_dir(name)
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest = run_dir / MANIFEST
        spec = rebase_paths(spec, self.base, run_dir)
        # Trials running side by side each need their own metrics port: `lmjob run` would
        # pick the manifest's port for each if it is free when it plans, before any binds it.
        busy = {p.port for p in self._procs.values()}
        spec["metrics"] = {**spec.get("metrics", {}), "port": free_port(busy)}
        manifest.write_text(yaml.safe_dump(job_manifest(name, spec), sort_keys=False))
        self._exits.pop(name, None)
        with (run_dir / RUN_LOG).open("a") as out:
            out.write(f"--- lmjob sweep: started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            out.flush()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lmjob_cli.main",
                    "run",
                    "--dir",
                    str(run_dir),
                    str(manifest),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                # Its own process group: stopping a trial reaches its workers, and the
                # terminal's Ctrl-C reaches only `lmjob sweep`, which stops trials itself.
                start_new_session=True,
                preexec_fn=_stop_with_parent,
            )
        self._procs[name] = _Process(proc, spec["metrics"]["port"])
        log.debug("trial %s started (pid %d)", name, proc.pid)

    def running(self) -> list[str]:
        """Trials whose process has not been seen to exit."""
        self.poll()
        return sorted(self._procs)

    def poll(self) -> None:
        """Collect exits; kill the group of a stopped trial that outstayed STOP_GRACE."""
        for name, p in list(self._procs.items()):
            code = p.proc.poll()
            if code is not None:
                self._exits[name] = code
                del self._procs[name]
            elif p.stop_sent is not None and time.monotonic() - p.stop_sent > STOP_GRACE:
                self._signal(p, signal.SIGKILL)

    def stop(self, name: str) -> None:
        """Ask trial `name` to stop as Ctrl-C asks `lmjob run`: its workers checkpoint and exit."""
        p = self._procs.get(name)
        if p is not None and p.stop_sent is None:
            self._signal(p, signal.SIGINT)
            p.stop_sent = time.monotonic()

    def stop_all(self, *, force: bool = False) -> None:
        """Stop every running trial and wait for them (`force`: kill at once)."""
        for name in list(self._procs):
            if force:
                self._signal(self._procs[name], signal.SIGKILL)
            else:
                self.stop(name)
        while self.running():
            time.sleep(0.2)

    @staticmethod
    def _signal(p: _Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, sig)

    def step(self, name: str) -> int:
        """The newest training step of the trial's history (0 before the first)."""
        return max(self._history(name), default=0)

    def _history(self, name: str) -> dict[int, dict[str, Any]]:
        """The trial's training history; the last whole read while a line is half written."""
        # A ValueError: the trainer is appending a line right now.
        with contextlib.suppress(ValueError):
            self._histories[name] = storage.read_history(self.run_dir(name), storage.TRAIN_STAGE)
        return self._histories.get(name, {})

    def observe(self, name: str) -> TrialObservation:
        """What the engine sees of trial `name`: its process, evaluations and finished stages.
        A trial with no process in this session and none finished does not exist."""
        # Whether it exited first, its files second: a trial seen to have exited has
        # written all it will (read the other way round, a report could be missed).
        self.poll()
        run_dir = self.run_dir(name)
        history = self._history(name)
        reports = tuple(
            (step, float(r["eval_loss"])) for step, r in sorted(history.items()) if "eval_loss" in r
        )
        metrics = {}
        for stage in self.stages:
            report = storage.read_report(run_dir, stage)
            if report is not None and report.phase == "Succeeded":
                metrics[stage] = dict(report.metrics)
        if name in self._procs:
            compressing = storage.TRAIN_STAGE in metrics and len(self.stages) > 1
            phase = "Compressing" if compressing else "Running"
            return TrialObservation(True, phase, reports, metrics)
        if name not in self._exits:
            return TrialObservation(False, "", reports, metrics)
        code = self._exits[name]
        if code == 0:
            return TrialObservation(True, "Succeeded", reports, metrics)
        return TrialObservation(True, "Failed", reports, metrics, self._failure(name, code))

    def _failure(self, name: str, code: int) -> str:
        """The end of the trial's `lmjob run` output: its failure lines."""
        path = self.run_dir(name) / RUN_LOG
        try:
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        except OSError:
            lines = []
        tail = " | ".join([line for line in lines if line][-3:])
        return f"lmjob run exited {code}: {tail[-400:]} (log: {path})"
