"""`lmjob sweep SWEEP.yaml`: run a LargeModelSweep on this machine, trials as local runs.

The manifest is validated as `lmjob validate` does (exit 2, one line per problem). Then
the sweep engine the operator uses decides, step after step, which trials to create and
which to stop; each trial is `lmjob run` of its job under `<dir>/trials/<job>/`, one at a
time unless `--parallel` says more (the manifest's parallelTrials is for a cluster). The
sweep's status, its only state, is saved to `<dir>/sweep.json` after every step, so the
same command after Ctrl-C resumes: finished trials are kept and interrupted ones resume
from their checkpoints. At the end: the best parameters and `<dir>/best.yaml`, the best
trial as a LargeModelJob for `lmjob run`.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

STATE_FILE = "sweep.json"
BEST_MANIFEST = "best.yaml"
POLL_SECONDS = 0.5


class SweepStateError(ValueError):
    """A sweep.json that belongs to another sweep (or cannot be read)."""


def register(subparsers: Any) -> None:
    """Add the `sweep` subcommand; its handler is `args.handler(args) -> exit code`."""
    parser = subparsers.add_parser(
        "sweep",
        help="run a LargeModelSweep on this machine (trials as local runs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", type=Path, help="the LargeModelSweep YAML file")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="the sweep's folder: sweep.json, best.yaml and trials/ (default ./runs/<sweep>)",
    )
    parser.add_argument(
        "--parallel", type=int, default=1, metavar="N", help="trials running at once (default 1)"
    )
    parser.set_defaults(handler=sweep_command)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_sweep(path: Path) -> tuple[Any, list[str]]:
    """The validated LargeModelSweep in `path`, or (None, problem lines)."""
    from lmjob_api.sweep_checks import validate_manifest
    from lmjob_api.validation import ManifestError, load_documents

    try:
        docs = load_documents(path)
    except ManifestError as err:
        return None, [f"{path}: {p}" for p in err.problems]
    sweeps = [d for d in docs if isinstance(d, dict) and d.get("kind") == "LargeModelSweep"]
    if len(sweeps) != 1:
        kinds = ", ".join(str(d.get("kind")) if isinstance(d, dict) else "?" for d in docs)
        hint = " (lmjob run takes a LargeModelJob)" if "LargeModelJob" in kinds else ""
        return None, [f"{path}: expected one LargeModelSweep, found: {kinds or 'nothing'}{hint}"]
    sweep, problems = validate_manifest(sweeps[0])
    return sweep, [f"{path}: {p}" for p in problems]


def comparable_spec(spec: Any) -> dict[str, Any]:
    """What makes two sweeps the same search: all of the spec but parallelTrials, which only
    says how many trials run at once."""
    wire = spec.to_wire()
    wire.pop("parallelTrials", None)
    return wire


def read_state(path: Path, sweep: Any) -> Any:
    """The status saved in `path` (None when there is none); SweepStateError when it is
    another sweep's."""
    import json

    from pydantic import ValidationError

    from lmjob_api.sweep import LargeModelSweep

    if not path.is_file():
        return None
    try:
        saved = LargeModelSweep.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as err:
        raise SweepStateError(
            f"{path} cannot be read ({str(err).splitlines()[0]}): delete it, or pass another "
            "--dir, to start the sweep afresh"
        ) from None
    if saved.metadata.name != sweep.metadata.name or comparable_spec(saved.spec) != comparable_spec(
        sweep.spec
    ):
        raise SweepStateError(
            f"{path} holds sweep {saved.metadata.name!r} with a different spec: its trials "
            "would not belong to this search. Pass another --dir, or delete that folder to "
            "start afresh"
        )
    return saved.status


