"""In-process checks of the trainer's parts: model interface, data, schedule, metrics, logs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest

from lmjob_api.trainer_metrics import parse_scrape
from lmjob_api.training import ModelSpec, ScheduleSpec
from lmjob_trainer.data import TokenStream, eval_batches, load_splits, prepare_data
from lmjob_trainer.distributed import DistEnv
from lmjob_trainer.logs import LogfmtFormatter, set_log_context
from lmjob_trainer.metrics import EVAL_HISTORY_SIZE, TrainerMetrics
from lmjob_trainer.model import GPT, Block, build_model, count_params
from lmjob_trainer.optim import lr_factor
from lmjob_trainer.tokenizer import ByteTokenizer

SPEC = ModelSpec(layers=2, heads=4, hidden=32, seq_len=16)


def test_model_interface() -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, 256)
    assert isinstance(model, GPT)
    assert isinstance(model.blocks[0], Block)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert (attn.qkv.in_features, attn.qkv.out_features, attn.n_heads) == (32, 96, 4)
    assert (mlp.fc.out_features, mlp.proj.in_features) == (128, 128)
    assert model.head.weight is model.tok_emb.weight
    idx = torch.randint(0, 256, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 256)
    assert loss is not None and abs(loss.item() - math.log(256)) < 0.5
    assert model(idx)[1] is None
    out = model.generate(idx[:1, :4], max_new_tokens=5, temperature=0.8, top_k=10)
    assert out.shape == (1, 9)


def test_head_rows_are_whole_heads() -> None:
    """Dropping one head's rows of qkv (and its columns of proj) leaves a working layer
    that computes exactly what the remaining heads computed before: the pinned layout."""
    torch.manual_seed(0)
    model = GPT(SPEC, 256).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 32)
    keep = [h for h in range(4) if h != 1]
    rows = torch.cat([torch.arange(96)[attn.head_rows(h)] for h in keep])
    cols = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in keep])
    pruned = torch.nn.Linear(32, 72)
    pruned.weight.data, pruned.bias.data = (
        attn.qkv.weight[rows].clone(),
        attn.qkv.bias[rows].clone(),
    )
    proj = torch.nn.Linear(24, 32)
    proj.weight.data, proj.bias.data = attn.proj.weight[:, cols].clone(), attn.proj.bias.clone()
    # Reference: zero head 1's output before the projection.
    with torch.no_grad():
        full = attn.qkv(x).view(2, 16, 4, 3, 8)
        q, k, v = (full[:, :, :, i].transpose(1, 2) for i in range(3))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y[:, 1] = 0
        want = attn.proj(y.transpose(1, 2).reshape(2, 16, 32))
        attn.qkv, attn.proj = pruned, proj
        got = attn(x)
    torch.testing.assert_close(got, want)


def test_count_params_counts_tied_weights_once() -> None:
    model = GPT(SPEC, 256)
    assert count_params(model) == sum(p.numel() for p in set(model.parameters()))


@pytest.fixture()
def stream(tmp_path: Path) -> TokenStream:
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.txt").write_bytes(bytes(range(32, 127)) * 20)
    (src / "b.txt").write_bytes(b"hello world\n" * 100)
    entry, built = prepare_data(str(src), ByteTokenizer(), tmp_path / "cache", build=True)
    assert built and (entry / "meta.json").is_file()
    # A second call finds the cache instead of rebuilding it.
    assert prepare_data(str(src), ByteTokenizer(), tmp_path / "cache", build=True) == (entry, False)
    return TokenStream(entry)


def test_token_cache_round_trip(stream: TokenStream) -> None:
    expected = bytes(range(32, 127)) * 20 + b"\n\n" + b"hello world\n" * 100
    assert len(stream) == len(expected)
    assert bytes(stream.read(0, len(expected)).tolist()) == expected


def test_eval_set_is_equal_per_rank(stream: TokenStream) -> None:
    _, val = load_splits(stream, seq_len=16, validation_split=0.2)
    batches = [
        list(eval_batches(val, num_sequences=7, micro_batch=2, dp_rank=r, dp_size=3))
        for r in range(3)
    ]
    assert len({len(b) for b in batches}) == 1  # same number of forwards on every rank
    assert sum(float(w.sum()) for b in batches for _, _, w in b) == 7


def test_schedule_shapes() -> None:
    cosine = lr_factor(ScheduleSpec(warmup_steps=10, decay="cosine", min_lr_ratio=0.1), 110)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.55) and cosine(110) == pytest.approx(0.1)
    linear = lr_factor(ScheduleSpec(warmup_steps=0, decay="linear", min_lr_ratio=0.0), 100)
    assert linear(50) == pytest.approx(0.5)
    step = lr_factor(ScheduleSpec(warmup_steps=0, decay="step", step_every=10, gamma=0.5), 100)
    assert step(25) == pytest.approx(0.25)
    constant = lr_factor(ScheduleSpec(warmup_steps=0, decay="constant"), 100)
    assert constant(99) == 1.0


def _env(rank: int, local_rank: int) -> DistEnv:
    return DistEnv(rank, local_rank, 4, 2, torch.device("cpu"), restart_count=2)


def test_metrics_follow_the_contract() -> None:
    """Names and labels of docs/contracts.md; job-level series only on global rank 0."""
    metrics = TrainerMetrics("j", _env(0, 0))
    metrics.record_total_steps("train", 10)
    metrics.record_step(
        "train", step=1, loss=2.0, lr=0.1, grad_norm=1.0, tokens_per_second=5.0, step_seconds=0.5
    )
    metrics.record_eval("train", 1, 1.9)
    metrics.record_checkpoint_saved("train", 0.2)
    metrics.record_checkpoint_loaded("train", 0.1)
    metrics.record_checkpoint_complete("train", "/c/train/step-000000001", 1)
    metrics.record_checkpoint_complete("train", "/c/train/step-000000002", 2, write_seconds=3.5)
    metrics.set_stage_phase("train", "Running")
    metrics.set_stage_phase("train", "Succeeded")
    metrics.set_stage_result("train", {"evalLoss": 1.9, "params": 100})
    metrics.record_memory("train", torch.device("cpu"))
    text = generate_latest(metrics.registry).decode()
    for line in [
        'lmjob_trainer_step{job="j",stage="train"} 1.0',
        'lmjob_trainer_total_steps{job="j",stage="train"} 10.0',
        'lmjob_trainer_loss{job="j",stage="train"} 2.0',
        'lmjob_trainer_eval_loss{job="j",stage="train"} 1.9',
        'lmjob_trainer_eval_history{job="j",stage="train",step="1"} 1.9',
        'lmjob_trainer_learning_rate{job="j",stage="train"} 0.1',
        'lmjob_trainer_grad_norm{job="j",stage="train"} 1.0',
        'lmjob_trainer_tokens_per_second{job="j",stage="train"} 5.0',
        'lmjob_trainer_step_seconds_count{job="j",stage="train"} 1.0',
        'lmjob_trainer_checkpoint_save_seconds_count{job="j",stage="train"} 1.0',
        'lmjob_trainer_checkpoint_load_seconds_count{job="j",stage="train"} 1.0',
        'lmjob_trainer_checkpoint_info{job="j",path="/c/train/step-000000002",stage="train"} 2.0',
        'lmjob_trainer_checkpoint_write_seconds{job="j",stage="train"} 3.5',
        'lmjob_trainer_world_size{job="j"} 4.0',
        'lmjob_trainer_restarts{job="j"} 2.0',
        'lmjob_trainer_stage_info{job="j",phase="Succeeded",stage="train"} 1.0',
        'lmjob_trainer_stage_result{job="j",metric="evalLoss",stage="train"} 1.9',
    ]:
        assert line in text, line
    assert "step-000000001" not in text  # one checkpoint_info series: the newest
    assert 'phase="Running"' not in text  # one stage_info series per stage
    assert 'lmjob_trainer_memory_bytes{job="j",kind="rss",stage="train"}' in text
    assert "lmjob_trainer_mfu{" not in text  # GPU only
    # The one reader of the series (the operator's and `lmjob run`'s) gets back what was
    # recorded, and the same stages as the termination message (stage_summary).
    progress = parse_scrape(text, ["train"])
    assert progress is not None
    assert (
        progress.stage,
        progress.step,
        progress.total_steps,
        progress.loss,
        progress.eval_loss,
        progress.tokens_per_second,
        progress.world_size,
        progress.restarts,
        progress.checkpoint_path,
        progress.checkpoint_step,
        progress.checkpoint_write_seconds,
    ) == ("train", 1, 10, 2.0, 1.9, 5.0, 4, 2, "/c/train/step-000000002", 2, 3.5)
    assert [(e.stage, e.step, e.loss) for e in progress.evaluations] == [("train", 1, 1.9)]
    assert list(progress.stages) == metrics.stage_summary()

    # Local rank 0 of another pod: memory only; a non-local-0 process: nothing.
    other_pod = TrainerMetrics("j", _env(2, 0))
    other_pod.record_step(
        "train", step=1, loss=2.0, lr=0.1, grad_norm=1.0, tokens_per_second=5.0, step_seconds=0.5
    )
    other_pod.record_eval("train", 1, 1.9)
    other_pod.record_memory("train", torch.device("cpu"))
    samples = [
        line
        for line in generate_latest(other_pod.registry).decode().splitlines()
        if not line.startswith("#")
    ]
    assert samples and all(line.startswith("lmjob_trainer_memory_bytes") for line in samples), (
        samples
    )
    quiet = TrainerMetrics("j", _env(3, 1))
    quiet.record_memory("train", torch.device("cpu"))
    assert [
        line
        for line in generate_latest(quiet.registry).decode().splitlines()
        if not line.startswith("#")
    ] == []


def test_eval_history_keeps_the_last_evaluations_of_each_stage() -> None:
    """One series per evaluation, the oldest dropped past EVAL_HISTORY_SIZE per stage (bounded
    cardinality); a re-evaluated step overwrites its series; NaN stays out of the history."""
    metrics = TrainerMetrics("j", _env(0, 0))
    total = EVAL_HISTORY_SIZE + 6
    for step in range(10, 10 * (total + 1), 10):
        metrics.record_eval("train", step, 3.0 - step / 1e4)
    metrics.record_eval("train", 10 * total, 1.0)  # a resumed run evaluates its step again
    metrics.record_eval("train", 10 * (total + 1), float("nan"))
    metrics.record_eval("prune", 5, 1.5)
    text = generate_latest(metrics.registry).decode()
    got = [(e.stage, e.step, e.loss) for e in parse_scrape(text, ["train", "prune"]).evaluations]
    kept = range(10 * (total - EVAL_HISTORY_SIZE + 1), 10 * total, 10)
    assert got == [
        *(("train", s, 3.0 - s / 1e4) for s in kept),
        ("train", 10 * total, 1.0),
        ("prune", 5, 1.5),
    ]
    assert 'lmjob_trainer_eval_loss{job="j",stage="train"} NaN' in text  # latest, as before


def test_logfmt_lines_carry_context() -> None:
    set_log_context(job="j", rank=0, stage="train", step=5)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "step done", None, None)
    record.loss = 1.23456789
    line = LogfmtFormatter().format(record)
    set_log_context(stage=None, step=None)
    assert 'job=j rank=0 stage=train step=5 msg="step done" loss=1.23457' in line
    json.dumps(line)  # one line, no stray control characters
