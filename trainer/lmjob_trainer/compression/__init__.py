"""Post-training compression stages (prune, low-rank, quantize, distill) and their outputs.

- `run_stages(session)`: runs `compression.stages` after training (called by train.py).
- `load_stage(dir, "int8")`: any stage's output, ready for inference.
- `check_compression(config, cuda_devices=N)`: the chain's problems, before anything runs.

Attributes load lazily: `check_compression` needs no torch, so `lmjob run` and the
preflight checks can import this package without paying torch's import time.
"""

from __future__ import annotations

from typing import Any

from lmjob_trainer.compression.validate import check_compression, validate_compression

__all__ = ["check_compression", "load_stage", "run_stages", "validate_compression"]


def __getattr__(name: str) -> Any:
    if name == "load_stage":
        from lmjob_trainer.compression.load import load_stage

        return load_stage
    if name == "run_stages":
        from lmjob_trainer.compression.runner import run_stages

        return run_stages
    raise AttributeError(name)
