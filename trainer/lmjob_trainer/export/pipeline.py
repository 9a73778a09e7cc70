"""One export from start to finish: load → dense form → write aside → verify → rename.

The artifact is written into a hidden sibling folder and renamed to `--out` only after its
runtime loaded it back within tolerance, so a folder at `--out` is always a whole, verified
export; a failed one leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from lmjob_trainer.compression.artifact import folder_bytes
from lmjob_trainer.export.dense import build_dense
from lmjob_trainer.export.result import (
    FORMATS,
    GGUF_TYPES,
    RECORD_FILE,
    ExportError,
    ExportResult,
    Verification,
)
from lmjob_trainer.export.source import ExportSource, load_source
from lmjob_trainer.export.verify import build_prompt, reference_logits
from lmjob_trainer.hf_model import HFCausalLM
from lmjob_trainer.model import GPT
from lmjob_trainer.storage import write_json_atomic

log = logging.getLogger(__name__)


def export_checkpoint(
    path: str | Path,
    fmt: str,
    out: str | Path,
    *,
    stage: str | None = None,
    gguf_type: str | None = None,
) -> ExportResult:
    """Export the model at `path` (run folder, stage folder or checkpoint) to `out` in `fmt`."""
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown format; choose one of {', '.join(FORMATS)}")
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        raise ExportError(f"--gguf-type {gguf_type}: choose one of {', '.join(GGUF_TYPES)}")
    out = Path(out)
    if out.exists():
        raise ExportError(f"--out {out}: already exists; remove it or choose another folder")
    source = load_source(Path(path), stage)
    dense, notes = build_dense(source.model)
    seq_len, vocab = _shape(dense)
    prompt = build_prompt(seq_len, vocab)
    expected = reference_logits(source.model, prompt)
    record = _record(source, notes)
    qtype = gguf_type or _default_gguf_type(source)
    if fmt == "gguf":
        record["gguf_type"] = qtype
    if "quantization" in record:
        record["quantization"]["stored_as"] = (
            "Q8_0 (requantized in blocks of 32)"
            if fmt == "gguf" and qtype == "q8_0"
            else f"{'F16' if fmt == 'gguf' and qtype == 'f16' else 'fp32'} (dequantized)"
        )
    if _quantizes_activations(source):
        record["quantization"]["activations"] = "int8 per token in lmjob, float here"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        verification = _write_and_verify(fmt, dense, tmp, source, record, prompt, expected, qtype)
        if _quantizes_activations(source):
            # lmjob's model quantizes activations at run time; no dense format does, so the
            # difference is the method's and is reported, not enforced.
            verification.tolerance = None
        if not verification.passed:
            raise ExportError(
                f"format {fmt}: {verification.runtime} logits differ from lmjob's by "
                f"{verification.max_abs_diff:.3g} (tolerance {verification.tolerance:g}); "
                "nothing was written"
            )
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        result = ExportResult(
            format=fmt,
            out=str(out),
            source=str(source.path),
            stage=source.stage,
            bytes=folder_bytes(tmp),
            files=files,
            verification=verification,
            notes=record,
            seconds=round(time.perf_counter() - started, 3),
        )
        write_json_atomic(tmp / RECORD_FILE, result.to_json())
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "exported",
        extra={
            "format": fmt,
            "out": str(out),
            "stage": source.stage,
            "bytes": result.bytes,
            "max_abs_diff": result.verification.max_abs_diff,
            "runtime": result.verification.runtime,
        },
    )
    return result


def _write_and_verify(
    fmt: str,
    dense: nn.Module,
    folder: Path,
    source: ExportSource,
    record: dict,
    prompt: torch.Tensor,
    expected: torch.Tensor,
    qtype: str,
) -> Verification:
    """Write `fmt` into `folder`, then load it back with its runtime and compare."""
    if fmt == "hf":
        import lmjob_trainer.export.hf as hf

        hf.write(dense, folder, source.tokenizer, record)
        return hf.verify(folder, prompt, expected)
    if fmt == "onnx":
        import lmjob_trainer.export.onnx as onnx

        onnx.write(dense, folder, prompt, _shape(dense)[0])
        return onnx.verify(folder, prompt, expected)
    import lmjob_trainer.export.gguf as gguf

    gguf.write(dense, folder, source.tokenizer, qtype, f"lmjob-{source.stage}")
    return gguf.verify(folder, dense, qtype, prompt, expected)


def _shape(model: nn.Module) -> tuple[int, int]:
    """(context length, vocabulary size) of a dense model."""
    if isinstance(model, GPT | HFCausalLM):
        return model.seq_len, model.vocab_size
    raise ExportError(f"cannot export a {type(model).__name__}: not an lmjob model")


def _record(source: ExportSource, notes: dict) -> dict:
    """What config.json (hf) and export.json say about the export's origin."""
    record = {"stage": source.stage, "source": str(source.path), "tokenizer": source.tokenizer}
    if source.arch is not None and source.arch.quantization:
        record["quantization"] = {"method": source.arch.quantization}
    return record | notes


def _default_gguf_type(source: ExportSource) -> str:
    """Q8_0 for an int8-quantized stage (it deploys as int8), else lossless F32."""
    quant = source.arch.quantization if source.arch is not None else None
    return "q8_0" if quant and quant.startswith("int8") else "f32"


def _quantizes_activations(source: ExportSource) -> bool:
    return source.arch is not None and source.arch.quantization == "int8-dynamic"
