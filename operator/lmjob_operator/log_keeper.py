"""Keeps each worker's log tail past its pod, in the job's `<job>-logs` ConfigMap (the rules of
that record: lmjob_api.kept_logs).

A worker's tail is read through the API server (pods/log) when the worker has ended and just
before the operator deletes its pod (group restart, failure, cleanPodPolicy, scale-down,
suspension). Reading is best effort and bounded in time: a node that does not answer, a log
already gone or a failed write is logged and never holds back the pod's deletion. Re-running
a pass reads the same tail into the same key, so it may run twice or after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import aiohttp

from lmjob_api import LargeModelJob
from lmjob_api.kept_logs import (
    TAIL_LINES,
    TOTAL_BYTES,
    KeptKey,
    bound_tail,
    build_kept_data,
    kept_logs_name,
    tail_bytes,
)
from lmjob_api.pod_template import WORKER_CONTAINER
from lmjob_operator.job_log import job_log
from lmjob_operator.kube import CONFIG_MAPS, ApiError, Kube
from lmjob_operator.naming import ROLE_WORKER, job_namespace, owned_metadata
from lmjob_operator.plan import merge_patch
from lmjob_operator.pod_view import PodView

log = logging.getLogger(__name__)

READ_SECONDS = 5.0
"""One log read at most: the API server proxies it to the pod's kubelet."""
KEEP_SECONDS = 15.0
"""All of one pass's reads at most; what has not come back by then is not kept."""
READ_CONCURRENCY = 8


def choose_logs(
    pods: Sequence[PodView],
    deleting: Collection[str],
    kept: Mapping[str, bool],
    num_workers: int,
) -> list[PodView]:
    """Worker pods whose tail to read now (pure): those ended since their tail was kept (or
    never kept), and those being or about to be deleted (`deleting`: the names this pass
    deletes) never kept yet. `kept` maps a pod uid to whether its tail was read after it
    ended. Failed workers first, then by index; no more than the record can hold at this
    job's tail size. A pod stuck terminating on a lost node costs one read's timeout, once."""
    chosen = []
    for p in pods:
        if not p.is_worker or p.index is None or p.rendezvous_round is None:
            continue
        if p.phase in ("Pending", "Unknown"):
            continue  # no log yet, or a lost node that would not answer
        # A pod deleted by someone else (an eviction, a drain, `kubectl delete`) is read
        # while it terminates, as one the operator is about to delete.
        if (p.finished and not kept.get(p.uid, False)) or (
            (p.deleting or p.name in deleting) and p.uid not in kept
        ):
            chosen.append(p)
    chosen.sort(key=lambda p: (p.phase != "Failed", p.index or 0))
    return chosen[: TOTAL_BYTES // tail_bytes(num_workers)]


def kept_key(pod: PodView) -> KeptKey:
    """A worker counts as failed when it failed on its own, not when our deletion ended it."""
    assert pod.index is not None and pod.rendezvous_round is not None
    failed = pod.phase == "Failed" and not pod.deleting
    return KeptKey(pod.index, pod.rendezvous_round, failed=failed)


async def keep_worker_logs(
    kube: Kube,
    job: LargeModelJob,
    pods: Sequence[PodView],
    deleting: Collection[str],
    kept: dict[str, bool],
) -> None:
    """Read the chosen workers' tails and add them to the job's record; `kept` (the job's
    JobState.logs_kept) is updated and pruned to the pods still seen. Never raises an API
    error or a timeout: a failure is logged and the pass goes on."""
    seen = {p.uid for p in pods}
    for uid in [u for u in kept if u not in seen]:
        del kept[uid]
    chosen = choose_logs(pods, deleting, kept, job.spec.workers.replicas)
    if not chosen:
        return
    for p in chosen:
        kept[p.uid] = p.finished  # tried: a failure is not retried on every pass
    namespace = job_namespace(job)
    jlog = job_log(namespace, job.metadata.name, log)
    limit = tail_bytes(job.spec.workers.replicas)
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(pod: PodView) -> tuple[KeptKey, str]:
        async with gate:
            text = await kube.read_log(
                namespace,
                pod.name,
                container=WORKER_CONTAINER,
                tail_lines=TAIL_LINES,
                timeout=READ_SECONDS,
            )
        return kept_key(pod), bound_tail(text, limit)

    tasks = [asyncio.ensure_future(read(p)) for p in chosen]
    done, pending = await asyncio.wait(tasks, timeout=KEEP_SECONDS)
    for task in pending:
        task.cancel()
    additions: dict[KeptKey, str] = {}
    for pod, task in zip(chosen, tasks, strict=True):
        if task not in done:
            jlog.warning("log of pod %s not kept: no answer within %.0fs", pod.name, KEEP_SECONDS)
        elif isinstance(task.exception(), ApiError) and task.exception().status == 404:
            jlog.info("log of pod %s not kept: the pod is gone", pod.name)
        elif task.exception() is not None:
            jlog.warning("log of pod %s not kept: %s", pod.name, task.exception())
        else:
            key, text = task.result()
            additions[key] = text
    if not additions:
        return
    try:
        await _write(kube, job, additions)
    except (ApiError, TimeoutError, aiohttp.ClientError) as err:
        jlog.warning("logs of %d worker pod(s) not kept: %s", len(additions), err)
        return
    jlog.info("kept the log tails of %s", ", ".join(k.key for k in additions))


async def _write(kube: Kube, job: LargeModelJob, additions: Mapping[KeptKey, str]) -> None:
    """Read-modify-write the record (one process reconciles a job at a time). JSON, not
    server-side apply: a log may hold characters (non-BMP ones, escaped as surrogate pairs)
    that the API server's YAML decoder of apply patches refuses."""
    namespace = job_namespace(job)
    name = kept_logs_name(job.metadata.name)
    async with asyncio.timeout(READ_SECONDS * 2):
        current = await kube.get(CONFIG_MAPS, namespace, name)
        data: dict[str, str] = dict((current or {}).get("data") or {})
        new = build_kept_data(data, additions)
        if current is not None:
            if new != data:
                patch = {"data": merge_patch(data, new)}
                await kube.merge_patch(CONFIG_MAPS, namespace, name, patch)
            return
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": owned_metadata(job, name, ROLE_WORKER),
            "data": new,
        }
        await kube.create(CONFIG_MAPS, namespace, body)
