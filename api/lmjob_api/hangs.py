"""Where a hang's stacks go under the job's storage (docs/contracts.md): written by the
trainer's hang watchdog, named by the operator's `Stalled` condition. No torch, no kopf."""

from __future__ import annotations

from pathlib import PurePosixPath

HANGS = "hangs"
"""The folder under the job's storage holding one folder per stuck step."""


def hang_folder(root: str | PurePosixPath, stage: str, step: int) -> PurePosixPath:
    """`<root>/hangs/<stage>-step-<step, 9 digits>`: every rank's stacks of one stuck step."""
    return PurePosixPath(root) / HANGS / f"{stage}-step-{step:09d}"
