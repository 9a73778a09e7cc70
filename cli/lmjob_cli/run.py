"""`lmjob run JOB.yaml`: run a LargeModelJob on this machine, no cluster needed.

The manifest is validated (API rules, then what only this machine can tell: processes vs
tensor-parallel size, GPUs, data path) before any process starts; problems are printed
one per line, exit status 1. Then `workers.replicas × procsPerWorker` local processes run
under torchrun's elastic agent, with storage under `./runs/<job>/`, a progress bar read
from the rank-0 metrics endpoint, and a summary table at the end.

Relative paths inside the manifest resolve against the manifest's folder. A manifest with
`spec.command` runs that command under the same launcher (with the LMJOB_* environment).
Ctrl-C makes the workers save a checkpoint; running the same command again resumes.
`runPolicy.activeDeadlineSeconds` stops the run the same way once that long has passed
since this command started, and it then exits 1, as the job fails on a cluster.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from lmjob_api.exit_codes import NON_FINITE
from lmjob_api.goodput import LEDGER, Tally, breakdown, describe

EXIT_INVALID = 1
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def register(subparsers: Any) -> None:
    """Add the `run` subcommand; its handler is `args.handler(args) -> exit code`."""
    parser = subparsers.add_parser(
        "run",
        help="run a LargeModelJob on this machine (CPU or local GPUs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", type=Path, help="the LargeModelJob YAML file")
    parser.add_argument(
        "--logs",
        action="store_true",
        help="stream the workers' logs to the terminal instead of a progress bar",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="storage folder: checkpoints, reports, logs (default ./runs/<job>)",
    )
    parser.set_defaults(handler=run_command)


def _print_problems(source: str, problems: list[Any]) -> None:
    for problem in problems:
        print(f"{source}: {problem}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    from lmjob_api.validation import ManifestError, load_job

    try:
        job = load_job(args.manifest)
    except ManifestError as err:
        _print_problems(str(args.manifest), err.problems)
        return EXIT_INVALID
    try:
        import torch
    except ImportError:
        print("lmjob run needs the trainer: pip install 'lmjob[trainer]'", file=sys.stderr)
        return EXIT_INVALID
    from lmjob_trainer.local_run import plan_local_run

    plan, problems = plan_local_run(
        job,
        args.manifest,
        cwd=Path.cwd(),
        cuda_devices=torch.cuda.device_count(),
        run_dir=args.dir,
    )
    if plan is None:
        _print_problems(str(args.manifest), problems)
        return EXIT_INVALID
    return _run(plan, tee=args.logs)


def _run(plan: Any, *, tee: bool) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from lmjob_trainer.local_run import CONFIG_ERROR_MARKER, launch, nothing_left

    out = sys.stderr
    if nothing_left(plan):
        # As the trainer would: it skips every finished stage; no processes to start for that.
        print(
            f"lmjob run: {plan.job_name}: every stage finished in an earlier run "
            f"(storage {_short(plan.run_dir)}/); delete that folder to train again, or raise "
            "training.steps to train on",
            file=out,
        )
        _print_summary(plan, sys.stdout)
        return 0
    what = (
        "the built-in trainer"
        if plan.config is not None
        else " ".join([plan.entrypoint, *plan.args])
    )
    print(
        f"lmjob run: {plan.job_name}: {plan.num_procs} process(es) running {what}\n"
        f"  storage  {_short(plan.run_dir)}/\n"
        f"  metrics  http://127.0.0.1:{plan.metrics_port}/metrics\n"
        f"  logs     {_short(plan.run_dir / 'logs')}/"
        + (
            f"\n  curves   tensorboard --logdir {_short(plan.run_dir / 'tensorboard')}"
            if plan.config is not None
            else ""
        ),
        file=out,
    )
    bar = None if tee else ProgressBar(plan.metrics_port, out, stages=plan.stages)
    if bar:
        bar.start()
    deadline = _Deadline(plan.deadline_seconds)
    config_error = _ConfigErrorWatch(plan.run_dir / CONFIG_ERROR_MARKER)
    started = time.monotonic()
    try:
        launch(plan, tee=tee)
    except ChildFailedError as err:
        if bar:
            bar.stop()
        _print_failure(plan, err, out)
        return EXIT_FAILED
    except (SignalException, KeyboardInterrupt):
        if bar:
            bar.stop()
        if config_error.message is not None:
            print(f"\nlmjob run: {plan.job_name}: {config_error.message}", file=out)
            if config_error.code == NON_FINITE:  # training ran: say what is kept
                _print_checkpoints(plan, out, resume=False)
                return EXIT_FAILED
            return EXIT_INVALID
        if deadline.passed.is_set():
            print(
                f"\nlmjob run: {plan.job_name} failed: runPolicy.activeDeadlineSeconds "
                f"({plan.deadline_seconds} s) passed; the workers checkpointed and stopped.",
                file=out,
            )
            _print_checkpoints(plan, out)
            return EXIT_FAILED
        print(f"\nlmjob run: {plan.job_name} interrupted.", file=out)
        _print_checkpoints(plan, out)
        return EXIT_INTERRUPTED
    finally:
        deadline.cancel()
        config_error.cancel()
        if bar:
            bar.stop()
    print(f"finished in {_duration(time.monotonic() - started)}", file=out)
    if plan.config is not None:
        _print_goodput(plan, out)
        _print_summary(plan, sys.stdout)
    return 0


def _print_goodput(plan: Any, out: TextIO) -> None:
    """The ledger's account of every run of this job so far (earlier interrupted ones too)."""
    tally = Tally.of_file(plan.run_dir / LEDGER)
    if tally.first_launch is not None:
        result = breakdown(
            tally.seconds, first_launch=tally.first_launch, created=None, end=time.time()
        )
        print(describe(result), file=out)


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _print_failure(plan: Any, err: Any, out: TextIO) -> None:
    print(f"lmjob run: {plan.job_name} failed (restarts used: {plan.max_restarts})", file=out)
    logs = sorted(
        (plan.run_dir / "logs").glob("*/attempt_*/*/stderr.log"), key=lambda p: p.stat().st_mtime
    )
    for rank, failure in sorted(err.failures.items()):
        print(f"  rank {rank}: exit code {failure.exitcode}", file=out)
        mine = [p for p in logs if p.parent.name == str(failure.local_rank)]
        if mine:
            lines = mine[-1].read_text(errors="replace").splitlines()
            errors = [line for line in lines if "level=error" in line] or lines[-12:]
            for line in errors[-12:]:
                print(f"    {line}", file=out)
            print(f"  log: {_short(mine[-1])}", file=out)


