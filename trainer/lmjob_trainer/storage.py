"""The storage layout under `$LMJOB_CHECKPOINT_DIR` (docs/contracts.md): its paths, and the
small files (reports, history, markers) read and written there.

```
<root>/<stage>/step-000001200/   one DCP checkpoint; complete once COMPLETE exists
<root>/<stage>/report.json       the stage's report when it finished
<root>/<stage>/history.jsonl     one JSON line per optimiser step (and evaluation)
<root>/<stage>/final/            a compression stage's output
<root>/data-cache/               tokenised shards
<root>/exports/<stage>.<format>/ one verified export (spec.export); its export.json is its report
```
No torch import: `lmjob run` reads reports and checkpoints with this module alone.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lmjob_api.stage_report import StageReport
from lmjob_trainer.export.result import RECORD_FILE as EXPORT_RECORD
from lmjob_trainer.export.result import ExportResult

TRAIN_STAGE = "train"
# A compression stage's output folder (`<stage>/final/`, docs/contracts.md).
FINAL = "final"
COMPLETE = "COMPLETE"
META = "meta.json"
REPORT = "report.json"
HISTORY = "history.jsonl"
DATA_CACHE = "data-cache"
EXPORTS = "exports"
_STEP_RE = re.compile(r"^step-(\d{9,})$")


def stage_dir(root: Path, stage: str) -> Path:
    return root / stage


def step_dir(root: Path, stage: str, step: int) -> Path:
    return stage_dir(root, stage) / f"step-{step:09d}"


def step_of(path: Path) -> int | None:
    match = _STEP_RE.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def list_checkpoints(root: Path, stage: str) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) of every checkpoint folder of a stage, oldest first."""
    folder = stage_dir(root, stage)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        step = step_of(path)
        if step is not None and path.is_dir():
            found.append((step, path, is_complete(path)))
    return sorted(found)


def latest_complete(root: Path, stage: str) -> tuple[int, Path] | None:
    """The newest complete checkpoint of a stage, or None."""
    complete = [(s, p) for s, p, ok in list_checkpoints(root, stage) if ok]
    return complete[-1] if complete else None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def mark_complete(path: Path, meta: dict[str, Any]) -> None:
    """Write the checkpoint's meta.json, then COMPLETE — last, and durably."""
    write_json_atomic(path / META, meta)
    write_json_atomic(path / COMPLETE, {"step": meta.get("step")})
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the directory entry of COMPLETE survives a power loss too
    finally:
        os.close(fd)


def read_meta(path: Path) -> dict[str, Any]:
    """A complete checkpoint's meta.json ({} when it has none: written by an older lmjob)."""
    try:
        return json.loads((path / META).read_text())
    except (OSError, ValueError):
        return {}


def write_report(root: Path, report: StageReport) -> Path:
    """`<root>/<stage>/report.json`, atomically: what the stage produced (read by `lmjob
    run` and tools); its presence marks the stage done."""
    path = stage_dir(root, report.stage) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report.to_json())
    return path


def export_dir(root: Path, name: str) -> Path:
    """Where the export `name` (`int8.gguf`) lives once it is complete and verified."""
    return root / EXPORTS / name


def is_export(stage: str) -> bool:
    """Export names hold a dot (`int8.gguf`); stage names cannot."""
    return "." in stage


def read_report(root: Path, stage: str) -> StageReport | None:
    """The stage's report; None when it has none (not finished) or it cannot be read.
    An export's report is its export.json, read as a stage."""
    if is_export(stage):
        return read_export_report(root, stage)
    try:
        text = (stage_dir(root, stage) / REPORT).read_text()
    except OSError:
        return None
    return StageReport.from_text(text)


def stage_output_dir(root: str | Path, stage: str) -> Path:
    """`<root>/<stage>/final/`: where a compression stage's output lives (docs/contracts.md)."""
    return stage_dir(Path(root), stage) / FINAL


def finished_training(root: Path, steps: int) -> StageReport | None:
    """The train stage's report when it trained `steps` steps; None otherwise (a raised
    `steps` continues training from the last checkpoint)."""
    report = read_report(root, TRAIN_STAGE)
    return report if report is not None and report.total_steps == steps else None


def finished_stage(root: Path, stage: str) -> StageReport | None:
    """A compression stage's report when it succeeded and its output is complete; a rerun
    skips such a stage."""
    report = read_report(root, stage)
    if report is None or report.phase != "Succeeded" or report.type == TRAIN_STAGE:
        return None
    return report if is_complete(stage_output_dir(root, stage)) else None


def read_export_report(root: Path, name: str) -> StageReport | None:
    """A finished export as a stage report; None when it is not there (or torn)."""
    try:
        data = json.loads((export_dir(root, name) / EXPORT_RECORD).read_text())
        return ExportResult.from_json(data).stage_report(name)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


class HistoryWriter:
    """Appends a stage's per-step numbers to `<root>/<stage>/history.jsonl` (rank 0).

    Curves without Prometheus, and what tests compare. After a resume, steps redone since
    the last checkpoint appear again: readers keep the last line of each step.
    """

    def __init__(self, root: Path, stage: str) -> None:
        path = stage_dir(root, stage) / HISTORY
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def read_history(root: Path, stage: str) -> dict[int, dict[str, Any]]:
    """step → the last record written for it (evaluations merged into their step)."""
    path = stage_dir(root, stage) / HISTORY
    out: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            step = int(record["step"])
            if "loss" in record:
                out[step] = record
            else:
                out.setdefault(step, {}).update(record)
    return out
