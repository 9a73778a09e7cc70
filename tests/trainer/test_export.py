"""`lmjob export`: a real trained and compressed run goes out as hf, onnx and gguf, and each
artifact, loaded by its own runtime, computes what lmjob's model computes.

The checks here are independent of the exporter's built-in verification: another prompt
(another shape, so onnx's dynamic axes are exercised), greedy generation through
transformers' own `generate`, and GGUF tensors compared with the transformers-verified
safetensors rather than with the exporter's own layout code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmjob_trainer.compression import load_stage
from lmjob_trainer.export import ExportError, export_checkpoint
from tests.trainer.conftest import greedy, tiny_training, token_ids, torchrun, write_config

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
onnxruntime = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

STAGES = ["train", "prune", "lowrank", "int8"]
TOLERANCE = 1e-4
NEW_TOKENS = 50


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, text_file: Path, data_cache: Path) -> Path:
    """One process, 4 training steps, then head pruning, low-rank and int8 in a chain (no
    fine-tuning): the int8 stage holds all three transforms at once."""
    work = tmp_path_factory.mktemp("export-run")
    training = tiny_training(
        text_file,
        data_cache,
        model={"layers": 2, "heads": 2, "hidden": 32, "seqLen": 64},
        steps=4,
        evaluation={"everySteps": 4, "steps": 1},
        checkpoint={"everySteps": 4, "keep": 1},
    )
    stages = [
        {
            "name": "prune",
            "type": "prune",
            "sparsity": 0.5,
            "structure": "head",
            "finetuneSteps": 0,
        },
        {"name": "lowrank", "type": "lowrank", "rankRatio": 0.5, "finetuneSteps": 0},
        {"name": "int8", "type": "quantize", "method": "int8-weight-only"},
    ]
    config = write_config(work / "config.yaml", training, compression={"stages": stages})
    torchrun(config, work / "run", nproc=1)
    return work / "run"


@pytest.mark.parametrize("stage", STAGES)
def test_hf_folder_loads_in_transformers_with_lmjob_logits(
    run_dir: Path, tmp_path: Path, stage: str
) -> None:
    result = export_checkpoint(run_dir, "hf", tmp_path / "hf", stage=stage)
    assert result.verification.max_abs_diff <= TOLERANCE
    ours = load_stage(run_dir, stage)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", local_files_only=True, dtype=torch.float32
    ).eval()
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    prompt = token_ids(3, 40, seed=1)
    with torch.no_grad():
        diff = (theirs(input_ids=prompt).logits - ours(prompt)[0]).abs().max().item()
    assert diff <= TOLERANCE

    start = token_ids(1, 8, seed=2)  # 8 + 50 tokens fit the 64-token context
    generated = theirs.generate(
        start,
        attention_mask=torch.ones_like(start),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(generated, greedy(ours, start, NEW_TOKENS))

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "ROMEO:\nBut soft, what light — é!"
    assert tokenizer.encode(text) == list(text.encode())
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["lmjob"]["stage"] == stage
    if stage == "int8":
        assert config["lmjob"]["quantization"]["method"] == "int8-weight-only"
    if stage != "train":  # half the heads pruned, padded back with zero heads
        assert config["lmjob"]["zero_fraction"] > 0.1


# int8 only: the slowest export (torch.export + onnxscript) on the model holding every
# transform at once (pruned heads, factors, quantized weights).
@pytest.mark.parametrize("stage", ["int8"])
def test_onnx_runs_in_onnxruntime_at_other_shapes(
    run_dir: Path, tmp_path: Path, stage: str
) -> None:
    result = export_checkpoint(run_dir, "onnx", tmp_path / "onnx", stage=stage)
    assert result.verification.runtime == "onnxruntime"
    session = onnxruntime.InferenceSession(
        str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    ours = load_stage(run_dir, stage)
    for batch, length in ((1, 5), (3, 64)):
        prompt = token_ids(batch, length, seed=batch)
        (logits,) = session.run(["logits"], {"input_ids": prompt.numpy()})
        with torch.no_grad():
            expected = ours(prompt)[0].numpy()
        assert np.abs(logits - expected).max() <= TOLERANCE


def _hf_tensors_in_linear_layout(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(folder / "model.safetensors")
    conv1d = ("c_attn.weight", "c_proj.weight", "c_fc.weight")
    return {k: v.T if k.endswith(conv1d) else v for k, v in tensors.items()}


@pytest.mark.parametrize(
    ("stage", "gguf_type", "expected_type"),
    [("train", None, "F32"), ("lowrank", "f16", "F16"), ("int8", None, "Q8_0")],
)
def test_gguf_holds_the_verified_tensors_under_llama_cpp_names(
    run_dir: Path, tmp_path: Path, stage: str, gguf_type: str | None, expected_type: str
) -> None:
    export_checkpoint(run_dir, "hf", tmp_path / "hf", stage=stage)
    export_checkpoint(run_dir, "gguf", tmp_path / "gguf", stage=stage, gguf_type=gguf_type)
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf"))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields["general.architecture"] == "gpt2"
    assert fields["gpt2.block_count"] == 2
    assert fields["gpt2.embedding_length"] == 32
    assert fields["gpt2.context_length"] == 64
    assert fields["gpt2.attention.head_count"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2"

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, 2)
    hf = _hf_tensors_in_linear_layout(tmp_path / "hf")
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == hf["transformer.wte.weight"].shape[0]  # one per embedding row
    assert tokens[ord("A")] == "A" and tokens[ord(" ")] == "Ġ"  # GPT-2's byte table
    hf["lm_head.weight"] = hf["transformer.wte.weight"]
    read = {t.name: t for t in reader.tensors}
    assert len(read) == len(hf)
    for hf_name, source in hf.items():
        tensor = read[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))]
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(source.shape)
        if source.ndim == 1 or expected_type == "F32":
            assert tensor.tensor_type.name == "F32"
            assert np.array_equal(data, source), hf_name
        elif expected_type == "F16":
            assert np.array_equal(data, source.astype(np.float16).astype(np.float32)), hf_name
        else:
            assert tensor.tensor_type.name == "Q8_0"
            step = np.abs(source.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert (np.abs(data - source).reshape(-1, 32) <= 0.6 * step + 1e-7).all(), hf_name


def _cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from lmjob_cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", *args])
    return code, err.getvalue()


BAD_INPUTS = [
    ("unknown-format", ["{run}", "--format", "tflite"], "--format tflite: unknown format"),
    ("no-such-path", ["{tmp}/nowhere", "--format", "hf"], "no such file or directory"),
    ("unknown-stage", ["{run}", "--stage", "nope", "--format", "hf"], "stage nope has no output"),
    ("incomplete", ["{tmp}/partial", "--format", "hf"], "no complete checkpoint"),
    ("out-exists", ["{run}", "--format", "hf", "--out-exists"], "already exists"),
    ("gguf-type", ["{run}", "--format", "gguf", "--gguf-type", "q2"], "--gguf-type q2"),
]


@pytest.mark.parametrize(
    ("args", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_leaves_nothing(
    run_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    step = next((run_dir / "train").glob("step-*"))
    partial = tmp_path / "partial" / "train" / step.name
    partial.mkdir(parents=True)
    for f in step.iterdir():
        if f.name != "COMPLETE":
            (partial / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    out_exists = "--out-exists" in args
    if out_exists:
        args = [a for a in args if a != "--out-exists"]
        out.mkdir()
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in args] + ["--out", str(out)]
    code, stderr = _cli(*argv)
    assert code == 1
    assert stderr.startswith("lmjob export: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())
    assert out.exists() == out_exists  # nothing written, nothing removed


def test_an_export_outside_tolerance_fails_with_the_numbers_and_leaves_nothing(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Low-rank factors multiplied out differ from the factored model by fp32 rounding, so
    a tolerance of zero must fail — with the difference in the message."""
    from lmjob_trainer.export import gguf as gguf_format

    monkeypatch.setattr(gguf_format, "FP32_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match=r"differ from lmjob's by \d.*tolerance 0"):
        export_checkpoint(run_dir, "gguf", tmp_path / "out", stage="lowrank")
    assert list(tmp_path.iterdir()) == []


def test_a_hugging_face_model_goes_out_through_its_own_save_pretrained(
    tmp_path: Path, text_file: Path, data_cache: Path
) -> None:
    """`architecture: hf` (here a Llama, which no GPT-2 mapping could express) trains two
    steps, then exports to a folder transformers loads with lmjob's logits; gguf refuses it
    with a message that names the way out."""
    import subprocess
    import sys

    from tests.trainer.conftest import subprocess_env

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama")
    training = tiny_training(
        text_file,
        data_cache,
        model={"architecture": "hf", "path": str(tmp_path / "llama"), "seqLen": 32},
        steps=2,
        evaluation={"everySteps": 2, "steps": 1},
        checkpoint={"everySteps": 2, "keep": 1},
    )
    config_path = write_config(tmp_path / "c.yaml", training)
    cmd = [sys.executable, "-m", "lmjob_trainer", "--config", str(config_path)]
    proc = subprocess.run(
        [*cmd, "--checkpoint-dir", str(tmp_path / "run")],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = export_checkpoint(tmp_path / "run", "hf", tmp_path / "hf")
    assert result.verification.max_abs_diff <= TOLERANCE
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", local_files_only=True, dtype=torch.float32
    ).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    ours = load_stage(tmp_path / "run", "train")
    prompt = token_ids(2, 32, seed=3)
    with torch.no_grad():
        assert (theirs(input_ids=prompt).logits - ours(prompt)[0]).abs().max() <= TOLERANCE
    # Trained: the export holds the checkpoint's weights, not the untouched starting model.
    start = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    with torch.no_grad():
        assert (start(input_ids=prompt).logits - ours(prompt)[0]).abs().max() > 1e-3

    code, stderr = _cli(str(tmp_path / "run"), "--format", "gguf", "--out", str(tmp_path / "g"))
    assert code == 1 and "convert_hf_to_gguf" in stderr and "Traceback" not in stderr


def test_int8_dynamic_reports_its_activation_quantization_instead_of_failing(
    run_dir: Path, tmp_path: Path
) -> None:
    """lmjob's int8-dynamic model quantizes activations at run time, which no dense format
    does: the export goes out with the difference reported and the method recorded."""
    from lmjob_trainer.compression.artifact import Architecture, write_output
    from lmjob_trainer.compression.quantize import apply_quantization

    model = load_stage(run_dir, "train")
    apply_quantization(model, "int8-dynamic")
    spec = json.loads((run_dir / "prune" / "final" / "stage.json").read_text())
    arch = Architecture(
        spec["architecture"]["model"], model.vocab_size, quantization="int8-dynamic"
    )
    write_output(tmp_path / "dyn" / "final", model.state_dict(), arch, sparse=False)
    result = export_checkpoint(tmp_path / "dyn" / "final", "hf", tmp_path / "hf")
    assert result.verification.tolerance is None
    assert result.verification.max_abs_diff > 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["lmjob"]["quantization"]["method"] == "int8-dynamic"
    assert "activations" in config["lmjob"]["quantization"]
