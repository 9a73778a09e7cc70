"""Whether a LargeModelJob is this operator's to run: `spec.managedBy`, as batch/v1 Job's.

A job whose spec names another controller (MultiKueue's `kueue.x-k8s.io/multikueue`) is
that controller's: handlers.py filters it out of every handler that acts on a job, so it
gets no pods, Workload, Service, ConfigMap or PodGroup, no status and no finalizer; the
other controller runs it and mirrors its status. The field is immutable (a CEL transition
rule), so the decision never changes over a job's life.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmjob_api.job import MANAGED_BY_OPERATOR


def is_ours(spec: Mapping[str, Any] | None) -> bool:
    """True when this operator runs the job: `managedBy` absent or naming this operator."""
    manager = (spec or {}).get("managedBy")
    return manager is None or manager == MANAGED_BY_OPERATOR
