"""Trainer step throughput vs a bare PyTorch DDP loop: same model, data, batch, same run.

    python benchmarks/step_throughput.py [--rounds 20] [--steps 15]

Two processes (CPU: gloo). In each round the bare loop and the trainer's `run_steps` each
run `steps` optimiser steps; the first `warmup` of each are not timed. Rounds alternate
the two so that load on a shared machine hits both alike. Reports the median ratio of
trainer to bare throughput (goal ≥ 0.97).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from harness import SHAKESPEARE, launch, machine, scratch_dir, worker_session, write_result
from harness import parser as harness_parser

# The example job's model and batch (examples/shakespeare-cpu.yaml).
TRAINING = {
    "model": {"layers": 4, "heads": 4, "hidden": 128, "seqLen": 64},
    "data": {"source": str(SHAKESPEARE)},
    "optimizer": {"lr": 1.0e-3, "gradClip": 1.0},
    "schedule": {"warmupSteps": 10},
    "batch": {"microBatchSize": 16, "globalBatchSize": 32},
    "evaluation": {"everySteps": 1_000_000, "steps": 1},
    "checkpoint": {"everySteps": 1_000_000, "keep": 1},
}


def bare_ddp(session: Any, steps: int, warmup: int) -> float:
    """A minimal DDP loop (nanoGPT-style batches): seconds per step after warmup."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    t = session.training
    model = DistributedDataParallel(session.build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.optimizer.lr, weight_decay=0.1)
    split = session.train_split
    per_rank = t.batch.global_batch_size // dist.get_world_size()
    gen = torch.Generator().manual_seed(dist.get_rank())
    started = 0.0
    for step in range(steps):
        if step == warmup:
            started = time.perf_counter()
        offsets = torch.randint(0, split.num_windows, (per_rank,), generator=gen)
        batch = torch.stack([split.window(int(i)) for i in offsets])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # a real loop looks at its loss
    return (time.perf_counter() - started) / (steps - warmup)


def trainer_steps(session: Any, stage: str, steps: int, warmup: int) -> float:
    """lmjob's loop; timed from its own per-step timestamps (setup and final save excluded)."""
    from lmjob_trainer import storage
    from lmjob_trainer.loop import run_steps

    run_steps(session, session.build_model(), stage=stage, steps=steps)
    history = storage.read_history(session.root, stage) if session.env.is_main else {}
    if not history:
        return 0.0
    return (history[steps]["time"] - history[warmup]["time"]) / (steps - warmup)


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from lmjob_trainer.distributed import close_distributed

    session = worker_session({**TRAINING, "steps": args.steps}, args.root)
    env = session.env
    rounds = []
    for r in range(args.rounds):
        # Alternate which goes first, so a drift in machine load favours neither.
        order = ["bare", "trainer"] if r % 2 == 0 else ["trainer", "bare"]
        for which in order:
            dist.barrier()
            if which == "bare":
                bare = bare_ddp(session, args.steps, args.warmup)
            else:
                ours = trainer_steps(session, f"bench-{r}", args.steps, args.warmup)
        rounds.append(
            {"bare_step_s": bare, "trainer_step_s": ours, "ratio": bare / ours if ours else 0}
        )
    if env.is_main:
        write_result(args.out, {"rounds": rounds})
    close_distributed()


def main() -> None:
    parser = harness_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(machine())
    root = scratch_dir("throughput")
    result = launch(
        __file__,
        [
            "--root",
            str(root),
            "--rounds",
            str(args.rounds),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ],
    )
    tokens = TRAINING["batch"]["globalBatchSize"] * TRAINING["model"]["seqLen"]
    print(f"{'round':>5} {'bare tok/s':>11} {'trainer tok/s':>14} {'ratio':>6}")
    for i, r in enumerate(result["rounds"]):
        print(
            f"{i:>5} {tokens / r['bare_step_s']:>11.0f} {tokens / r['trainer_step_s']:>14.0f} {r['ratio']:>6.3f}"
        )
    ratios = [r["ratio"] for r in result["rounds"]]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    bare = statistics.median(tokens / r["bare_step_s"] for r in result["rounds"])
    ours = statistics.median(tokens / r["trainer_step_s"] for r in result["rounds"])
    print(f"ratio trainer/bare: median {median:.3f} (quartiles {q1:.3f}-{q3:.3f}); goal >= 0.97")
    print(f"median throughput: bare {bare:.0f} tok/s, trainer {ours:.0f} tok/s ({ours / bare:.3f})")


if __name__ == "__main__":
    main()
