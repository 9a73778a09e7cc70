"""Distributed checkpoints (torch.distributed.checkpoint) of a set of Stateful objects.

The manager is handed a dict of Stateful objects (model, optimiser, scheduler, loader,
train state) and knows nothing else. Every rank writes its shards; once the save's
collective finish has written DCP's metadata, rank 0 writes meta.json and then COMPLETE.
Only complete checkpoints are ever loaded or counted, and older ones are deleted only
after a newer one is complete, so a crash mid-save leaves the previous one usable. DCP
reshards on load: a checkpoint written by W processes loads at any other world size.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse
from torch.distributed.checkpoint.stateful import Stateful

from lmjob_trainer import storage
from lmjob_trainer.distributed import DistEnv
from lmjob_trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


class ModelState(Stateful):
    """The model's parameters under canonical names (no DDP `module.`, no wrapper prefixes),
    as full or sharded tensors: DCP maps them onto any parallelism at load."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state_dict)


class OptimizerState(Stateful):
    """Optimiser state keyed by parameter name, so it too reshards across world sizes."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state_dict)


class CheckpointManager:
    """Save, keep the newest N, and resume a stage's checkpoints under `<root>/<stage>/`."""

    def __init__(
        self,
        root: Path,
        stage: str,
        states: dict[str, Any],
        *,
        env: DistEnv,
        metrics: TrainerMetrics,
        keep: int,
        async_save: bool,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.stage = stage
        self.states = states
        self.env = env
        self.metrics = metrics
        self.keep = keep
        self.async_save = async_save
        self.meta = meta or {}
        self.last_saved_step: int | None = None
        """Step of the newest checkpoint saved or loaded by this manager."""
        self._in_flight: Future | None = None
        self._staging: Future | None = None
        self._stall = 0.0
        self._write_started = 0.0
        self.last_stall_seconds = 0.0
        """Seconds the newest save held up training (benchmarks read it)."""
        self._stager: DefaultStager | None = None
        # Set once rank 0 has marked the in-flight save complete: a future's result() returns
        # before its done-callbacks ran, and exiting then would lose the COMPLETE marker.
        self._finalized = threading.Event()
        # Async saves run their collectives in a background thread; a group of their own
        # keeps them from interleaving with the training loop's collectives.
        self._pg = dist.new_group(backend="gloo") if async_save else None
        if async_save:
            cuda = env.device.type == "cuda"
            # Staging (the copy into host memory) runs in a thread too, overlapping the next
            # forward/backward; only the optimiser step waits for it (`wait_staged`). Pinned
            # buffers and non-blocking copies make the device-to-host copy fast on GPUs.
            self._stager = DefaultStager(
                StagingOptions(
                    use_pinned_memory=cuda,
                    use_shared_memory=False,
                    use_async_staging=True,
                    use_non_blocking_copy=cuda,
                )
            )

    # --- resume ---

    def load_latest(self) -> int | None:
        """Load the newest complete checkpoint into the states; returns its step or None.

        Rank 0 picks it (and removes leftovers of interrupted saves) and tells the others, so
        all ranks load the same one even while storage listings lag.
        """

        def pick() -> tuple[int, Path] | None:
            self._remove_incomplete()
            return storage.latest_complete(self.root, self.stage)

        latest = choose_on_rank0(self.env, pick)
        if latest is None:
            return None
        step, path = latest
        started = time.perf_counter()
        dcp.load(self.states, checkpoint_id=str(path))
        seconds = time.perf_counter() - started
        self.metrics.record_checkpoint_loaded(self.stage, seconds)
        # How long it took to write, for the operator's grace period: a save on SIGTERM is
        # over before anyone scrapes it, so its measure travels in the checkpoint.
        written = storage.read_meta(path).get("write_seconds") if self.env.is_main else None
        self.metrics.record_checkpoint_complete(self.stage, str(path), step, write_seconds=written)
        self.last_saved_step = step
        log.info("resumed from checkpoint", extra={"path": str(path), "seconds": round(seconds, 3)})
        return step

    # --- save ---

    def save(self, step: int, *, blocking: bool = False) -> None:
        """Checkpoint the states at `step`; async unless `blocking` or configured sync.

        Returns once this rank may continue training: after the write (sync), or at once
        (async: staging and writing continue in threads; call `wait_staged` before the
        next optimiser step; one save in flight at a time).
        """
        if step == self.last_saved_step:
            return
        started = time.perf_counter()
        self.wait()
        # From here to the COMPLETE marker is what a save on SIGTERM needs (the grace period
        # the operator derives), whether or not training waited for all of it.
        self._write_started = time.perf_counter()
        path = storage.step_dir(self.root, self.stage, step)
        if self.async_save and not blocking:
            self._finalized.clear()
            response = dcp.async_save(
                self.states,
                checkpoint_id=str(path),
                process_group=self._pg,
                async_stager=self._stager,
            )
            if isinstance(response, AsyncSaveResponse):
                self._staging, future = response.staging_completion, response.upload_completion
            else:
                future = response
            future.add_done_callback(lambda f: self._on_async_done(f, path, step))
            self._in_flight = future
        else:
            dcp.save(self.states, checkpoint_id=str(path))
            if self.env.is_main:
                self._finalize(path, step)
            # A blocking save returns on every rank only once it is complete, so whatever
            # follows (loading it, exiting) sees the COMPLETE marker.
            dist.barrier()
        self.last_saved_step = step
        seconds = time.perf_counter() - started
        if self._staging is None:
            self.last_stall_seconds = seconds
            self.metrics.record_checkpoint_saved(self.stage, seconds)
        else:
            self._stall = seconds  # completed by wait_staged
        log.info(
            "checkpoint saved" if self._in_flight is None else "checkpoint staged",
            extra={"path": str(path), "seconds": round(seconds, 3)},
        )

    def wait_staged(self) -> None:
        """Block until the save in flight has copied the states; call before changing them
        (the optimiser step). Usually already done: staging overlaps forward and backward."""
        staging, self._staging = self._staging, None
        if staging is not None:
            started = time.perf_counter()
            staging.result()
            # The training loop's stall: the save call plus any wait for the copy.
            stall = self._stall + time.perf_counter() - started
            self.last_stall_seconds = stall
            self.metrics.record_checkpoint_saved(self.stage, stall)

    def wait(self) -> None:
        """Block until the save in flight (if any) is written; raises if it failed."""
        self.wait_staged()
        future, self._in_flight = self._in_flight, None
        if future is not None:
            future.result()
            self._finalized.wait()

    def close(self) -> None:
        """Finish the save in flight; call before the process group goes away."""
        try:
            self.wait()
        finally:
            if self._stager is not None:
                self._stager.close()
                self._stager = None
            if self._pg is not None:
                dist.destroy_process_group(self._pg)
                self._pg = None

    # --- completion (rank 0 writes the markers) ---

    def _on_async_done(self, future: Future, path: Path, step: int) -> None:
        try:
            if future.exception() is not None:
                log.error(
                    "async checkpoint failed",
                    extra={"path": str(path), "error": str(future.exception())},
                )
            elif self.env.is_main:
                self._finalize(path, step)
        except Exception:
            log.exception("could not finalise checkpoint", extra={"path": str(path)})
        finally:
            self._finalized.set()

    def _finalize(self, path: Path, step: int) -> None:
        seconds = round(time.perf_counter() - self._write_started, 3)
        meta = {
            "step": step,
            "stage": self.stage,
            "world_size": self.env.world_size,
            "write_seconds": seconds,
            **self.meta,
        }
        storage.mark_complete(path, meta)
        self.metrics.record_checkpoint_complete(self.stage, str(path), step, write_seconds=seconds)
        self._prune()

    def _prune(self) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones and older leftovers."""
        checkpoints = storage.list_checkpoints(self.root, self.stage)
        complete = [s for s, _, ok in checkpoints if ok]
        if not complete:
            return
        keep = set(complete[-self.keep :])
        for step, path, ok in checkpoints:
            if step not in keep and (ok or step < complete[-1]):
                shutil.rmtree(path, ignore_errors=True)

    def _remove_incomplete(self) -> None:
        """At start-up no save is in flight: any incomplete folder is a torn one."""
        for _, path, ok in storage.list_checkpoints(self.root, self.stage):
            if not ok:
                log.info("removing an interrupted checkpoint", extra={"path": str(path)})
                shutil.rmtree(path, ignore_errors=True)


def choose_on_rank0(env: DistEnv, pick: Any) -> Any:
    """Evaluate `pick()` on rank 0 only and return its result on every rank: one decision
    about storage for all, even where listings of shared storage lag between nodes."""
    choice = [pick() if env.is_main else None]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]