def write_state(path: Path, sweep: Any, status: Any) -> None:
    """The sweep as a cluster would show it (spec and status), written atomically."""
    from lmjob_trainer.storage import write_json_atomic

    data = sweep.model_copy(update={"status": status}).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def run_sweep(
    sweep: Any,
    base: Path,
    sweep_dir: Path,
    *,
    parallel: int = 1,
    on_step: Callable[[Any, Any], None] | None = None,
    env: dict[str, str] | None = None,
) -> Any:
    """Run `sweep` to its end with trials as local runs; returns the final status.

    `base` is the manifest's folder; `on_step(status, trials)` is called after every
    step (the live table). Raises KeyboardInterrupt after stopping the running trials
    (they checkpoint); sweep.json then holds the state to resume from.
    """
    from lmjob_api.export import stage_order
    from lmjob_api.sweep import FINISHED_TRIAL_STATES, SweepPhase
    from lmjob_api.sweep_checks import trial_spec
    from lmjob_cli.sweep_trials import LocalTrials
    from lmjob_sweep.engine import decide

    name = sweep.metadata.name
    state_path = sweep_dir / STATE_FILE
    status = read_state(state_path, sweep)
    spec = sweep.spec.model_copy(update={"parallel_trials": parallel})
    template = spec.template
    stages = stage_order(template) or ["train"]
    trials = LocalTrials(sweep_dir, base, stages, env)
    try:
        # Trials the previous command left unfinished: their jobs are started again (each
        # resumes from its own checkpoint) before the engine looks, so none looks lost.
        for trial in status.trials if status is not None else ():
            if trial.state not in FINISHED_TRIAL_STATES:
                trials.start(trial.name, trial_spec(template, trial.parameters))
        while True:
            # Finished trials are settled: the engine reads only the others.
            observed = {
                t.name: trials.observe(t.name)
                for t in (status.trials if status else ())
                if t.state not in FINISHED_TRIAL_STATES
            }
            decision = decide(name, spec, status, observed, now_rfc3339())
            status = decision.status
            # Saved before acting on it: a crash between the two redoes the actions, no more.
            write_state(state_path, sweep, status)
            for job in decision.stop:
                trials.stop(job)
            for trial in decision.create:
                trials.start(trial.name, trial_spec(template, trial.parameters))
            if on_step is not None:
                on_step(status, trials)
            done = status.phase in (SweepPhase.SUCCEEDED, SweepPhase.FAILED)
            if done and not trials.running():
                return status
            time.sleep(POLL_SECONDS)
    except BaseException:
        try:
            trials.stop_all()
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting for checkpoints
            trials.stop_all(force=True)
        raise


def sweep_command(args: argparse.Namespace) -> int:
    out = sys.stderr
    sweep, problems = load_sweep(args.manifest)
    if args.parallel < 1:
        problems.append(f"--parallel must be at least 1 (got {args.parallel})")
    if problems:
        for line in problems:
            print(line, file=out)
        return EXIT_INVALID
    try:
        import optuna  # noqa: F401 (the engine's, checked before any trial starts)
        import torch
    except ImportError as err:
        print(
            f"lmjob sweep needs the trainer and Optuna ({err.name} is missing): "
            "pip install 'lmjob[trainer,operator]' optuna",
            file=out,
        )
        return EXIT_INVALID
    name = sweep.metadata.name
    sweep_dir = (args.dir or Path.cwd() / "runs" / name).resolve()
    problems = _preflight(sweep, args.manifest, sweep_dir, torch.cuda.device_count())
    try:
        read_state(sweep_dir / STATE_FILE, sweep)
    except SweepStateError as err:
        problems.append(f"{args.manifest}: {err}")
    if problems:
        for line in problems:
            print(line, file=out)
        return EXIT_INVALID
    print(
        f"lmjob sweep: {name}: up to {sweep.spec.max_trials} trials, {args.parallel} at a time\n"
        f"  state    {_short(sweep_dir / STATE_FILE)}\n"
        f"  trials   {_short(sweep_dir / 'trials')}/",
        file=out,
    )
    from lmjob_cli.sweep_table import SweepDisplay

    display = SweepDisplay(out)
    started = time.monotonic()
    # `kill` (SIGTERM) stops the sweep as Ctrl-C does: its trials, in their own process
    # groups, would otherwise run on without it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        status = run_sweep(
            sweep, args.manifest.parent, sweep_dir, parallel=args.parallel, on_step=display.update
        )
    except KeyboardInterrupt:
        display.stop()
        print(
            f"\nlmjob sweep: {name} interrupted; running trials stopped at a checkpoint.\n"
            f"  run the same command again to resume: {_resume_command(args)}",
            file=out,
        )
        return EXIT_INTERRUPTED
    display.stop()
    print(f"finished in {_duration(time.monotonic() - started)}", file=out)
    return _print_result(sweep, status, args.manifest.parent, sweep_dir, sys.stdout)


