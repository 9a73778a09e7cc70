"""Exit codes with a meaning shared by the trainer (which exits with them) and the operator
(which decides from them whether a worker group is worth restarting).

A configuration error cannot be fixed by running the same pod again, nor can a loss that
turned NaN (the same batches follow the same checkpoint), so neither torchrun (inside the
pod) nor the operator (across pods) may retry them: the job fails at once with the
trainer's message in its condition.
"""

from __future__ import annotations

CONFIG_ERROR = 78
"""The manifest or trainer config cannot run here (sysexits.h EX_CONFIG). Never retried,
under any `runPolicy.restartPolicy`."""

NON_FINITE = 79
"""The loss or gradient norm became NaN or infinite (`training.nonFinite`). Never retried:
resuming from the last checkpoint replays the same batches with the same settings."""

PERMANENT_REASONS: dict[int, str] = {CONFIG_ERROR: "ConfigError", NON_FINITE: "NonFiniteLoss"}
"""The Failed condition's reason for each permanent exit code."""
PERMANENT_CODES = frozenset(PERMANENT_REASONS)


def is_permanent(code: int | None) -> bool:
    """True when a container that exited with `code` must not be restarted."""
    return code in PERMANENT_CODES
