"""spec.export in the trainer: after the last stage, rank 0 writes each requested export
under `<root>/exports/<stage>.<format>/`, verified, and reports it as a stage of the job.

Exports read finished stage outputs from storage and run on CPU in rank 0 alone, so the
other ranks are done and leave (torchrun keeps the group until rank 0 exits; the operator
waits for every worker). No collective spans the exports, which may take longer than any
collective timeout for a large model.

Restarts: an export whose folder exists is done (its folder appears by rename only after
verification) and is skipped; a half-written one left by a kill is a hidden sibling folder,
removed here before exporting again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lmjob_api.export import export_name, export_targets
from lmjob_api.stage_report import StageReport
from lmjob_trainer import storage
from lmjob_trainer.export.result import ExportError
from lmjob_trainer.logs import set_log_context
from lmjob_trainer.session import TrainerSession

log = logging.getLogger(__name__)


def export_names(session: TrainerSession) -> list[str]:
    """The exports of this job as stages, in order (`train.hf`, `int8.gguf`, ...)."""
    config = session.config
    stages = [s.name for s in config.compression.stages]
    return [export_name(s, f) for s, f in export_targets(config.export, stages)]


def run_exports(session: TrainerSession) -> None:
    """Write and verify every export of spec.export (rank 0; the others return at once).

    Raises ExportError (a ValueError: the run fails as a configuration error, never retried,
    since the same weights export the same way) when an export is outside its tolerance."""
    config = session.config
    if config.export is None or not session.env.is_main:
        return
    stages = [s.name for s in config.compression.stages]
    folder = session.root / storage.EXPORTS
    _remove_partial(folder)
    metrics = session.metrics
    for stage, fmt in export_targets(config.export, stages):
        if session.stop_requested.is_set():
            return
        name = export_name(stage, fmt)
        done = storage.read_export_report(session.root, name)
        if done is not None:
            log.info("export finished before; skipped", extra={"stage": name})
        else:
            shutil.rmtree(storage.export_dir(session.root, name), ignore_errors=True)
            metrics.set_stage_phase(name, "Running")
            set_log_context(stage=name)
            done = _export_one(session, stage, fmt, name)
        metrics.set_stage_result(name, done.metrics)
        if done.checkpoint:  # the artifact's folder stands where a stage's output does
            metrics.record_checkpoint_complete(name, done.checkpoint, 0)
        metrics.set_stage_phase(name, "Succeeded")
    set_log_context(stage=None)


def _export_one(session: TrainerSession, stage: str, fmt: str, name: str) -> StageReport:
    from lmjob_trainer.export.pipeline import export_checkpoint

    gguf_type = session.config.export.gguf_type
    try:
        result = export_checkpoint(
            session.root,
            fmt,
            storage.export_dir(session.root, name),
            stage=stage,
            gguf_type=None if gguf_type == "auto" else gguf_type,
        )
    except ExportError as err:
        session.metrics.set_stage_phase(name, "Failed")
        raise ExportError(f"export {name}: {err}") from None
    except Exception:
        session.metrics.set_stage_phase(name, "Failed")
        raise
    return result.stage_report(name)


def _remove_partial(folder: Path) -> None:
    """Hidden `.name.tmp-PID` folders are exports a kill interrupted before their rename."""
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
