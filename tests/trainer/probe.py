"""`python -m tests.trainer.probe --config ...`: the trainer's own entry point, run unchanged,
with spies that record which code paths ran (written to `$LMJOB_PROBE_DIR/rank<N>.json`).

Spies wrap and call through, so the run is the real one; they only make visible what a
loss curve cannot show: the dtype autocast computed in, whether the fp16 loss scaler
scaled, and which modules ran their forward (a checkpoint wrapper, and the recompute of
the blocks it wraps during backward).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

PROBE_DIR_ENV = "LMJOB_PROBE_DIR"

linear_dtypes: set[str] = set()
forwards: Counter[str] = Counter()
scales: list[float] = []
scales_after: list[float] = []


def _count_forward(module: nn.Module, _inputs: Any) -> None:
    # Training forwards only (and checkpoint recomputes, which run with grad enabled):
    # evaluation and sampling run under no_grad. Counted as they start: a recompute stops
    # as soon as it has what backward needs, so a block's forward need not return.
    if torch.is_grad_enabled():
        forwards[type(module).__name__] += 1


def _record_dtype(module: nn.Module, _inputs: Any, output: Any) -> None:
    if torch.is_grad_enabled() and isinstance(module, nn.Linear):
        linear_dtypes.add(str(output.dtype).removeprefix("torch."))


_update = torch.amp.GradScaler.update


def _record_scale(self: torch.amp.GradScaler, new_scale: Any = None) -> None:
    if self.is_enabled():
        scales.append(float(self.get_scale()))  # the scale this step's loss was multiplied by
    _update(self, new_scale)
    if self.is_enabled():
        scales_after.append(float(self.get_scale()))


def _write() -> None:
    out = Path(os.environ[PROBE_DIR_ENV]) / f"rank{os.environ.get('RANK', '0')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    seen = {
        "linear_dtypes": sorted(linear_dtypes),
        "forwards": forwards,
        "scales": scales,
        "scales_after": scales_after,
    }
    out.write_text(json.dumps(seen))


def run_probed(training: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    """Train `training` under torchrun with the probe: the run goes to work/run, and what
    every rank recorded (rank 0 first) comes back."""
    from tests.trainer.conftest import REPO, subprocess_env, torchrun, write_config

    env = subprocess_env(**{PROBE_DIR_ENV: str(work / "probe")})
    env["PYTHONPATH"] += f":{REPO}"
    config = write_config(work / "c.yaml", training)
    torchrun(config, work / "run", module=("-m", "tests.trainer.probe"), env=env)
    return read_probe(work / "probe")


def read_probe(folder: Path) -> list[dict[str, Any]]:
    """What every rank recorded, rank 0 first."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


if __name__ == "__main__":
    from lmjob_trainer.__main__ import main

    register_module_forward_pre_hook(_count_forward)
    register_module_forward_hook(_record_dtype)
    torch.amp.GradScaler.update = _record_scale  # type: ignore[method-assign]
    try:
        code = main(sys.argv[1:])
    finally:
        _write()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