class _Deadline:
    """Stops the launch once `seconds` have passed, the way Ctrl-C does: SIGINT to this
    process, whose elastic agent then asks the workers (SIGTERM) to checkpoint and stop."""

    def __init__(self, seconds: int | None) -> None:
        self.passed = threading.Event()
        self._timer = threading.Timer(seconds, self._expire) if seconds else None
        if self._timer:
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.passed.set()
        os.kill(os.getpid(), signal.SIGINT)

    def cancel(self) -> None:
        if self._timer:
            self._timer.cancel()


class _ConfigErrorWatch:
    """Stops the launch when a worker reports a configuration error (the marker file of
    lmjob_api.env's LMJOB_CONFIG_ERROR_FILE): the in-process elastic agent would otherwise
    restart workers that can only fail again. Polls, as the pod's launcher does."""

    POLL_SECONDS = 0.2

    def __init__(self, marker: Path) -> None:
        marker.unlink(missing_ok=True)  # a previous run's
        self.marker = marker
        self.message: str | None = None
        self.code: int | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            if self.marker.exists():
                from lmjob_trainer.launch import read_marker

                self.code, self.message = read_marker(self.marker.read_text(errors="replace"))
                os.kill(os.getpid(), signal.SIGINT)
                return

    def cancel(self) -> None:
        self._stop.set()


def _print_checkpoints(plan: Any, out: TextIO, *, resume: bool = True) -> None:
    from lmjob_trainer import storage

    for stage in plan.stages:
        latest = storage.latest_complete(plan.run_dir, stage)
        if latest:
            print(f"  {stage}: checkpoint at step {latest[0]}: {_short(latest[1])}", file=out)
    if resume:
        print("  run the same command again to resume.", file=out)


def _count(n: float) -> str:
    """Parameter counts as people say them: 834.3k, 1.2M, 7.0B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _size(n: float) -> str:
    """Bytes on disk in binary units: 1.8 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _print_table(table: list[tuple[str, ...]], out: TextIO) -> None:
    from lmjob_cli.terminal import print_table

    print_table(out, table[0], table[1:])


def _print_curve(plan: Any, out: TextIO) -> None:
    """The training loss by step (and the evaluations) from the train stage's history."""
    from lmjob_cli.terminal import loss_curve
    from lmjob_trainer import storage

    history = storage.read_history(plan.run_dir, storage.TRAIN_STAGE)
    losses = [(s, r["loss"]) for s, r in sorted(history.items()) if "loss" in r]
    evals = [(s, r["eval_loss"]) for s, r in sorted(history.items()) if "eval_loss" in r]
    print(file=out)
    loss_curve(out, f"{plan.job_name}: training loss", losses, evals)


def _difference(value: float | None, tolerance: float | None) -> str:
    """`2.1e-06 (≤ 1e-04)`, or `0.163 (reported)` for a lossy encoding such as Q8_0."""
    if value is None:
        return "-"
    return f"{value:.2g} " + (f"(≤ {tolerance:.0e})" if tolerance is not None else "(reported)")


