"""Exit codes with a meaning shared by the trainer (which exits with them) and the operator
(which decides from them whether a worker group is worth restarting).

A configuration error cannot be fixed by running the same pod again, so neither torchrun
(inside the pod) nor the operator (across pods) may retry it: the job fails at once with
the trainer's message in its condition.
"""

from __future__ import annotations

CONFIG_ERROR = 78
"""The manifest or trainer config cannot run here (sysexits.h EX_CONFIG). Never retried,
under any `runPolicy.restartPolicy`."""

PERMANENT_CODES = frozenset({CONFIG_ERROR})


def is_permanent(code: int | None) -> bool:
    """True when a container that exited with `code` must not be restarted."""
    return code in PERMANENT_CODES