def _preflight(sweep: Any, manifest: Path, sweep_dir: Path, cuda_devices: int) -> list[str]:
    """What `lmjob run` would refuse in the template on this machine (the data path,
    processes vs GPUs), before any trial starts."""
    from lmjob_api.job import LargeModelJob
    from lmjob_cli.sweep_trials import job_manifest
    from lmjob_trainer.local_run import plan_local_run

    job = LargeModelJob.model_validate(
        job_manifest(sweep.metadata.name, sweep.spec.template.to_wire())
    )
    _, problems = plan_local_run(
        job, manifest, cwd=Path.cwd(), cuda_devices=cuda_devices, run_dir=sweep_dir / "preflight"
    )
    return [f"{manifest}: {str(p).replace('spec.', 'spec.template.', 1)}" for p in problems]


def _print_result(sweep: Any, status: Any, base: Path, sweep_dir: Path, out: TextIO) -> int:
    """The final table, the best parameters and the command that runs the best trial."""
    import yaml

    from lmjob_api.sweep_checks import set_path
    from lmjob_cli.sweep_table import HEADERS, format_value, trial_rows
    from lmjob_cli.sweep_trials import job_manifest, rebase_paths
    from lmjob_cli.terminal import print_table

    if not (out.isatty() and sys.stderr.isatty()):  # else the live table's last frame shows it
        print(file=out)
        print_table(out, HEADERS, trial_rows(status))
    print(
        f"\n{sweep.metadata.name}: {status.phase.value}: {status.completed} complete, "
        f"{status.pruned} pruned, {status.failed} failed",
        file=out,
    )
    best = status.best
    if best is None:
        print("no trial completed: no best parameters.", file=out)
        return EXIT_FAILED
    print(f"best: trial {best.number}, {sweep.spec.objective.metric} {best.value:.4f}", file=out)
    for path, value in best.parameters.items():
        print(f"  {path}: {format_value(value)}", file=out)
    # The template as the manifest wrote it (not every default spelled out), with the
    # best values: a manifest a person reads and edits.
    spec = sweep.spec.template.model_dump(by_alias=True, exclude_unset=True, mode="json")
    for path, value in best.parameters.items():
        spec = set_path(spec, path, value)
    spec = rebase_paths(spec, base, sweep_dir)
    manifest = sweep_dir / BEST_MANIFEST
    header = f"# The best trial of sweep {sweep.metadata.name} (trial {best.number}, value {best.value:.6g}).\n"
    manifest.write_text(header + yaml.safe_dump(job_manifest(best.name, spec), sort_keys=False))
    print(f"\nrun the best trial alone:\n  lmjob run {_short(manifest)}", file=out)
    return 0 if status.phase.value == "Succeeded" else EXIT_FAILED


def _resume_command(args: argparse.Namespace) -> str:
    import shlex

    words = ["lmjob", "sweep", str(args.manifest)]
    if args.dir is not None:
        words += ["--dir", str(args.dir)]
    if args.parallel != 1:
        words += ["--parallel", str(args.parallel)]
    return shlex.join(words)


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
