"""What an export produced (written as `export.json` next to the artifact) and its error type.

No torch import: the CLI names the formats and prints errors without loading torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

from lmjob_api.export import EXPORT_FORMATS, EXPORT_TYPE
from lmjob_api.stage_report import StageReport

RECORD_FILE = "export.json"

FORMATS = EXPORT_FORMATS
GGUF_TYPES = ("f32", "f16", "q8_0")
# What each format needs at run time, beyond torch (the `export` extra installs them all).
FORMAT_MODULES: dict[str, tuple[str, ...]] = {
    "hf": ("safetensors", "transformers"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "gguf": ("gguf",),
}


def missing_modules(fmt: str) -> list[str]:
    """Packages `fmt` needs that this Python cannot import (checked without importing)."""
    return [m for m in FORMAT_MODULES.get(fmt, ()) if importlib.util.find_spec(m) is None]


class ExportError(ValueError):
    """Bad input or a failed verification: the message names what and says what to do."""


@dataclass
class Verification:
    """Logits of the exported artifact, run by its runtime, against lmjob's own model."""

    runtime: str
    max_abs_diff: float
    tolerance: float | None
    """None: reported, not enforced (a lossy encoding such as F16 or Q8_0)."""
    tensors_checked: int = 0
    """GGUF: tensors read back and compared with what was written."""

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.max_abs_diff <= self.tolerance


@dataclass
class ExportResult:
    """One finished export: where, what, how big and how close to the source."""

    format: str
    out: str
    source: str
    stage: str
    bytes: int
    files: list[str]
    verification: Verification
    notes: dict[str, Any] = field(default_factory=dict)
    """Compression facts carried into the artifact: zero fraction, quantization, ranks."""

    seconds: float | None = None
    """Wall time of the export, verification included."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verification"]["passed"] = self.verification.passed
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportResult:
        data = dict(data)
        check = {k: v for k, v in data.pop("verification").items() if k != "passed"}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(verification=Verification(**check), **known)

    def stage_report(self, name: str) -> StageReport:
        """The export as a stage of its job (`int8.gguf`): status.stages, the stage metrics
        and `lmjob run`'s summary show it like the compression stages."""
        v = self.verification
        metrics = {"bytes": float(self.bytes), "maxAbsDiff": v.max_abs_diff}
        if v.tolerance is not None:
            metrics["tolerance"] = v.tolerance
        if self.seconds is not None:
            metrics["wallSeconds"] = self.seconds
        return StageReport(
            stage=name,
            type=EXPORT_TYPE,
            phase="Succeeded",
            checkpoint=self.out,
            metrics=metrics,
            details={
                "format": self.format,
                "stage": self.stage,
                "source": self.source,
                "runtime": v.runtime,
                "files": self.files,
                **({"tensorsChecked": v.tensors_checked} if v.tensors_checked else {}),
            },
        )
