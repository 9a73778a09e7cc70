"""spec.export through the real trainer: examples/shakespeare-cpu.yaml's model and its
whole compression chain (prune, lowrank, int8, distilled student), shortened to a few steps,
run under torchrun with every stage exported in every format.

Each artifact is then checked apart from the exporter's own verification: transformers
generates what lmjob generates, onnxruntime computes lmjob's logits at other shapes, and the
GGUF file carries what llama.cpp needs. Restarts skip finished exports and redo a killed
one; the results reach the termination message the operator turns into status.stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lmjob_api.export import EXPORT_FORMATS, export_name
from lmjob_api.stage_report import StageReport
from lmjob_api.termination import decode_error, decode_stages
from lmjob_trainer import storage
from lmjob_trainer.compression import load_stage
from tests.trainer.conftest import greedy, subprocess_env, token_ids, torchrun, write_config

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
onnxruntime = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "shakespeare-cpu.yaml"
TOLERANCE = 1e-4
NEW_TOKENS = 50


def _example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())["spec"]


STAGES = ["train", *(s["name"] for s in _example()["compression"]["stages"])]


def _short_example(text_file: Path, cache: Path) -> dict[str, Any]:
    """The example's model and stages, with steps cut so the chain runs in seconds."""
    spec = _example()
    training = spec["training"]
    training["data"] = {**training["data"], "source": str(text_file), "cacheDir": str(cache)}
    training.update(
        steps=20,
        schedule={"warmupSteps": 2, "decay": "cosine", "minLrRatio": 0.1},
        evaluation={"everySteps": 20, "steps": 1},
        checkpoint={"everySteps": 20, "keep": 1, "async": False},
    )
    stages = spec["compression"]["stages"]
    for stage in stages:
        if "finetuneSteps" in stage:
            stage["finetuneSteps"] = 2
        if stage["type"] == "distill":
            stage["steps"] = 4
    return {
        "training": training,
        "compression": {"stages": stages},
        "export": {"formats": list(EXPORT_FORMATS), "stages": STAGES},
    }


@pytest.fixture(scope="module")
def example_run(
    tmp_path_factory: pytest.TempPathFactory, text_file: Path, data_cache: Path
) -> tuple[Path, Path]:
    """(storage root, termination log) of the shortened example, 2 processes as written."""
    work = tmp_path_factory.mktemp("job-exports")
    config = write_config(work / "config.yaml", **_short_example(text_file, data_cache))
    log = work / "termination-log"
    env = subprocess_env(LMJOB_TERMINATION_LOG=str(log))
    torchrun(config, work / "run", nproc=2, env=env, timeout=600)
    return work / "run", log


def test_every_stage_is_exported_in_every_format_and_reported(
    example_run: tuple[Path, Path],
) -> None:
    root, log = example_run
    stages = decode_stages(log.read_text())
    assert stages is not None
    by_name = {s.name: s for s in stages}
    names = [export_name(s, f) for s in STAGES for f in EXPORT_FORMATS]
    assert sorted(by_name) == sorted([*STAGES, *names])  # the operator orders them
    for name in names:
        status = by_name[name]
        stage, fmt = name.split(".")
        assert status.phase == "Succeeded", name
        assert status.checkpoint == str(storage.export_dir(root, name))
        assert status.metrics["bytes"] > 0
        report = storage.read_report(root, name)
        assert isinstance(report, StageReport) and report.type == "export"
        assert report.details["format"] == fmt and report.details["stage"] == stage
        lossy = fmt == "gguf" and stage == "int8"  # Q8_0: reported, not enforced
        if not lossy:
            assert status.metrics["maxAbsDiff"] <= TOLERANCE, name
            assert report.metrics["tolerance"] == TOLERANCE
    assert not list((root / storage.EXPORTS).glob(".*")), "a write-aside folder was left"
    int8 = json.loads((storage.export_dir(root, "int8.gguf") / "export.json").read_text())
    assert int8["notes"]["gguf_type"] == "q8_0"  # the int8 stage deploys as int8


