"""What one trainer process sets up once and every stage shares: the `TrainerSession`.

Training and the compression stages both work through it: the config, this process's
place in the job, storage, metrics, tokenizer and data splits, plus helpers to build a
model, load a stage's trained weights and evaluate. It is the object handed to
`lmjob_trainer.compression.run_stages(session)`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lmjob_api.trainer_config import TrainerConfig
from lmjob_api.training import ModelSpec, Strategy, TrainingSpec
from lmjob_trainer import storage
from lmjob_trainer.checkpoint import ModelState, choose_on_rank0
from lmjob_trainer.data import Split, TokenStream, load_splits, prepare_data
from lmjob_trainer.distributed import DistEnv, build_mesh
from lmjob_trainer.evaluate import evaluate_split
from lmjob_trainer.goodput import GoodputLedger
from lmjob_trainer.metrics import TrainerMetrics
from lmjob_trainer.model import build_model
from lmjob_trainer.tokenizer import Tokenizer, build_tokenizer, padded_vocab_size

log = logging.getLogger(__name__)


@dataclass
class TrainerSession:
    """Shared state of one trainer process (see module docstring)."""

    config: TrainerConfig
    env: DistEnv
    root: Path
    """`$LMJOB_CHECKPOINT_DIR`: stage folders, reports and the data cache live here."""
    metrics: TrainerMetrics
    tokenizer: Tokenizer
    vocab_size: int
    """Model vocabulary: the tokenizer's, padded (see `padded_vocab_size`)."""
    train_split: Split
    val_split: Split
    stop_requested: threading.Event = field(default_factory=threading.Event)
    """Set by SIGTERM/SIGINT: loops save a checkpoint and return at the next step."""
    stop_signal: int = 0
    goodput: GoodputLedger | None = None
    """Rank 0's goodput ledger (set by `train.run`); None in tests that build a session bare."""
    _meshes: dict[tuple[str, int], DeviceMesh] = field(default_factory=dict)

    def record_time(self, event: str, **fields: Any) -> None:
        """A goodput ledger record (rank 0; nothing elsewhere or without a ledger)."""
        if self.goodput is not None:
            self.goodput.record(event, **fields)

    @property
    def training(self) -> TrainingSpec:
        return self.config.training

    @property
    def device(self) -> torch.device:
        return self.env.device

    def mesh(self, strategy: Strategy | None = None) -> DeviceMesh:
        """The device mesh of a strategy (default: the configured one), built once."""
        strategy = strategy or self.training.parallelism.strategy
        tp = self.training.parallelism.tensor_parallel if strategy == "fsdp+tp" else 1
        key = (strategy, tp)
        if key not in self._meshes:
            self._meshes[key] = build_mesh(self.env, strategy, tp)
        return self._meshes[key]

    def build_model(self, spec: ModelSpec | None = None) -> nn.Module:
        """A fresh CPU model of `spec` (default: training.model), identically seeded on all ranks."""
        torch.manual_seed(self.training.seed)
        return build_model(spec or self.training.model, self.vocab_size)

    def load_stage_model(
        self,
        stage: str = storage.TRAIN_STAGE,
        model: nn.Module | None = None,
        *,
        collective: bool = True,
    ) -> nn.Module:
        """A plain (unsharded, CPU) model holding the weights of `stage`'s newest complete
        checkpoint, whatever world size wrote it.

        `model` is the module to load into (same parameter names as the saved one), e.g.
        a student or a compressed shape; default: a fresh model of training.model. Every
        rank calls it, unless `collective=False`: then only the caller loads (no
        collectives; e.g. rank 0 alone for a sample).
        """
        if collective:
            latest = choose_on_rank0(self.env, lambda: storage.latest_complete(self.root, stage))
        else:
            latest = storage.latest_complete(self.root, stage)
        if latest is None:
            raise FileNotFoundError(f"stage {stage} has no complete checkpoint under {self.root}")
        model = model if model is not None else self.build_model()
        dcp.load({"model": ModelState(model)}, checkpoint_id=str(latest[1]), no_dist=not collective)
        return model

    def evaluate(self, model: nn.Module, *, strategy: Strategy | None = None) -> float:
        """Mean validation loss of `model` (plain, DDP, FSDP or TP) over the fixed eval set.

        A collective: every rank calls it. `strategy` names how `model` is parallelised
        (tensor-parallel ranks must see the same data); default: plain data parallel.
        """
        dp_rank, dp_size = (self.env.rank, self.env.world_size)
        if strategy == "fsdp+tp":
            dp = self.mesh(strategy)["dp"]
            dp_rank, dp_size = dp.get_local_rank(), dp.size()
        return evaluate_split(
            model,
            self.val_split,
            num_sequences=self.training.evaluation.steps * self.training.batch.micro_batch_size,
            micro_batch=self.training.batch.micro_batch_size,
            dp_rank=dp_rank,
            dp_size=dp_size,
            device=self.device,
            precision=self.training.precision,
        )

    def close(self) -> None:
        self.metrics.close()


def build_session(
    config: TrainerConfig, env: DistEnv, root: Path, metrics: TrainerMetrics
) -> TrainerSession:
    """Tokenise the data once per node (others wait), memory-map it, and set up the splits."""
    data = config.training.data
    tokenizer = build_tokenizer(data.tokenizer)
    cache_root = Path(data.cache_dir) if data.cache_dir else root / storage.DATA_CACHE
    entry, built = prepare_data(data.source, tokenizer, cache_root, build=env.is_local_main)
    if built:
        log.info("tokenised training data", extra={"cache": str(entry)})
    dist.barrier()
    if not env.is_local_main:
        entry, _ = prepare_data(data.source, tokenizer, cache_root, build=False)
    stream = TokenStream(entry)
    train, val = load_splits(stream, config.training.model.seq_len, data.validation_split)
    log.info(
        "data ready",
        extra={
            "tokens": len(stream),
            "train_windows": train.num_windows,
            "val_windows": val.num_windows,
        },
    )
    return TrainerSession(
        config=config,
        env=env,
        root=root,
        metrics=metrics,
        tokenizer=tokenizer,
        vocab_size=padded_vocab_size(tokenizer.vocab_size),
        train_split=train,
        val_split=val,
    )
