"""The GracePeriod condition: does an explicit grace period leave a stopped worker time to
write its checkpoint (SIGTERM → save → exit), judged against the job's measured saves?

Only a grace period the user set is judged: lmjob's own default is derived from the same
measurement (worker_pod.grace_period_seconds). Pure.
"""

from __future__ import annotations

from lmjob_api import LargeModelJob
from lmjob_operator.status import Problem

CONDITION = "GracePeriod"


def grace_problem(job: LargeModelJob, save_seconds: float | None) -> Problem | None:
    """GracePeriod False (GracePeriodShort) when the explicit grace period is shorter than
    the last checkpoint save took, True once it is long enough; None when nothing is set or
    no save was measured yet."""
    workers = job.spec.workers
    explicit = workers.termination_grace_period_seconds
    field = "workers.terminationGracePeriodSeconds"
    if explicit is None and "terminationGracePeriodSeconds" in workers.template.spec:
        explicit = int(workers.template.spec["terminationGracePeriodSeconds"])
        field = "workers.template.spec.terminationGracePeriodSeconds"
    if explicit is None or save_seconds is None:
        return None
    if explicit < save_seconds:
        return Problem(
            CONDITION,
            "False",
            "GracePeriodShort",
            f"{field} is {explicit}s but the last checkpoint save took {save_seconds:.1f}s: a "
            "stopped worker (suspend, eviction, preemption) may be killed before its "
            f"checkpoint is written. Raise {field}, or unset it to let lmjob size it",
        )
    return Problem(
        CONDITION,
        "True",
        "GracePeriodFits",
        f"{field} {explicit}s covers the last checkpoint save ({save_seconds:.1f}s)",
    )
