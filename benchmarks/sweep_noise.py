"""How much a trial's evaluation loss moves with the training seed alone (the noise floor of
the sweep benchmark's best-loss comparisons).

    python benchmarks/sweep_noise.py TRIAL_DIR [TRIAL_DIR ...] [--seeds 1 2 3] [--out DIR]

Each TRIAL_DIR is a finished trial of a sweep (`<sweep>/trials/<trial>/`, as
benchmarks/sweep_search.py leaves them): its job.yaml is run again with `lmjob run`, the same
hyperparameters and data, under each `training.seed` given; the evaluation losses of the
runs (the trial's own included) say how far apart two sweeps' best losses must be before
one sampler can be called better. Prints a markdown table (also `<out>/results.md`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from harness import REPO, machine, use_checkout, worker_env

use_checkout()


def eval_loss(run_dir: Path) -> float:
    report = json.loads((run_dir / "train" / "report.json").read_text())
    return float(report["evalLoss"])


def rerun(trial: Path, seed: int, out: Path) -> float:
    """The trial's job under training seed `seed` (reused when it finished before)."""
    folder = out / f"{trial.name}-seed{seed}"
    if (folder / "train" / "report.json").exists():
        return eval_loss(folder)
    manifest = yaml.safe_load((trial / "job.yaml").read_text())
    manifest["spec"]["training"]["seed"] = seed
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(manifest, sort_keys=False))
    subprocess.run(
        [sys.executable, "-m", "lmjob_cli.main", "run", "--dir", str(folder), str(job)],
        cwd=folder,
        env=worker_env(OMP_NUM_THREADS="1"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return eval_loss(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trials", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-sweep-noise")
    args = parser.parse_args()
    out = args.out.resolve()
    lines = [
        f"machine: {machine()}",
        "",
        "| trial | its seed: eval loss | other seeds | mean | stdev | max - min |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    spreads = []
    for trial in args.trials:
        trial = trial.resolve()
        own = yaml.safe_load((trial / "job.yaml").read_text())["spec"]["training"].get("seed")
        losses = [eval_loss(trial), *(rerun(trial, s, out) for s in args.seeds)]
        spreads.append(statistics.stdev(losses))
        others = ", ".join(f"{s}: {v:.4f}" for s, v in zip(args.seeds, losses[1:], strict=True))
        lines.append(
            f"| {trial.name} | {own}: {losses[0]:.4f} | {others} | {statistics.mean(losses):.4f} "
            f"| {statistics.stdev(losses):.4f} | {max(losses) - min(losses):.4f} |"
        )
    lines += ["", f"mean stdev over the trials: {statistics.mean(spreads):.4f}"]
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
