"""Checkpoint cost: a blocking save vs the training stall of an async one (world 2, CPU).

    python benchmarks/checkpoint_stall.py [--layers 8 --hidden 640 --repeats 3]

FSDP2 model with AdamW state (what a large job checkpoints). Sync: `save(blocking=True)`
from call to return on all ranks (written, fsynced, COMPLETE marked). Async: the time the
training loop is held up — the save call plus the wait for staging before the next
optimiser step, with one training step's forward/backward in between (what the staging
copy overlaps). Goal: async stall ≤ 0.1 × sync save.
"""

from __future__ import annotations

import argparse
import statistics
import time

from harness import SHAKESPEARE, launch, machine, scratch_dir, worker_session, write_result
from harness import parser as harness_parser


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from lmjob_trainer.checkpoint import CheckpointManager, ModelState, OptimizerState
    from lmjob_trainer.distributed import close_distributed
    from lmjob_trainer.model import count_params
    from lmjob_trainer.optim import build_optimizer
    from lmjob_trainer.parallelize import parallelize

    training = {
        "model": {"layers": args.layers, "heads": 10, "hidden": args.hidden, "seqLen": 64},
        "data": {"source": str(SHAKESPEARE)},
        "parallelism": {"strategy": "fsdp"},
        "schedule": {"warmupSteps": 0},
        "batch": {"microBatchSize": 2, "globalBatchSize": 4},
    }
    session = worker_session(training, args.root)
    env, metrics, root = session.env, session.metrics, session.root
    model = session.build_model()
    params = count_params(model)
    model = parallelize(model, mesh=session.mesh(), config=session.training, device=env.device)
    optimizer = build_optimizer(model, session.training.optimizer, env.device)
    split = session.train_split

    def forward_backward() -> None:
        batch = torch.stack([split.window(i) for i in range(2)])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()

    forward_backward()
    optimizer.step()  # materialise the Adam moments
    optimizer.zero_grad()
    states = {"model": ModelState(model), "optim": OptimizerState(model, optimizer)}

    def manager(stage: str, async_save: bool) -> CheckpointManager:
        return CheckpointManager(
            root, stage, states, env=env, metrics=metrics, keep=2, async_save=async_save
        )

    sync, stall, async_total = [], [], []
    sync_manager, async_manager = manager("sync", False), manager("async", True)
    for i in range(1, args.repeats + 1):
        dist.barrier()
        started = time.perf_counter()
        sync_manager.save(i, blocking=True)
        sync.append(time.perf_counter() - started)
        dist.barrier()
        started = time.perf_counter()
        async_manager.save(i)
        forward_backward()  # the next step's compute, overlapping the staging copy
        async_manager.wait_staged()
        stall.append(async_manager.last_stall_seconds)
        optimizer.step()
        optimizer.zero_grad()
        async_manager.wait()
        async_total.append(time.perf_counter() - started)
    sync_manager.close()
    async_manager.close()
    if env.is_main:
        newest = root / "sync" / f"step-{args.repeats:09d}"
        size = sum(f.stat().st_size for f in newest.glob("*.distcp"))
        write_result(
            args.out,
            {
                "params": params,
                "bytes": size,
                "sync": sync,
                "stall": stall,
                "async_total": async_total,
            },
        )
    close_distributed()


def main() -> None:
    parser = harness_parser(__doc__)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(machine())
    root = scratch_dir("checkpoint")
    print(f"checkpoints written under {root}")
    shape = [
        "--layers",
        str(args.layers),
        "--hidden",
        str(args.hidden),
        "--repeats",
        str(args.repeats),
    ]
    r = launch(__file__, ["--root", str(root), *shape])
    sync, stall = statistics.median(r["sync"]), statistics.median(r["stall"])
    print(
        f"model {r['params'] / 1e6:.0f}M params; checkpoint {r['bytes'] / 2**20:.0f} MiB (model + AdamW)"
    )
    print(f"sync save:          {sync:7.3f} s  (median of {r['sync']})")
    print(f"async stall:        {stall:7.3f} s  (median of {r['stall']})")
    print(f"async until written:{statistics.median(r['async_total']):7.3f} s")
    print(f"stall / sync: {stall / sync:.3f} (goal <= 0.1)")


if __name__ == "__main__":
    main()
