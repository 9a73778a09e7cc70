"""Process-group setup from the torchrun environment; one plain process works the same way.

Under torchrun the usual variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) are set and the
process joins the job's group. Without them the process forms a group of one on an
in-memory store, so FSDP, device meshes and DCP run unchanged on a laptop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from lmjob_api.training import Strategy

log = logging.getLogger(__name__)

# Long enough for a rank-0 checkpoint save or data tokenisation while others wait in a
# barrier; a dead peer is noticed sooner by torchrun, which tears the whole group down.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    restart_count: int

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one process that logs, exports job metrics and writes reports."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Local rank 0: the process of a pod that serves its metrics endpoint."""
        return self.local_rank == 0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def init_distributed() -> DistEnv:
    """Join the job's process group (or form a group of one) and pick this process's device."""
    under_launcher = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", 1)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        # A CPU backend beside NCCL: DCP's async save runs its collectives on CPU tensors.
        backend = "cpu:gloo,cuda:nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict = {"backend": backend, "timeout": COLLECTIVE_TIMEOUT}
        if device.type == "cuda":
            kwargs["device_id"] = device
        if under_launcher:
            dist.init_process_group(**kwargs)
        else:
            dist.init_process_group(**kwargs, store=dist.HashStore(), rank=0, world_size=1)
    env = DistEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        local_world_size=local_world_size,
        device=device,
        restart_count=_env_int("TORCHELASTIC_RESTART_COUNT", 0),
    )
    log.debug("process group ready", extra={"world_size": world_size, "device": str(device)})
    return env


def build_mesh(env: DistEnv, strategy: Strategy, tensor_parallel: int) -> DeviceMesh:
    """The device mesh of a strategy: 1-D ("dp",) or 2-D ("dp", "tp") for fsdp+tp.

    TP is the inner (fastest-varying) dimension so that a tensor-parallel group is made of
    consecutive ranks, which torchrun places in one pod (fast intra-node links).
    """
    tp = tensor_parallel if strategy == "fsdp+tp" else 1
    if env.world_size % tp:
        raise ValueError(
            f"training.parallelism.tensorParallel ({tp}) must divide the world size "
            f"({env.world_size} processes)"
        )
    if strategy == "fsdp+tp":
        return init_device_mesh(
            env.device.type, (env.world_size // tp, tp), mesh_dim_names=("dp", "tp")
        )
    return init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("dp",))


def data_parallel_coords(mesh: DeviceMesh) -> tuple[int, int]:
    """(dp rank, dp size): ranks of one tensor-parallel group read the same data."""
    dp = mesh["dp"]
    return dp.get_local_rank(), dp.size()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks in one collective (a no-op for a group of one)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def close_distributed() -> None:
    """Leave the process group; safe to call when it was never joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_floats(values: list[float], device: torch.device) -> torch.Tensor:
    """Every rank's few floats in one collective: a (world size, len(values)) CPU tensor."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    world = dist.get_world_size()
    if world == 1:
        return t.unsqueeze(0).cpu()
    # Flat: gloo's all-gather checks the output's shape as world × the input's.
    out = torch.empty(world * len(values), dtype=torch.float64, device=device)
    dist.all_gather_into_tensor(out, t)
    return out.view(world, len(values)).cpu()
