"""The `gguf` format: one file llama.cpp loads as its `gpt2` architecture, written with the
`gguf` library under llama.cpp's tensor names (the library's own GPT-2 name map) and
metadata, in F32, F16 or Q8_0 (the int8 stage's default, so it deploys as int8).

Like llama.cpp's converter, 1-D tensors (norms, biases) stay F32, and the tied head is
written once more as `output.weight`. The check reads the file back with `GGUFReader`:
every tensor equals what was written (F32), its fp16 rounding (F16), or lies within one
Q8_0 step of it; then a GPT built from the read-back tensors is run on the prompt. llama.cpp
itself computes GELU with its tanh approximation, so its logits differ from lmjob's (exact
erf GELU) by more than fp32 rounding; that difference is the runtime's, not the file's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmjob_trainer.export.gpt2_layout import gpt2_tensors, gpt_state_from_gpt2
from lmjob_trainer.export.result import ExportError, Verification
from lmjob_trainer.export.tokenizer_files import BYTE_VOCAB, byte_token_strings
from lmjob_trainer.export.verify import FP32_TOLERANCE, max_abs_diff
from lmjob_trainer.model import GPT

RUNTIME = "gguf-reader"
MODEL_FILE = "model.gguf"
Q8_BLOCK = 32
NO_MERGE = "lmjob:no merges"


def write(model: GPT, folder: Path, tokenizer: str | None, qtype: str, name: str) -> None:
    """Write `folder/model.gguf` for a dense GPT."""
    import gguf

    if not isinstance(model, GPT):
        raise ExportError(
            f"format gguf: a {type(model).__name__} (architecture hf) is not supported: export "
            "it as hf and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    if tokenizer not in (None, "bytes"):
        raise ExportError(
            f"format gguf: tokenizer {tokenizer} is not supported yet (only tokenizer: bytes): "
            "export as hf and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    spec = model.spec
    writer = gguf.GGUFWriter(str(folder / MODEL_FILE), "gpt2")
    writer.add_name(name)
    writer.add_context_length(spec.seq_len)
    writer.add_embedding_length(spec.hidden)
    writer.add_feed_forward_length(4 * spec.hidden)
    writer.add_block_count(spec.layers)
    writer.add_head_count(spec.heads)
    writer.add_layer_norm_eps(model.ln_f.eps)
    writer.add_file_type(_file_type(qtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_byte_vocab(writer, model.vocab_size)
    for gguf_name, array in build_tensors(model, qtype).items():
        data, raw = array
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build_tensors(model: GPT, qtype: str) -> dict[str, tuple[np.ndarray, Any]]:
    """llama.cpp name → (array as stored, its GGML type) for every tensor of the file."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.spec.layers)
    tensors = gpt2_tensors(model)
    tensors["lm_head.weight"] = tensors["wte.weight"]  # llama.cpp's converter writes it too
    out = {}
    for hf_name, t in tensors.items():
        full = hf_name if hf_name == "lm_head.weight" else "transformer." + hf_name
        gguf_name = names.get_name(full, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, f"no llama.cpp name for {full}"
        out[gguf_name] = _encode(t.numpy(), qtype)
    return out


def _encode(array: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    import gguf

    if array.ndim == 1 or qtype == "f32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(array.astype(np.float32), q8), q8
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16


def _file_type(qtype: str) -> int:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[qtype]


def _add_byte_vocab(writer: Any, vocab_size: int) -> None:
    """The byte tokenizer as llama.cpp's `gpt2` BPE with no merges (see tokenizer_files)."""
    import gguf

    tokens = byte_token_strings() + [f"<pad_{i}>" for i in range(BYTE_VOCAB, vocab_size)]
    types = [gguf.TokenType.NORMAL] * BYTE_VOCAB + [gguf.TokenType.UNUSED] * (
        vocab_size - BYTE_VOCAB
    )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # llama.cpp refuses a gpt2 vocabulary without a merges array, and the gguf library drops
    # an empty one: one merge of two multi-character strings, which byte-level BPE can never
    # form (it starts from single characters and has no other merge), keeps the vocabulary
    # merge-free while the file loads.
    writer.add_token_merges([NO_MERGE])


def read_tensors(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """name → (fp32 array in nn.Linear layout, GGML type name) of every tensor in the file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape)]
        out[t.name] = (np.asarray(data, dtype=np.float32).reshape(shape), t.tensor_type.name)
    return out


def verify(
    folder: Path, model: GPT, qtype: str, prompt: torch.Tensor, expected: torch.Tensor
) -> Verification:
    """Every tensor read back equals its source within its type's rounding; then the logits
    of a GPT built from them (enforced for F32, reported for F16 and Q8_0)."""
    written = {n: a for n, (a, _) in build_tensors(model, qtype).items()}
    read = read_tensors(folder / MODEL_FILE)
    sources = {n: t.numpy() for n, t in _gguf_named(model).items()}
    if set(read) != set(sources):
        raise ExportError(f"format gguf: tensors {sorted(set(sources) ^ set(read))} differ")
    for name, (array, kind) in read.items():
        source = sources[name]
        if kind == "Q8_0":
            _check_q8(name, array, source)
        else:
            stored = written[name].astype(np.float32)
            if not np.array_equal(array, stored.reshape(array.shape)):
                raise ExportError(f"format gguf: tensor {name} ({kind}) reads back changed")
    # Logits of the file's own weights; output.weight is the tied head, read as wte.
    by_gguf = {gguf_name: hf for hf, gguf_name in _name_pairs(model).items()}
    hf_state = {
        by_gguf[n]: torch.from_numpy(a.copy()) for n, (a, _) in read.items() if n != "output.weight"
    }
    rebuilt = copy.deepcopy(model)
    rebuilt.load_state_dict(gpt_state_from_gpt2(hf_state, model.spec.heads))
    with torch.no_grad():
        logits, _ = rebuilt.eval()(prompt)
    tolerance = FP32_TOLERANCE if qtype == "f32" else None
    return Verification(RUNTIME, max_abs_diff(logits, expected), tolerance, len(read))


def _check_q8(name: str, array: np.ndarray, source: np.ndarray) -> None:
    """Q8_0 keeps every 32 values as int8 multiples of d ≈ amax/127, d stored in fp16: error at
    most half a step, plus what d's fp16 rounding (2⁻¹¹ relative) adds over 127 steps."""
    blocks = source.reshape(-1, Q8_BLOCK)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 127
    error = np.abs(array.reshape(-1, Q8_BLOCK) - blocks)
    if np.any(error > 0.6 * step + 1e-7):
        raise ExportError(f"format gguf: Q8_0 tensor {name} is off by more than one step")


def _name_pairs(model: GPT) -> dict[str, str]:
    """GPT-2 name (without `transformer.`) → llama.cpp name."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.spec.layers)
    return {
        n: names.get_name("transformer." + n, try_suffixes=(".weight", ".bias"))
        for n in gpt2_tensors(model)
    }


def _gguf_named(model: GPT) -> dict[str, torch.Tensor]:
    tensors = gpt2_tensors(model)
    out = {gguf_name: tensors[hf] for hf, gguf_name in _name_pairs(model).items()}
    out["output.weight"] = tensors["wte.weight"]
    return out
