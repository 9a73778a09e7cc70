"""Exact elastic batches: every world size an elastic manifest admits trains on the same global
batch, split over the data-parallel ranks however unevenly (the loader's plan, the start-up
checks, and a real torchrun run resized 2 → 3 → 2 ranks against an unresized one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lmjob_api.trainer_config import build_trainer_config
from lmjob_api.training import BatchSpec
from lmjob_api.validation import validate_job
from lmjob_trainer.data import (
    BatchPlan,
    TokenStream,
    TrainLoader,
    build_batch_plan,
    load_splits,
    prepare_data,
)
from lmjob_trainer.local_run import resolve_paths
from lmjob_trainer.preflight import check_runnable
from lmjob_trainer.storage import read_history
from lmjob_trainer.tokenizer import ByteTokenizer
from tests.support.invalid_jobs import load_base

from .conftest import copy_checkpoint, losses, tiny_training, torchrun, write_config

REPO = Path(__file__).resolve().parents[2]


def _assert_exact(plan: BatchPlan) -> None:
    """The plan's invariants: the ranks' slices tile the step in order, every rank runs as
    many micro-batches, none larger than micro_batch, and the loss weights average to 1."""
    slices = [plan.rank_slice(r) for r in range(plan.dp_size)]
    assert [i for s in slices for i in s] == list(range(plan.global_batch))
    assert max(len(s) for s in slices) - min(len(s) for s in slices) <= 1
    sizes = [plan.micro_batch_sizes(r) for r in range(plan.dp_size)]
    assert {len(s) for s in sizes} == {plan.num_micro_batches}
    assert all(0 <= b <= plan.micro_batch for s in sizes for b in s)
    assert [sum(s) for s in sizes] == [len(s) for s in slices]
    # DDP/FSDP average over the ranks: Σ weights / D must be 1 for the mean loss's gradient.
    total = sum(plan.loss_weight(b) for s in sizes for b in s) / plan.dp_size
    assert total == pytest.approx(1.0)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> TokenStream:
    src = tmp_path_factory.mktemp("text") / "a.txt"
    src.write_bytes(bytes(range(32, 127)) * 30)
    entry, _ = prepare_data(str(src), ByteTokenizer(), src.parent / "cache", build=True)
    return TokenStream(entry)


@pytest.mark.parametrize(("global_batch", "micro"), [(8, 2), (8, 1), (7, 3), (5, 5), (12, 4)])
def test_every_dp_size_trains_on_the_whole_step(
    stream: TokenStream, global_batch: int, micro: int
) -> None:
    """For dp sizes 1..G+1 the ranks' real samples, put together in rank order, are exactly
    the step's G samples in order (those of one process taking the step in one batch)."""
    train, _ = load_splits(stream, seq_len=16, validation_split=0.1)
    whole = TrainLoader(train, plan=BatchPlan(global_batch, global_batch, 1), dp_rank=0, seed=3)
    steps = [whole.next_step()[0].inputs for _ in range(3)]  # 3 steps: the cursor moves on
    for dp in range(1, global_batch + 2):
        plan = BatchPlan(global_batch, micro, dp)
        _assert_exact(plan)
        ranks = [TrainLoader(train, plan=plan, dp_rank=r, seed=3) for r in range(dp)]
        for expected in steps:
            batches = [b for loader in ranks for b in loader.next_step()]
            assert all(b.inputs.shape[0] == max(b.samples, 1) for b in batches)
            real = torch.cat([b.inputs for b in batches if b.samples])
            assert torch.equal(real, expected), dp


def test_loader_resumes_at_its_cursor(stream: TokenStream) -> None:
    train, _ = load_splits(stream, seq_len=16, validation_split=0.1)
    plan = BatchPlan(8, 2, 1)
    first = TrainLoader(train, plan=plan, dp_rank=0, seed=3)
    first.next_step()
    resumed = TrainLoader(train, plan=plan, dp_rank=0, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.next_step()[0].inputs, first.next_step()[0].inputs)


@pytest.mark.parametrize(
    ("micro", "global_", "dp", "expected"),
    [(4, 8, 2, (8, 1)), (4, 16, 2, (16, 2)), (4, 16, 1, (16, 4)), (4, None, 3, (12, 1))],
)
def test_global_batch_defaults_to_micro_times_dp(
    micro: int, global_: int | None, dp: int, expected: tuple[int, int]
) -> None:
    plan = build_batch_plan(BatchSpec(micro_batch_size=micro, global_batch_size=global_), dp)
    assert (plan.global_batch, plan.num_micro_batches) == expected


def _manifests() -> list[tuple[str, dict[str, Any], Path]]:
    """(name, manifest, folder its relative paths resolve against): every example that uses
    the built-in trainer, and the base of the tests' manifest table."""
    found = [("invalid_jobs.yaml base", load_base(), REPO / "tests" / "data")]
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("spec", {}).get("training") is not None:
                found.append((path.name, doc, path.parent))
    return found


MANIFESTS = _manifests()


@pytest.mark.parametrize(("name", "manifest", "folder"), MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_manifest_runs_at_every_world_size_it_admits(
    name: str, manifest: dict[str, Any], folder: Path
) -> None:
    """examples/gpt-multinode-gpu.yaml (global 512, micro 8, tp 8, 2-8 pods of 8) used to
    exit at 3, 5, 6 and 7 pods."""
    job, problems = validate_job(manifest)
    assert problems == [], name
    workers = job.spec.workers
    config = resolve_paths(build_trainer_config(job), folder)
    par = config.training.parallelism
    tp = par.tensor_parallel if par.strategy == "fsdp+tp" else 1
    low, high = workers.bounds
    for pods in range(low, high + 1):
        world = pods * workers.num_procs
        # GPU jobs: one GPU per process (the device count is the machine's, not the manifest's).
        gpus = world if workers.resources.num_gpus else 0
        assert check_runnable(config, world_size=world, cuda_devices=gpus) == [], (name, pods)
        _assert_exact(build_batch_plan(config.training.batch, world // tp))


# Losses of a resized run equal the unresized run's up to the order of floating-point sums.
ATOL = 1e-4


@pytest.mark.slow
def test_resize_2_3_2_follows_the_unresized_loss_curve(
    tmp_path: Path, text_file: Path, data_cache: Path, ddp_reference: Path
) -> None:
    """The reference trains 2 ranks on global batch 8 at micro-batch 4 (one [4] each); 3 ranks
    take slices of 3, 3 and 2, exact only with the loss weighted by the global batch. Resized
    at step 4 to 3 ranks and at step 8 back to 2, the losses stay the reference's."""
    training = tiny_training(text_file, data_cache)
    assert training["batch"] == {"microBatchSize": 4, "globalBatchSize": 8}
    three = tmp_path / "three"
    copy_checkpoint(ddp_reference, 4, three)
    # A constant lr: `steps` only says where each segment ends (see tiny_training).
    torchrun(write_config(tmp_path / "c8.yaml", {**training, "steps": 8}), three, nproc=3)
    back = tmp_path / "back"
    copy_checkpoint(three, 8, back)
    torchrun(write_config(tmp_path / "c10.yaml", {**training, "steps": 10}), back, nproc=2)
    want = losses(ddp_reference)
    got = {**losses(three), **losses(back)}
    assert sorted(got) == list(range(5, 11)), "did not resume from the copied checkpoints"
    assert read_history(three, "train")[5]["world_size"] == 3
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=ATOL), (step, got[step], want[step])
