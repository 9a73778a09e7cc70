"""Sweep benchmark: TPE vs random search, and early stopping vs none, on the Shakespeare job.

    python benchmarks/sweep_search.py [--out runs/bench-sweep] [--trials 10] [--steps 150]
                                      [--seeds 0] [--rule asha] [--startup N]

Every variant is the sweep of examples/shakespeare-sweep.yaml (its template, parameters and
objective) with `--trials` trials of `--steps` training steps, run by the engine the
operator uses with trials as local runs (`lmjob sweep`'s runner, one trial at a time):

- `random` and `tpe`, no early stopping: the same budget of trial-steps and the same seed;
  the best evaluation loss of each (issue 14: TPE no worse than random);
- `tpe` with `--rule` (asha or median): the trial-steps it used (each trial's last step in
  its history, the steps it really ran) against `tpe` without, and the best loss of each
  (goal: at least 40 % of the steps saved at an equal best loss).

Prints a markdown table (also `<out>/results.md`, `<out>/results.json`). Re-running reuses
the finished sweeps (their sweep.json): delete `<out>` to start over.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

import yaml
from harness import REPO, machine, use_checkout, worker_env

use_checkout()

from lmjob_api.sweep_checks import validate_manifest  # noqa: E402
from lmjob_cli.sweep import run_sweep  # noqa: E402
from lmjob_cli.sweep_trials import LocalTrials  # noqa: E402

EXAMPLE = REPO / "examples" / "shakespeare-sweep.yaml"


def variant_manifest(
    out: Path,
    *,
    algorithm: str,
    rule: str,
    seed: int,
    trials: int,
    steps: int,
    startup: int | None = None,
) -> dict[str, Any]:
    """The example sweep with this variant's algorithm, early stopping, trials and steps."""
    data = yaml.safe_load(EXAMPLE.read_text())
    spec = data["spec"]
    training = spec["template"]["training"]
    source = training["data"]["source"]
    training["data"]["source"] = str((EXAMPLE.parent / source).resolve())
    training["data"]["cacheDir"] = str(out / "data-cache")  # tokenised once for all
    training["steps"] = steps
    training["checkpoint"]["everySteps"] = steps  # a checkpoint costs; nothing resumes here
    spec["algorithm"] = {**spec["algorithm"], "type": algorithm, "seed": seed}
    if startup is not None:
        spec["algorithm"]["startupTrials"] = startup
    spec["earlyStopping"] = {**spec.get("earlyStopping", {}), "type": rule}
    spec["maxTrials"] = trials
    spec["parallelTrials"] = 1
    data["metadata"]["name"] = f"{algorithm}-{rule}-{seed}"
    return data


def run_variant(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Run one sweep (or read its finished state); its figures."""
    name = manifest["metadata"]["name"]
    sweep, problems = validate_manifest(manifest)
    assert not problems, problems
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    started = time.monotonic()
    # One BLAS thread per trial: on a shared CPU, more threads spin more than they compute.
    status = run_sweep(sweep, folder, folder, parallel=1, env=worker_env(OMP_NUM_THREADS="1"))
    seconds = time.monotonic() - started
    trials = LocalTrials(folder, folder, ["train"])
    # Steps really run: a stopped trial runs on until its workers see the signal.
    steps = {t.name: trials.step(t.name) for t in status.trials}
    result = {
        "name": name,
        "algorithm": sweep.spec.algorithm.type.value,
        "earlyStopping": sweep.spec.early_stopping.type.value,
        "seed": sweep.spec.algorithm.seed,
        "phase": status.phase.value,
        "trials": len(status.trials),
        "complete": status.completed,
        "pruned": status.pruned,
        "failed": status.failed,
        "best": status.best.value if status.best else None,
        "bestParameters": status.best.parameters if status.best else None,
        "trialSteps": sum(steps.values()),
        "values": [t.value for t in status.trials],
        "steps": [steps[t.name] for t in status.trials],
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def table(results: list[dict[str, Any]], budget: int) -> str:
    lines = [
        "| sweep | seed | trials (complete/pruned/failed) | trial-steps | of budget | best eval loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        best = "-" if r["best"] is None else f"{r['best']:.4f}"
        lines.append(
            f"| {r['algorithm']} + {r['earlyStopping']} | {r['seed']} | {r['trials']} "
            f"({r['complete']}/{r['pruned']}/{r['failed']}) | {r['trialSteps']} | "
            f"{r['trialSteps'] / budget:.0%} | {best} |"
        )
    return "\n".join(lines)


def verdicts(results: list[dict[str, Any]], rule: str) -> list[str]:
    """The issue's two targets, per seed."""
    out = []
    by = {(r["algorithm"], r["earlyStopping"], r["seed"]): r for r in results}
    for seed in sorted({r["seed"] for r in results}):
        tpe, rnd, es = (
            by.get((*k, seed)) for k in (("tpe", "none"), ("random", "none"), ("tpe", rule))
        )
        if tpe and rnd and tpe["best"] is not None and rnd["best"] is not None:
            ok = "yes" if tpe["best"] <= rnd["best"] else "NO"
            out.append(
                f"seed {seed}: TPE best {tpe['best']:.4f} vs random {rnd['best']:.4f}: "
                f"TPE no worse: {ok}"
            )
        if tpe and es and tpe["best"] is not None and es["best"] is not None:
            saved = 1 - es["trialSteps"] / tpe["trialSteps"]
            out.append(
                f"seed {seed}: {rule} used {es['trialSteps']} of {tpe['trialSteps']} trial-steps "
                f"({saved:.0%} saved; goal >= 40 %), best {es['best']:.4f} vs {tpe['best']:.4f} "
                f"without ({es['best'] - tpe['best']:+.4f})"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-sweep")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rule", choices=["asha", "median", "hyperband"], default="asha")
    parser.add_argument(
        "--startup",
        type=int,
        default=None,
        help="random trials before TPE models the results (default: the example's)",
    )
    args = parser.parse_args()
    # `kill` stops the running trial (its own process group) as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        # TPE without and with early stopping first: the longest comparison to wait for.
        for algorithm, rule in (("tpe", "none"), ("tpe", args.rule), ("random", "none")):
            manifest = variant_manifest(
                out,
                algorithm=algorithm,
                rule=rule,
                seed=seed,
                trials=args.trials,
                steps=args.steps,
                # random has no startup phase; its sweep stays the one already run.
                startup=args.startup if algorithm == "tpe" else None,
            )
            results.append(run_variant(out, manifest))
    budget = args.trials * args.steps
    text = "\n".join(
        [
            f"machine: {machine()}",
            f"{args.trials} trials x {args.steps} steps per sweep (budget {budget} trial-steps), "
            f"one trial at a time, startup trials {args.startup or 'as the example'}",
            "",
            table(results, budget),
            "",
            *verdicts(results, args.rule),
        ]
    )
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
