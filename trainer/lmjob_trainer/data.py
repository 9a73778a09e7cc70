"""Training data: text → token shards cached on disk → memory-mapped windows → batches.

The corpus (a file, or the sorted .txt files of a folder, joined by the tokenizer's
separator) is tokenised once into shards under the cache directory; every process then
memory-maps them. The last `validationSplit` of the tokens is held out.

The training stream is defined over *global* sample indices: sample i of the run is window
`perm(epoch)[i mod W]` with a permutation seeded by (seed, epoch). Each optimiser step takes
the next `globalBatchSize` samples and each data-parallel rank a contiguous slice of them
(`BatchPlan`: slices differ by at most one sample, so any world size works). So the
loader's whole state is one cursor, and a checkpoint resumes at any world size on exactly
the samples an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lmjob_api.training import BatchSpec
from lmjob_trainer.preflight import source_files
from lmjob_trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = "lmjob-tokens-v1"
SHARD_TOKENS = 1 << 28  # 256 Mi tokens per shard file: 512 MiB as uint16


def cache_key(files: list[Path], tokenizer: Tokenizer) -> str:
    """Names a cache entry: changes when a file, its size/mtime, or the tokenizer changes."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    digest.update(tokenizer.fingerprint().encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _token_dtype(vocab_size: int) -> torch.dtype:
    return torch.uint16 if vocab_size <= 1 << 16 else torch.int32


def _write_tokens(path: Path, tokens: torch.Tensor) -> None:
    """Raw little-endian token ids, written through a shared memory map (no numpy needed)."""
    with path.open("wb") as f:
        f.truncate(tokens.numel() * tokens.element_size())
    if tokens.numel():
        out = torch.from_file(str(path), shared=True, size=tokens.numel(), dtype=tokens.dtype)
        out.copy_(tokens)
        del out  # unmaps; the kernel writes the pages back


