"""Per-rank peak memory of FSDP2 vs DDP where optimiser state dominates (world 2, CPU).

    python benchmarks/fsdp_memory.py [--layers 24 --hidden 640]

Each strategy runs in its own launch of the trainer's train stage: it builds the model
(under FSDP on the meta device, with one full copy on rank 0 only), parallelises it and
runs a few AdamW steps with a tiny batch (so activations are negligible next to params,
gradients and the two Adam moments). Peak = the process's resident-memory high-water mark
(VmHWM) minus its resident memory once the process group and device mesh exist and before
the model is built (torch's libraries and communicators are left out); the max over ranks,
and each rank's.

CPU tensors come from glibc malloc, which keeps freed memory and fragments, so RSS would
overstate live memory (FSDP frees and re-allocates every block's parameters each step).
The workers run with MALLOC_MMAP_THRESHOLD_=65536: tensors over 64 KiB are mmapped and
unmapped on free, so RSS follows live tensor bytes, as a GPU's allocator statistics do.
Goal: FSDP ≤ 0.55 × DDP.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import SHAKESPEARE, launch, machine, scratch_dir, worker_session, write_result
from harness import parser as harness_parser

# See the module docstring: make CPU RSS track live tensor memory.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from lmjob_trainer.distributed import close_distributed
    from lmjob_trainer.train import train_stage

    training = {
        "model": {"layers": args.layers, "heads": 10, "hidden": args.hidden, "seqLen": 64},
        "data": {"source": str(SHAKESPEARE)},
        "parallelism": {"strategy": args.strategy},
        "schedule": {"warmupSteps": 0},
        "steps": args.steps,
        "batch": {"microBatchSize": 1, "globalBatchSize": 2},
        "evaluation": {"everySteps": 1_000_000, "steps": 1},
        "checkpoint": {"everySteps": 1_000_000, "keep": 1},
    }
    session = worker_session(training, args.root)
    env = session.env
    session.mesh()  # communicators first: their buffers are no part of the model's memory
    dist.barrier()
    # Reset the high-water mark to the current RSS: what follows is the training's memory.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_kib("VmRSS")
    result = train_stage(session)
    assert result is not None
    peak = torch.tensor([(_status_kib("VmHWM") - baseline) * 1024.0])
    peaks = [torch.zeros(1) for _ in range(env.world_size)]
    dist.all_gather(peaks, peak)
    if env.is_main:
        per_rank = [p.item() for p in peaks]
        write_result(
            args.out,
            {"peak_bytes": max(per_rank), "per_rank": per_rank, "params": result.extra["params"]},
        )
    close_distributed()


def main() -> None:
    parser = harness_parser(__doc__)
    parser.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(machine())
    results = {}
    for strategy in ("ddp", "fsdp"):
        root = scratch_dir(f"memory-{strategy}")
        shape = [
            "--layers",
            str(args.layers),
            "--hidden",
            str(args.hidden),
            "--steps",
            str(args.steps),
        ]
        results[strategy] = launch(
            __file__, ["--root", str(root), "--strategy", strategy, *shape], env=MALLOC_ENV
        )
    params = results["ddp"]["params"]
    print(
        f"model: {params / 1e6:.0f}M parameters = {params * 4 / 2**20:.0f} MiB in fp32; AdamW state 2x that"
    )
    for strategy, r in results.items():
        ranks = ", ".join(f"{b / 2**20:.0f}" for b in r["per_rank"])
        print(
            f"{strategy:>5}: peak per rank {r['peak_bytes'] / 2**20:8.0f} MiB = {r['peak_bytes'] / (params * 4):.2f} x params"
            f"  (ranks: {ranks} MiB)"
        )
    ratio = results["fsdp"]["peak_bytes"] / results["ddp"]["peak_bytes"]
    print(f"FSDP / DDP peak per rank: {ratio:.3f} (goal <= 0.55)")


if __name__ == "__main__":
    main()
