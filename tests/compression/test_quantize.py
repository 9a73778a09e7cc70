"""torchao quantization: close to fp32, ≥3.5× smaller Linear weights, clear error for int4 on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import eval_loss

from lmjob_trainer.compression.layers import linear_weight_bytes
from lmjob_trainer.compression.quantize import apply_quantization, check_quantize_supported


@pytest.mark.parametrize("method", ["int8-weight-only", "int8-dynamic"])
def test_int8_stays_close_to_fp32(trained, corpus, method: str) -> None:
    x = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        ref = trained(x)[0]
    loss_fp32 = eval_loss(trained, corpus)
    bytes_fp32 = linear_weight_bytes(trained)
    names = apply_quantization(trained, method)
    assert len(names) == 8
    assert type(trained.blocks[0].mlp.fc.weight).__name__ != "Parameter"
    with torch.no_grad():
        out = trained(x)[0]
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert eval_loss(trained, corpus) <= loss_fp32 * 1.01
    # int8 data plus one fp32 scale per row: 4 / (1 + 4 / in_features) ≈ 3.8× at width 64.
    assert bytes_fp32 / linear_weight_bytes(trained) >= 3.5


def test_int4_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="int4-weight-only needs a CUDA GPU"):
        check_quantize_supported("int4-weight-only", "cpu")
    check_quantize_supported("int4-weight-only", "cuda")  # allowed where the kernel exists
    check_quantize_supported("int8-dynamic", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="int4 weight-only needs CUDA")
def test_int4_on_cuda(trained) -> None:
    model = trained.cuda()
    apply_quantization(model, "int4-weight-only")
    x = torch.randint(0, 256, (2, 64), device="cuda")
    assert torch.isfinite(model(x)[0].float()).all()
