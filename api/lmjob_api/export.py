"""`spec.export`: deployable artifacts (hf, onnx, gguf) of chosen stages, written by the
trainer after the last stage, verified by the runtime that loads each one.

One block for the whole job, not a stage type or a field on each stage (docs/export.md says
why). Each export is also a stage of the job as status.stages, the stage metrics and `lmjob
run`'s summary see it, named `<stage>.<format>` (`int8.gguf`): stage names cannot hold a
dot, so no export name can collide with a stage's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from lmjob_api.base import ApiModel, Rule

ExportFormat = Literal["hf", "onnx", "gguf"]
EXPORT_FORMATS: tuple[str, ...] = ("hf", "onnx", "gguf")
GgufType = Literal["auto", "f32", "f16", "q8_0"]
EXPORT_TYPE = "export"
"""`StageReport.type` of an export."""
_STAGE_REF = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_EXPORT_STAGES = 8
"""With every format, 24 exports: with train and the 16 compression stages their phases
still fit a termination message (lmjob_api.termination.MAX_BYTES)."""


class ExportSpec(ApiModel):
    """Formats to write, for which stages; written under `<storage.path>/exports/`."""

    formats: list[ExportFormat] = Field(
        ...,
        min_length=1,
        max_length=len(EXPORT_FORMATS),
        description="`hf` (a transformers folder: safetensors, config, tokenizer), `onnx` "
        "(onnxruntime, dynamic batch and sequence axes), `gguf` (llama.cpp).",
    )
    stages: list[Annotated[str, Field(min_length=1, max_length=40, pattern=_STAGE_REF)]] | None = (
        Field(
            None,
            min_length=1,
            max_length=MAX_EXPORT_STAGES,
            description="Stages to export: `train` and compression stage names. Default: the "
            "last stage (the last compression stage, else train).",
        )
    )
    gguf_type: GgufType = Field(
        "auto",
        description="GGUF tensor type: `auto` (Q8_0 for an int8 quantize stage, so it deploys "
        "as int8; F32 otherwise), `f32`, `f16` or `q8_0`.",
    )

    rules = (
        Rule(
            cel="self.formats.all(f, self.formats.exists_one(g, g == f))",
            message="export.formats lists a format twice: name each format once",
            check=lambda e: len(set(e.formats)) == len(e.formats),
            field="formats",
        ),
        Rule(
            cel="!has(self.stages) || self.stages.all(s, self.stages.exists_one(t, t == s))",
            message="export.stages lists a stage twice: name each stage once",
            check=lambda e: e.stages is None or len(set(e.stages)) == len(e.stages),
            field="stages",
        ),
    )


def export_name(stage: str, fmt: str) -> str:
    """The export's name as a stage of the job: `int8.gguf`."""
    return f"{stage}.{fmt}"


def export_targets(
    export: ExportSpec | None, compression_stages: list[str]
) -> list[tuple[str, str]]:
    """(stage, format) of every export, stage by stage in the job's order."""
    if export is None:
        return []
    order = ["train", *compression_stages]
    wanted = export.stages if export.stages is not None else order[-1:]
    return [(stage, fmt) for stage in order if stage in wanted for fmt in export.formats]


def stage_order(spec: Any) -> list[str]:
    """`train`, the compression stages, then the exports: every stage of an object holding
    `training`, `compression` and `export` (the job's spec, the trainer's config). Empty for
    a job running its own command."""
    if spec.training is None:
        return []
    stages = [s.name for s in spec.compression.stages] if spec.compression else []
    exports = export_targets(spec.export, stages)
    return ["train", *stages, *(export_name(s, f) for s, f in exports)]


_E = "self.export"
_GUARD = f"!has({_E}) || "


def _stages_exist(spec: Any) -> bool:
    if spec.export is None or spec.export.stages is None:
        return True
    names = {"train", *(s.name for s in (spec.compression.stages if spec.compression else []))}
    return all(s in names for s in spec.export.stages)


def _gguf_expressible(spec: Any) -> bool:
    if spec.export is None or spec.training is None or "gguf" not in spec.export.formats:
        return True
    t = spec.training
    return t.model.architecture == "gpt" and t.data.tokenizer == "bytes"


EXPORT_FIT_RULES: tuple[Rule, ...] = (
    Rule(
        cel=f"{_GUARD}has(self.training)",
        message="spec.export needs spec.training: exports are written by the built-in trainer",
        check=lambda s: s.export is None or s.training is not None,
        field="export",
    ),
    Rule(
        cel=f"{_GUARD}!has({_E}.stages) || {_E}.stages.all(n, n == 'train' || "
        "(has(self.compression) && has(self.compression.stages) && "
        "self.compression.stages.exists(c, c.name == n)))",
        message="export.stages names a stage the job does not have: use train or the name of "
        "a compression stage",
        check=_stages_exist,
        field="export.stages",
    ),
    Rule(
        cel=f"{_GUARD}!has(self.training) || !{_E}.formats.exists(f, f == 'gguf') || "
        "(self.training.model.architecture == 'gpt' && self.training.data.tokenizer == 'bytes')",
        message="export.formats: gguf is written for model.architecture gpt with tokenizer "
        "bytes only; export an hf model or tokenizer as hf and convert that folder with "
        "llama.cpp's convert_hf_to_gguf.py",
        check=_gguf_expressible,
        field="export.formats",
    ),
)