def _print_summary(plan: Any, out: TextIO) -> None:
    from lmjob_trainer.local_run import summarize

    rows, sample = summarize(plan)
    exports = [r for r in rows if r.is_export]
    table = [
        ("stage", "phase", "steps", "eval loss", "params", "size", "sparsity", "latency", "output")
    ]
    for r in rows:
        if r.is_export:
            continue
        table.append(
            (
                r.stage,
                r.phase,
                "-" if r.steps is None else str(r.steps),
                "-" if r.eval_loss is None else f"{r.eval_loss:.4f}",
                "-" if r.params is None else _count(r.params),
                "-" if r.size_bytes is None else _size(r.size_bytes),
                "-" if not r.sparsity else f"{r.sparsity:.0%}",
                "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms",
                "-" if r.output is None else _short(Path(r.output)),
            )
        )
    print(file=out)
    _print_table(table, out)
    if exports:
        print(
            "\nexports, each loaded back by its runtime and compared with lmjob's logits:\n",
            file=out,
        )
        _print_table(
            [("export", "phase", "size", "verified by", "max |Δlogit|", "output")]
            + [
                (
                    r.stage,
                    r.phase,
                    "-" if r.size_bytes is None else _size(r.size_bytes),
                    r.runtime or "-",
                    _difference(r.max_abs_diff, r.tolerance),
                    "-" if r.output is None else _short(Path(r.output)),
                )
                for r in exports
            ],
            out,
        )
    _print_curve(plan, out)
    if sample:
        print("\nsample from the trained model:\n", file=out)
        print(sample.strip(), file=out)


def _numbers(p: Any) -> list[str]:
    """Loss, evaluation and throughput of a progress reading, as the bar shows them."""
    parts = []
    if p.loss is not None:
        parts.append(f"loss {p.loss:.3f}")
    if p.eval_loss is not None:
        parts.append(f"eval {p.eval_loss:.3f}")
    if p.tokens_per_second:
        parts.append(f"{p.tokens_per_second / 1000:.1f}k tok/s")
    if p.restarts:
        parts.append(f"restarts {p.restarts}")
    return parts


class ProgressBar:
    """Progress fed by the rank-0 metrics endpoint (a thread): rich's live bars in a
    terminal, one plain line every 10 s at most in a log."""

    WIDTH = 24

    def __init__(
        self, port: int, out: TextIO, interval: float = 0.5, stages: list[str] | None = None
    ) -> None:
        self.port = port
        # `train` then the compression stages: the order that picks the current stage.
        self.stages = stages or ["train"]
        self.out = out
        self.interval = interval
        self.tty = out.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._first: dict[str, tuple[float, int]] = {}
        self._last_print = 0.0
        self._last_line = ""
        self._live: Any = None
        if self.tty:
            from lmjob_cli.terminal import LiveProgress

            self._live = LiveProgress(out)

    def start(self) -> None:
        if self._live is not None:
            self._live.start()
        self._thread.start()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=2)
            if self._live is not None:
                self._live.stop()

    def _loop(self) -> None:
        from lmjob_trainer.local_run import read_progress

        started = time.monotonic()
        while not self._stop.wait(self.interval):
            progress = read_progress(self.port, self.stages)
            if self._live is not None:
                self._update_live(progress, time.monotonic() - started)
                continue
            line = self._render(progress, time.monotonic() - started)
            self._show(line)

    def _update_live(self, p: Any, elapsed: float) -> None:
        if p is None or not p.total_steps:
            waiting = "waiting for workers" if self._first else "starting workers"
            self._live.waiting_for(f"{waiting}... {_duration(elapsed)}")
            return
        self._first.setdefault(p.stage, (time.monotonic(), p.step))
        self._live.update(p.stage, p.step, p.total_steps, "  ".join(_numbers(p)))

    def _render(self, p: Any, elapsed: float) -> str:
        if p is None or not p.total_steps:
            # Down before the first step (start-up), between stages and during restarts.
            waiting = "waiting for workers" if self._first else "starting workers"
            return f"{waiting}... {_duration(elapsed)}"
        now = time.monotonic()
        first = self._first.setdefault(p.stage, (now, p.step))
        done = min(1.0, p.step / p.total_steps)
        filled = int(done * self.WIDTH)
        parts = [
            f"{p.stage:<8} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {p.step}/{p.total_steps}",
            *_numbers(p),
        ]
        rate = (p.step - first[1]) / max(now - first[0], 1e-6)
        if rate > 0 and p.step < p.total_steps:
            parts.append(f"ETA {_duration((p.total_steps - p.step) / rate)}")
        return "  ".join(parts)

    def _show(self, line: str) -> None:
        if line != self._last_line and time.monotonic() - self._last_print > 10:
            # Logs and CI: a line every 10 s at most, not one per poll.
            self.out.write(line + "\n")
            self.out.flush()
            self._last_print = time.monotonic()
        self._last_line = line
