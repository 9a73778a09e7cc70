"""Checks of a spec the operator reads: the API models' rules, the same the API server
enforces through the CRD (schema + CEL), so a job that got past admission passes them.

Run again here because an object may predate the current CRD (stored under an older
schema) or come from a server whose CRD was not upgraded; a job failing one is marked
Failed with reason InvalidSpec and an event naming the field.
"""

from __future__ import annotations

from lmjob_api import LargeModelJob
from lmjob_api.validation import check_rules


def check_runnable(job: LargeModelJob) -> list[str]:
    """Every problem found, one line each (`field: what to do`); empty when the job can run."""
    return [str(p) for p in check_rules(job)]