@pytest.mark.parametrize("stage", STAGES)
def test_transformers_generates_what_lmjob_generates(
    example_run: tuple[Path, Path], stage: str
) -> None:
    root, _ = example_run
    ours = load_stage(root, stage)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        storage.export_dir(root, f"{stage}.hf"), local_files_only=True, dtype=torch.float32
    ).eval()
    prompt = token_ids(2, 48, seed=11)
    with torch.no_grad():
        assert (theirs(input_ids=prompt).logits - ours(prompt)[0]).abs().max() <= TOLERANCE
    start = token_ids(1, 10, seed=12)  # 10 + 50 tokens fit the example's 64-token context
    generated = theirs.generate(
        start,
        attention_mask=torch.ones_like(start),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(generated, greedy(ours, start, NEW_TOKENS))


@pytest.mark.parametrize("stage", STAGES)
def test_onnxruntime_computes_lmjob_logits_at_other_shapes(
    example_run: tuple[Path, Path], stage: str
) -> None:
    root, _ = example_run
    ours = load_stage(root, stage)
    session = onnxruntime.InferenceSession(
        str(storage.export_dir(root, f"{stage}.onnx") / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    for batch, length in ((1, 64), (3, 7)):
        prompt = token_ids(batch, length, seed=batch)
        (logits,) = session.run(None, {"input_ids": prompt.numpy()})
        with torch.no_grad():
            expected = ours(prompt)[0]
        assert (torch.from_numpy(logits) - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("stage", STAGES)
def test_gguf_carries_what_llama_cpp_needs(example_run: tuple[Path, Path], stage: str) -> None:
    root, _ = example_run
    model = json.loads((storage.export_dir(root, f"{stage}.hf") / "config.json").read_text())
    reader = gguf.GGUFReader(str(storage.export_dir(root, f"{stage}.gguf") / "model.gguf"))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields["general.architecture"] == "gpt2"
    assert fields["gpt2.block_count"] == model["n_layer"]
    assert fields["gpt2.embedding_length"] == model["n_embd"]
    assert fields["gpt2.attention.head_count"] == model["n_head"]
    assert fields["gpt2.context_length"] == model["n_positions"] == 64
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"]) == model["vocab_size"]
    # llama.cpp refuses a gpt2 vocabulary without merges ("cannot find tokenizer merges");
    # ours holds one that byte-level BPE can never apply.
    (merge,) = fields["tokenizer.ggml.merges"]
    assert all(len(part) > 1 for part in merge.split(" ", 1))
    types = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert types == ({"Q8_0"} if stage == "int8" else {"F32"})
    # Every block's tensors under llama.cpp's names, and the head written again.
    names = {t.name for t in reader.tensors}
    for block in range(model["n_layer"]):
        assert {f"blk.{block}.attn_qkv.weight", f"blk.{block}.ffn_down.weight"} <= names
    assert {"token_embd.weight", "position_embd.weight", "output.weight"} <= names


def test_a_rerun_skips_finished_exports_and_redoes_an_interrupted_one(
    example_run: tuple[Path, Path], tmp_path: Path, text_file: Path, data_cache: Path
) -> None:
    """A kill between writing aside and the rename leaves a hidden folder and no export;
    the restarted trainer removes the leftover, exports that one again, keeps the rest."""
    root, _ = example_run
    config = write_config(tmp_path / "config.yaml", **_short_example(text_file, data_cache))
    kept = storage.export_dir(root, "student.hf") / "model.safetensors"
    before = kept.stat().st_mtime_ns
    victim = storage.export_dir(root, "lowrank.gguf")
    leftover = root / storage.EXPORTS / ".lowrank.gguf.tmp-4242"
    victim.rename(leftover)
    log = tmp_path / "termination-log"
    torchrun(config, root, nproc=2, env=subprocess_env(LMJOB_TERMINATION_LOG=str(log)))
    assert (victim / "model.gguf").is_file() and not leftover.exists()
    assert kept.stat().st_mtime_ns == before
    stages = decode_stages(log.read_text())
    assert stages is not None and all(s.phase == "Succeeded" for s in stages)
    assert decode_error(log.read_text()) is None
