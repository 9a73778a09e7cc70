"""Export a checkpoint or stage output to formats serving stacks load: Hugging Face folders
(safetensors), ONNX and GGUF, each verified by loading it back with its own runtime.

    from lmjob_trainer.export import export_checkpoint
    result = export_checkpoint("runs/shakespeare-cpu", "hf", "out/hf", stage="int8")

One module per format (`hf`, `onnx`, `gguf`), plus where models come from (`source`), how a
compressed model becomes a dense one (`dense`) and the comparison of logits (`verify`). The
format libraries are imported only by the module that needs them; the operator never
imports this package.
"""

from __future__ import annotations

from typing import Any

from lmjob_trainer.export.result import FORMATS, ExportError, ExportResult

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "export_checkpoint":
        from lmjob_trainer.export.pipeline import export_checkpoint

        return export_checkpoint
    raise AttributeError(name)
