"""The `onnx` format: `torch.onnx.export` (the torch.export-based exporter) of the dense
model's forward, input `input_ids` (batch, sequence) → output `logits`, with dynamic batch
and sequence axes (sequence up to the model's context length); checked with onnxruntime.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lmjob_trainer.export.result import Verification
from lmjob_trainer.export.verify import FP32_TOLERANCE, max_abs_diff

RUNTIME = "onnxruntime"
MODEL_FILE = "model.onnx"


class _LogitsOnly(nn.Module):
    """forward(idx) → logits: the (logits, loss) pair of lmjob's models is not exportable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]


def write(model: nn.Module, folder: Path, prompt: torch.Tensor, seq_len: int) -> None:
    """Export `model` into `folder/model.onnx` (weights beside it when over 2 GB)."""
    from torch.export import Dim

    # The exporter logs its progress at INFO and prints emoji banners; keep the CLI quiet.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    dims = {"input_ids": {0: Dim("batch", max=4096), 1: Dim("sequence", max=seq_len)}}
    with torch.no_grad():
        program = torch.onnx.export(
            _LogitsOnly(model).eval(),
            (prompt,),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes=dims,
            dynamo=True,
            verbose=False,
        )
    program.save(str(folder / MODEL_FILE))


def verify(folder: Path, prompt: torch.Tensor, expected: torch.Tensor) -> Verification:
    """Run the file with onnxruntime (CPU) and compare its logits."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(folder / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"input_ids": prompt.numpy()})
    return Verification(RUNTIME, max_abs_diff(torch.from_numpy(logits), expected), FP32_TOLERANCE)
