"""MFU of a ~1.3B-parameter GPT in bf16 on one GPU, through the trainer itself.

    python benchmarks/mfu_gpu.py            # on a machine with one CUDA GPU
    python benchmarks/mfu_gpu.py --smoke    # tiny CPU run: checks the plumbing only

GPT-2 XL-like shape (24 layers, hidden 2048, 16 heads, seq 2048; byte tokens), bf16
autocast, FSDP2 with bf16 parameters, per-block torch.compile, AdamW (fused). MFU is the
trainer's own figure (lmjob_trainer.mfu: 6·N + attention FLOPs per token over the GPU's
dense bf16 peak), the median over steps after warm-up. Goal ≥ 45%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import yaml
from harness import SHAKESPEARE, machine, scratch_dir, worker_env

SHAPES = {
    "1.3b": {"layers": 24, "heads": 16, "hidden": 2048, "seqLen": 2048},
    "smoke": {"layers": 2, "heads": 2, "hidden": 64, "seqLen": 64},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    print(machine())
    work = scratch_dir("mfu")
    corpus = work / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes() * 4)  # 4.4M byte tokens: > 2 epochs not needed
    training = {
        "model": SHAPES["smoke" if args.smoke else "1.3b"],
        "data": {"source": str(corpus), "validationSplit": 0.01},
        "parallelism": {"strategy": "fsdp", "compile": not args.no_compile},
        "precision": "bf16",
        "schedule": {"warmupSteps": 5},
        "steps": args.steps,
        "batch": {"microBatchSize": 2 if args.smoke else args.micro_batch},
        "evaluation": {"everySteps": 1_000_000, "steps": 1},
        "checkpoint": {"everySteps": 1_000_000, "keep": 1},
    }
    config = work / "trainer.yaml"
    config.write_text(yaml.safe_dump({"jobName": "mfu", "training": training}))
    cmd = [
        sys.executable,
        "-m",
        "lmjob_trainer",
        "--config",
        str(config),
        "--checkpoint-dir",
        str(work / "run"),
    ]
    subprocess.run(cmd, env=worker_env(), check=True)
    history = [
        json.loads(line)
        for line in (work / "run" / "train" / "history.jsonl").read_text().splitlines()
    ]
    steps = [r for r in history if "loss" in r][5:]  # after compile and warm-up
    tps = statistics.median(r["tokens_per_second"] for r in steps)
    mfus = [r["mfu"] for r in steps if r.get("mfu") is not None]
    print(f"median tokens/s: {tps:,.0f}")
    if mfus:
        print(f"median MFU: {statistics.median(mfus) * 100:.1f}% of dense bf16 peak (goal >= 45%)")
    else:
        print("MFU: not reported (no CUDA GPU, or a GPU missing from lmjob_trainer.mfu.PEAK_FLOPS)")


if __name__ == "__main__":
    main()