def build_token_cache(files: list[Path], tokenizer: Tokenizer, target: Path) -> None:
    """Tokenise `files` into shards under `target`, atomically (built aside, then renamed)."""
    dtype = _token_dtype(tokenizer.vocab_size)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards: list[dict[str, Any]] = []
    pending: list[torch.Tensor] = []
    pending_len = 0

    def flush(final: bool) -> None:
        nonlocal pending, pending_len
        while pending_len >= SHARD_TOKENS or (final and pending_len):
            flat = torch.cat(pending)
            take = min(SHARD_TOKENS, flat.numel())
            name = f"shard-{len(shards):05d}.bin"
            _write_tokens(tmp / name, flat[:take].to(dtype))
            shards.append({"file": name, "tokens": take})
            rest = flat[take:]
            pending, pending_len = ([rest] if rest.numel() else []), rest.numel()

    sep = torch.tensor(tokenizer.separator, dtype=torch.int64)
    for i, f in enumerate(files):
        if i:
            pending.append(sep)
            pending_len += sep.numel()
        ids = tokenizer.encode(f.read_bytes())
        pending.append(ids)
        pending_len += ids.numel()
        flush(final=False)
    flush(final=True)
    meta = {
        "format": CACHE_FORMAT,
        "dtype": str(dtype).removeprefix("torch."),
        "tokenizer": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "sources": [str(f) for f in files],
        "shards": shards,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(target)
    except OSError:
        # Another node's process built the same entry first (a shared cache): keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)


class TokenStream:
    """All shards of a cache entry as one memory-mapped, read-only token sequence."""

    def __init__(self, cache_dir: Path) -> None:
        meta = json.loads((cache_dir / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{cache_dir}: unknown token cache format {meta.get('format')!r}")
        dtype = getattr(torch, meta["dtype"])
        # shared=False maps the file copy-on-write: pages load lazily, nothing is written back.
        self.shards = [
            torch.from_file(str(cache_dir / s["file"]), shared=False, size=s["tokens"], dtype=dtype)
            for s in meta["shards"]
        ]
        self.starts = [0]
        for s in self.shards:
            self.starts.append(self.starts[-1] + s.numel())
        self.vocab_size = int(meta["vocab_size"])

    def __len__(self) -> int:
        return self.starts[-1]

    def read(self, start: int, length: int) -> torch.Tensor:
        """Tokens [start, start+length) as int64, across shard boundaries if need be."""
        parts = []
        pos, end = start, start + length
        for shard, lo in zip(self.shards, self.starts, strict=False):
            hi = lo + shard.numel()
            if pos < hi and end > lo:
                parts.append(shard[max(pos, lo) - lo : min(end, hi) - lo])
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.to(torch.int64)


@dataclass(frozen=True)
class Split:
    """A contiguous token range of the stream cut into windows of seq_len+1 tokens."""

    stream: TokenStream
    start: int
    end: int
    seq_len: int

    @property
    def num_windows(self) -> int:
        # Windows step by seq_len and overlap by one token: the last input's target.
        return max(0, (self.end - self.start - 1) // self.seq_len)

    def window(self, i: int) -> torch.Tensor:
        return self.stream.read(self.start + i * self.seq_len, self.seq_len + 1)


def load_splits(stream: TokenStream, seq_len: int, validation_split: float) -> tuple[Split, Split]:
    """(train, validation): the validation split is the last fraction of the tokens."""
    n = len(stream)
    n_val = max(int(n * validation_split), seq_len + 1)
    train = Split(stream, 0, n - n_val, seq_len)
    val = Split(stream, n - n_val, n, seq_len)
    if train.num_windows == 0:
        raise ValueError(
            f"training.data.source: {n} tokens are too few for model.seqLen {seq_len} "
            "with this validationSplit; use more text or a shorter seqLen"
        )
    return train, val


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser step's `global_batch` samples are split over `dp_size` ranks.

    Rank r takes a contiguous slice of the step (slice sizes differ by at most one), cut
    into `num_micro_batches` micro-batches of at most `micro_batch` samples, sizes again
    differing by at most one. Every rank runs the same number of micro-batches: FSDP's
    forward and backward are collectives, and DDP must run exactly one synchronised backward
    per rank. A rank with fewer samples than micro-batches runs padding micro-batches of
    weight 0 (only with microBatchSize 1, or more ranks than samples).
    """

    global_batch: int
    micro_batch: int
    dp_size: int

    @property
    def num_micro_batches(self) -> int:
        largest_slice = -(-self.global_batch // self.dp_size)
        return max(1, -(-largest_slice // self.micro_batch))

    def rank_slice(self, dp_rank: int) -> range:
        """Offsets, within the step, of the samples this rank trains on."""
        base, extra = divmod(self.global_batch, self.dp_size)
        first = dp_rank * base + min(dp_rank, extra)
        return range(first, first + base + (dp_rank < extra))

    def micro_batch_sizes(self, dp_rank: int) -> list[int]:
        """Real samples in each of this rank's micro-batches (0: a padding micro-batch)."""
        base, extra = divmod(len(self.rank_slice(dp_rank)), self.num_micro_batches)
        return [base + (i < extra) for i in range(self.num_micro_batches)]

    def loss_weight(self, samples: int) -> float:
        """The factor on a micro-batch's mean loss that makes the step's gradient the gradient
        of the mean loss over the global batch, whatever the split.

        Every window is seqLen tokens, so a micro-batch's mean over its tokens is a mean over
        its `samples` samples, and the global token mean is the global sample mean. DDP and
        FSDP average gradients over the dp ranks (×1/D), so a micro-batch of b samples
        weighs b·D/G: summed over micro-batches and averaged over ranks, that is b/G each.
        """
        return samples * self.dp_size / self.global_batch


def build_batch_plan(batch: BatchSpec, dp_size: int) -> BatchPlan:
    """The plan at this data-parallel size. Without globalBatchSize the global batch is
    micro × data-parallel size, so it follows the world size (the API's documented default);
    with it, the optimiser sees the same samples per step at every world size."""
    micro = batch.micro_batch_size
    assert micro is not None, "BatchSpec derives microBatchSize"
    return BatchPlan(batch.global_batch_size or micro * dp_size, micro, dp_size)


class MicroBatch(NamedTuple):
    """One forward/backward's (inputs, targets) and how many real samples it holds."""

    inputs: torch.Tensor
    targets: torch.Tensor
    samples: int
    """0 for a padding micro-batch: it runs (collectives must match) but carries weight 0."""


class TrainLoader:
    """Micro-batches of one optimiser step for this data-parallel rank; a Stateful for DCP."""

    def __init__(self, split: Split, *, plan: BatchPlan, dp_rank: int, seed: int) -> None:
        self.split = split
        self.plan = plan
        self.dp_rank = dp_rank
        self.seed = seed
        self.cursor = 0
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _window_of(self, sample: int) -> int:
        w = self.split.num_windows
        epoch, offset = divmod(sample, w)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(w, generator=gen)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def next_step(self) -> list[MicroBatch]:
        """This rank's micro-batches of the next optimiser step, as many on every rank."""
        mine = self.plan.rank_slice(self.dp_rank)
        sizes = self.plan.micro_batch_sizes(self.dp_rank)
        batches = []
        lo = self.cursor + mine.start
        for size in sizes:
            # A padding micro-batch reads the step's first sample: real tokens, weight 0.
            first, count = (lo, size) if size else (self.cursor, 1)
            windows = torch.stack(
                [self.split.window(self._window_of(first + i)) for i in range(count)]
            )
            batches.append(
                MicroBatch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), size)
            )
            lo += size
        self.cursor += self.plan.global_batch
        return batches

    @property
    def epoch(self) -> float:
        return self.cursor / self.split.num_windows

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "num_windows": self.split.num_windows, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_windows"]) != self.split.num_windows:
            log.warning(
                "training data changed since the checkpoint; continuing at the same sample count",
                extra={"was": state["num_windows"], "now": self.split.num_windows},
            )
        self.cursor = int(state["cursor"])


def eval_batches(
    split: Split, *, num_sequences: int, micro_batch: int, dp_rank: int, dp_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(inputs, targets, weight) batches of a fixed evaluation set, split over dp ranks.

    The set is `num_sequences` windows spread evenly over the split, the same at every
    world size. Every rank yields the same number of equally shaped batches (FSDP and TP
    forwards are collectives); padding sequences carry weight 0.
    """
    total = min(num_sequences, split.num_windows)
    mine = list(range(dp_rank, total, dp_size))
    per_rank = -(-total // dp_size)
    picks = [(i * split.num_windows // total, 1.0) for i in mine]
    picks += [(0, 0.0)] * (per_rank - len(picks))
    for lo in range(0, per_rank, micro_batch):
        chunk = picks[lo : lo + micro_batch]
        windows = torch.stack([split.window(w) for w, _ in chunk])
        weight = torch.tensor([wt for _, wt in chunk])
        yield windows[:, :-1], windows[:, 1:], weight


def prepare_data(
    source: str, tokenizer: Tokenizer, cache_root: Path, *, build: bool
) -> tuple[Path, bool]:
    """The cache entry for `source`; built here when `build` (one process per node) and missing.

    Returns (entry path, whether it was built now). Callers barrier before reading it.
    """
    files = source_files(source)
    entry = cache_root / cache_key(files, tokenizer)
    if build and not (entry / "meta.json").exists():
        cache_root.mkdir(parents=True, exist_ok=True)
        build_token_cache(files, tokenizer, entry)
        return entry, True
    return entry, False
