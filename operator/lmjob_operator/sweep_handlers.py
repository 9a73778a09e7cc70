"""kopf registrations for LargeModelSweeps, kept thin: the work is in sweep_reconcile.py.

One daemon per sweep runs its reconcile loop (sweep_reconcile.run_sweep), every
`resync_seconds` and whenever one of its trial jobs changes: an index over the jobs
labelled with a sweep wakes that sweep (an index, not an event handler: one call per job
event, nothing logged).
"""

from __future__ import annotations

from typing import Any

import kopf

from lmjob_api import GROUP, PLURAL, VERSION
from lmjob_api.sweep import PLURAL as SWEEP_PLURAL
from lmjob_operator.naming import SWEEP_LABEL
from lmjob_operator.sweep_reconcile import run_sweep

JOBS = (GROUP, VERSION, PLURAL)
SWEEPS = (GROUP, VERSION, SWEEP_PLURAL)


@kopf.index(*JOBS, labels={SWEEP_LABEL: kopf.PRESENT})
async def trial_jobs(
    namespace: str, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], str]:
    memo.ctx.registry.wake_sweep(namespace, labels[SWEEP_LABEL])
    return {(namespace, labels[SWEEP_LABEL]): name}


@kopf.daemon(*SWEEPS, cancellation_timeout=5.0)
async def sweep_loop(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    def post(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    meta = body["metadata"]
    registry = memo.ctx.registry
    state = registry.sweep_state(meta["namespace"], meta["name"], meta.get("uid", ""))
    try:
        await run_sweep(memo.ctx, state, post, stopped)
    finally:
        registry.forget_sweep(meta["namespace"], meta["name"], state.uid)
