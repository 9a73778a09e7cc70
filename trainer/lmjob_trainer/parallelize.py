"""Spread a model over the job's processes: one `parallelize()` applying techniques in order.

Order (as torchtitan, for the same reasons):
1. tensor parallel — rewrites parameters into DTensors on the "tp" mesh; everything after
   must see the final parameter objects;
2. activation checkpointing — wraps blocks, so it sees the TP-rewritten modules;
3. compile — traces blocks with TP and checkpointing already inside the graph;
4. data parallel (FSDP2 `fully_shard` over "dp", or DDP) — last, because FSDP shards
   whatever parameters exist at that point (including TP's DTensors, which makes 2-D).

A model built on the meta device (no memory) is sharded first and materialised after:
each rank allocates only its shards, and the initial weights come from rank 0's one full
copy (`init_state`), broadcast shard by shard. That is what lets a model larger than one
process's memory start at all; rank 0 alone needs the full copy.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)
from torch.nn.parallel import DistributedDataParallel

from lmjob_api.training import Precision, TrainingSpec
from lmjob_trainer.hf_model import HFCausalLM
from lmjob_trainer.model import GPT

log = logging.getLogger(__name__)

DTYPES: dict[Precision, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class ReplicateParallel(ParallelStyle):
    """Parameters replicated over the TP mesh; plain tensors in and out.

    For the small modules between the sharded matmuls (layer norms, positions). Making
    their parameters Replicate DTensors keeps every parameter on the same mesh, which FSDP's
    2-D sharding and gradient-norm clipping need.
    """

    @staticmethod
    def _replicate_params(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for p_name, param in list(module.named_parameters(recurse=False)):
            dparam = nn.Parameter(DTensor.from_local(param, mesh, [Replicate()], run_check=False))
            module.register_parameter(p_name, dparam)

    @staticmethod
    def _input_fn(module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
        return tuple(
            DTensor.from_local(t, mesh, [Replicate()], run_check=False)
            if isinstance(t, torch.Tensor) and not isinstance(t, DTensor)
            else t
            for t in inputs
        )

    @staticmethod
    def _output_fn(module: nn.Module, output: DTensor, mesh: DeviceMesh) -> torch.Tensor:
        return output.to_local()

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(
            module, device_mesh, self._replicate_params, self._input_fn, self._output_fn
        )


def apply_tensor_parallel(model: GPT, tp_mesh: DeviceMesh) -> None:
    """Megatron-style TP: column-parallel in-projections, row-parallel out-projections.

    The residual stream stays replicated (no sequence parallelism): simpler, and fine at
    the TP sizes that fit in one pod. Logits are gathered to full width so the loss is the
    plain one; `loss_parallel` would save that gather for very large vocabularies.
    """
    if not isinstance(model, GPT):
        raise ValueError(
            "training.parallelism.strategy fsdp+tp supports model.architecture gpt only"
        )
    # The head's output goes to_local() at the root's boundary; FSDP warns about returning
    # a view, which is harmless here (nothing writes into the logits in place).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    tied = model.head.weight is model.tok_emb.weight
    parallelize_module(
        model,
        tp_mesh,
        {
            # Vocab-parallel embedding: rows (token ids) split over TP ranks.
            "tok_emb": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
            "pos_emb": ReplicateParallel(),
            "ln_f": ReplicateParallel(),
            "head": ColwiseParallel(output_layouts=Replicate()),
        },
    )
    if tied:
        # Both styles shard the [vocab, hidden] matrix as Shard(0): re-tie to one parameter.
        model.head.weight = model.tok_emb.weight
    for block in model.blocks:
        # A contiguous slice of qkv's rows is whole heads (see model.py), so plain
        # column sharding gives each rank its own heads with their q, k and v.
        parallelize_module(
            block,
            tp_mesh,
            {
                "ln1": ReplicateParallel(),
                "attn.qkv": ColwiseParallel(),
                "attn.proj": RowwiseParallel(),
                "ln2": ReplicateParallel(),
                "mlp.fc": ColwiseParallel(),
                "mlp.proj": RowwiseParallel(),
            },
        )


def transformer_blocks(model: nn.Module) -> nn.ModuleList | list[nn.Module]:
    """The repeated blocks: units of activation checkpointing, compile and FSDP."""
    if isinstance(model, GPT):
        return model.blocks
    layers = getattr(model, "decoder_layers", None)
    return layers() if callable(layers) else []


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (the wrapper's name is stripped from
    state-dict keys by DCP's get_state_dict, so checkpoints stay interchangeable)."""
    if isinstance(model, HFCausalLM):
        # Hugging Face models carry their own switch; non-reentrant works with FSDP2.
        model.model.gradient_checkpointing_enable({"use_reentrant": False})
        return
    blocks = transformer_blocks(model)
    if isinstance(blocks, nn.ModuleList):
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)


