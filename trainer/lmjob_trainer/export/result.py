"""What an export produced (written as `export.json` next to the artifact) and its error type.

No torch import: the CLI names the formats and prints errors without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FORMATS = ("hf", "onnx", "gguf")
GGUF_TYPES = ("f32", "f16", "q8_0")
RECORD_FILE = "export.json"


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verification"]["passed"] = self.verification.passed
        return data
