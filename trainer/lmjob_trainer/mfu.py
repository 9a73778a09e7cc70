"""Model FLOPs utilisation: achieved model FLOP/s over the accelerator's dense peak.

FLOPs per token follow PaLM (appendix B): 6 per matmul parameter for forward + backward,
plus 12·layers·hidden·seqLen for attention scores. Activation recomputation is not
counted (it is not *model* FLOPs). Reported only on CUDA: a CPU has no meaningful peak.
"""

from __future__ import annotations

import torch
from torch import nn

from lmjob_api.training import ModelSpec, Precision
from lmjob_trainer.model import GPT

# Dense (non-sparse) peak FLOP/s per GPU: (16-bit tensor cores, TF32 tensor cores), from the
# vendors' datasheets. Matched against torch.cuda.get_device_name(), most specific first.
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 494e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100 NVL", 835e12, 418e12),
    ("H100", 989e12, 494e12),  # SXM
    ("GH200", 989e12, 494e12),
    ("B200", 2250e12, 1100e12),
    ("A100", 312e12, 156e12),
    ("A10G", 70e12, 35e12),
    ("A10", 125e12, 62.5e12),
    ("L40S", 362e12, 183e12),
    ("L4", 121e12, 60e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("V100", 125e12, 15.7e12),  # no TF32: fp32 CUDA-core peak
    ("T4", 65e12, 8.1e12),
)


def flops_per_token(model: nn.Module, spec: ModelSpec) -> float:
    """Training FLOPs per token of one forward+backward pass."""
    if isinstance(model, GPT):
        # The model's own shape (a distillation student differs from training.model).
        layers, hidden, seq_len = len(model.blocks), model.spec.hidden, model.seq_len
        # qkv 3h², proj h², fc 4h², proj 4h² per block, plus the output head v·h.
        matmul_params = layers * 12 * hidden * hidden + model.vocab_size * hidden
    else:
        config = getattr(getattr(model, "model", model), "config", None)
        layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        seq_len = spec.seq_len
        matmul_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    return 6.0 * matmul_params + 12.0 * layers * hidden * seq_len


def peak_flops(device: torch.device, precision: Precision) -> float | None:
    """The device's dense peak for the compute dtype, or None when unknown or not a GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, half, tf32 in PEAK_FLOPS:
        if pattern in name:
            return half if precision in ("bf16", "fp16") else tf32
    return None


def mfu(
    tokens_per_second_per_device: float, flops_token: float, peak: float | None
) -> float | None:
    """Fraction of peak achieved, or None off-GPU."""
    if peak is None:
        return None
    return tokens_per_second_per_device * flops_token / peak
