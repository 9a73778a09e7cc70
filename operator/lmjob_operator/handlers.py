"""kopf registrations, kept thin: each handler hands its work to settings.py or reconcile.py.

One daemon per LargeModelJob runs the job's reconcile loop (reconcile.run_job); pod events
and spec changes only wake it (async handlers: they run in the event loop, next to it), so a burst of events becomes one pass, passes of one job
never overlap, and the pod index (filled before any handler runs) is always complete.
A job another controller runs (spec.managedBy, managed_by.py) passes none of the job
handlers' filters: kopf keeps no state on it, and one event handler logs that once.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from lmjob_api import GROUP, KIND, PLURAL, VERSION
from lmjob_operator import connection
from lmjob_operator.job_log import job_log
from lmjob_operator.kueue_sync import release_deleted_job
from lmjob_operator.kueue_workload import JOB_UID_LABEL
from lmjob_operator.managed_by import is_ours
from lmjob_operator.naming import JOB_LABEL
from lmjob_operator.pod_view import PodView, view_pod
from lmjob_operator.reconcile import run_job_daemon
from lmjob_operator.registry import build_context
from lmjob_operator.settings import apply_settings

JOBS = (GROUP, VERSION, PLURAL)
log = logging.getLogger(__name__)


def _ours(spec: kopf.Spec, **_: Any) -> bool:
    return is_ours(spec)


def _not_ours(spec: kopf.Spec, **_: Any) -> bool:
    return not is_ours(spec)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    apply_settings(settings, memo.options)
    memo.ctx = await build_context(memo.config)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # One login for kopf and kube.py (connection.py): kopf's own login functions, plus the
    # ServiceAccount folder a local cluster's node names. Called again on every 401.
    return connection.login(**kwargs)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.ctx.kube.close()


@kopf.on.probe(id="jobs")
async def count_jobs(memo: kopf.Memo, **_: Any) -> int:
    return len(memo.ctx.registry.jobs)


@kopf.index("pods", labels={JOB_LABEL: kopf.PRESENT})
async def pods_by_job(
    namespace: str, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], PodView]:
    # Also the pod-event trigger: kopf stores the view right after this returns, before the
    # woken daemon runs, and one call per pod event beats a second (logged) event handler.
    memo.ctx.registry.wake(namespace, labels[JOB_LABEL])
    return {(namespace, labels[JOB_LABEL]): view_pod(body)}


# Kueue's verdicts on a job's Workload (admitted, evicted, why it waits) wake the job, so its
# status shows them within a pass. Without Kueue's CRDs kopf only logs that it cannot watch.
@kopf.on.event("kueue.x-k8s.io", "v1beta2", "workloads", labels={JOB_UID_LABEL: kopf.PRESENT})
async def workload_changed(namespace: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == KIND and owner.get("apiVersion", "").startswith(f"{GROUP}/"):
            memo.ctx.registry.wake(namespace, owner["name"])


@kopf.on.event(*JOBS, when=_not_ours)
async def job_managed_elsewhere(
    type: str | None,
    namespace: str,
    name: str,
    uid: str,
    spec: kopf.Spec,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    if memo.ctx.registry.note_managed_elsewhere(uid, gone=type == "DELETED"):
        job_log(namespace, name, log).info(
            "leaving the job alone: spec.managedBy names %s, which runs it",
            spec["managedBy"],
            extra={"managedBy": spec["managedBy"]},
        )


# No on.create: the daemon starts with the object and its first pass creates everything.
@kopf.on.update(*JOBS, field="spec", when=_ours)
async def job_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.ctx.registry.wake(namespace, name)


@kopf.daemon(*JOBS, cancellation_timeout=5.0, when=_ours)
async def job_loop(
    body: kopf.Body,
    memo: kopf.Memo,
    pods_by_job: kopf.Index[Any, PodView],
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    def post(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    await run_job_daemon(memo.ctx, body, pods_by_job, post, stopped)
    if stopped.reason is not None and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
        # The job is going: its Kueue Workload (if any) must not hang on our finalizer.
        await release_deleted_job(memo.ctx.kube, body)