def apply_compile(model: nn.Module) -> None:
    """Compile block by block: repeated blocks hit the same compiled code, and graph breaks
    stay local. In place (`Module.compile`), so parameter names do not change."""
    for block in transformer_blocks(model):
        block.compile()


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, precision: Precision) -> None:
    """FSDP2: each block is its own unit (all-gathered just in time), then the root."""
    dtype = DTYPES[precision]
    mp = MixedPrecisionPolicy(
        param_dtype=dtype if dtype != torch.float32 else None,
        # Gradients are reduced in fp32 whatever the compute dtype: sums of many bf16
        # values lose precision.
        reduce_dtype=torch.float32,
    )
    shard = partial(fully_shard, mesh=dp_mesh, mp_policy=mp)
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them.
        shard(block, reshard_after_forward=i < len(blocks) - 1)
    shard(model)


def on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def parallelize(
    model: nn.Module,
    *,
    mesh: DeviceMesh,
    config: TrainingSpec,
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Apply the configured parallelism to a freshly built CPU model; returns what to train.

    DDP returns a wrapper (`.module` is the model); FSDP and TP change the model in place.
    A model on the meta device (FSDP strategies only) is materialised after sharding with
    the weights of `init_state`: the full state dict on global rank 0, ignored elsewhere.
    """
    par = config.parallelism
    strategy = par.strategy
    meta = on_meta(model)
    if meta and strategy == "ddp":
        raise ValueError("a meta-device model needs an FSDP strategy (DDP replicates it whole)")
    # 1. tensor parallel
    if strategy == "fsdp+tp" and mesh["tp"].size() > 1:
        assert isinstance(model, GPT)
        if not meta:
            model.to(device)
        apply_tensor_parallel(model, mesh["tp"])
    # 2. activation checkpointing
    if par.activation_checkpointing:
        apply_activation_checkpointing(model)
    # 3. compile (CPU compile is slow to warm up and rarely pays off for these sizes)
    if par.compile:
        if device.type == "cuda":
            apply_compile(model)
        else:
            log.info("parallelism.compile is ignored on CPU")
    # 4. data parallel
    if strategy == "ddp":
        model.to(device)
        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            process_group=mesh["dp"].get_group(),
            gradient_as_bucket_view=True,
        )
    apply_fsdp(model, mesh["dp"], config.precision)
    if meta:
        materialize(model, device, init_state)
    else:
        model.to(device)
    return model


def materialize(
    model: nn.Module, device: torch.device, init_state: dict[str, torch.Tensor] | None
) -> None:
    """Allocate a sharded meta model's local shards on `device` and fill them from rank 0's
    full state dict (a collective). Every rank calls it. `init_state` is consumed (emptied),
    so rank 0's full copy is freed as soon as the shards hold it."""
    model.to_empty(device=device)
    log.info("sharded model materialised from the meta device", extra={"device": str(device)})
    set_model_state_dict(
        model,
        init_state or {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    if init_state is not None:
        init_state.clear()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP and TP models are their own module)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: nn.Module, enabled: bool) -> AbstractContextManager:
    """Context for one micro-batch's backward: reduce gradients only when `enabled` (the last
    micro-batch of an accumulation), so accumulation costs one reduction per step."""
    if isinstance(model, DistributedDataParallel):
        return nullcontext() if enabled else model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    return nullcontext()
