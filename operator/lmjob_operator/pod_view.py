"""What the operator reads from a pod: a small frozen view, kept in kopf's pod index.

Storing views instead of whole pod bodies keeps the operator's memory flat with many jobs,
and gives the pure decision functions (failures.py, status.py) one plain type to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lmjob_operator.naming import (
    BOUNDS_LABEL,
    INDEX_LABEL,
    JOB_LABEL,
    ROLE_LABEL,
    ROLE_WORKER,
    ROUND_LABEL,
)

# Pod-level reasons Kubernetes sets when it, not the program, ended a pod.
DISRUPTION_REASONS = frozenset(
    {
        "Evicted",
        "Preempting",
        "Preempted",
        "NodeLost",
        "NodeShutdown",
        "Shutdown",
        "Terminated",
        "UnexpectedAdmissionError",
        "DeletionByTaintManager",
        "DeletionByPodGC",
        "TerminationByKubelet",
    }
)


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as the API sends it (or a datetime), None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class PodView:
    """One pod of a job, as far as the operator's decisions go."""

    name: str
    uid: str
    job: str
    role: str
    index: int | None
    rendezvous_round: int | None
    phase: str
    """Pending, Running, Succeeded, Failed or Unknown."""
    ready: bool = False
    pod_ip: str = ""
    node_name: str = ""
    exit_code: int | None = None
    """Exit code of the main container once it terminated."""
    reason: str = ""
    """Pod-level reason (Evicted, ...) or else the main container's (Error, OOMKilled, ...)."""
    message: str = ""
    disrupted: bool = False
    """Kubernetes ended the pod (eviction, preemption, node loss), not the program."""
    deletion_timestamp: datetime | None = None
    grace_period_seconds: int | None = None
    created: datetime | None = None
    started: datetime | None = None
    bounds: str = ""
    """The elastic bounds label (`min-max`) of a worker."""
    owner_uid: str = ""
    """uid of the controlling owner (the job incarnation that made the pod)."""
    unschedulable: str = ""
    """The scheduler's message while it cannot place the pod (PodScheduled False,
    Unschedulable), else empty."""

    @property
    def deleting(self) -> bool:
        return self.deletion_timestamp is not None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def live(self) -> bool:
        """Exists, is not being deleted, and has not finished: counts towards the job's size."""
        return not self.deleting and not self.finished and self.phase != "Unknown"

    @property
    def is_worker(self) -> bool:
        return self.role == ROLE_WORKER


def _main_container_state(status: dict[str, Any]) -> dict[str, Any]:
    statuses = status.get("containerStatuses") or []
    main = next((c for c in statuses if c.get("name") in ("worker", "rendezvous")), None)
    if main is None and statuses:
        main = statuses[0]
    return (main or {}).get("state") or {}


def view_pod(body: dict[str, Any]) -> PodView:
    """The view of a pod body (a dict or kopf's Body)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    labels = meta.get("labels") or {}
    terminated = _main_container_state(status).get("terminated") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    disruption_condition = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions
    )
    unschedulable = next(
        (
            c.get("message") or "unschedulable"
            for c in conditions
            if c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ),
        "",
    )
    pod_reason = status.get("reason") or ""
    reason = pod_reason or terminated.get("reason") or ""
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        job=labels.get(JOB_LABEL, ""),
        role=labels.get(ROLE_LABEL, ""),
        index=_int(labels.get(INDEX_LABEL)),
        rendezvous_round=_int(labels.get(ROUND_LABEL)),
        phase=status.get("phase") or "Pending",
        ready=ready,
        pod_ip=status.get("podIP") or "",
        node_name=(body.get("spec") or {}).get("nodeName") or "",
        exit_code=_int(terminated.get("exitCode")),
        reason=reason,
        message=status.get("message") or terminated.get("message") or "",
        disrupted=disruption_condition or pod_reason in DISRUPTION_REASONS,
        deletion_timestamp=parse_time(meta.get("deletionTimestamp")),
        grace_period_seconds=_int(meta.get("deletionGracePeriodSeconds")),
        created=parse_time(meta.get("creationTimestamp")),
        started=parse_time(status.get("startTime")),
        bounds=labels.get(BOUNDS_LABEL, ""),
        owner_uid=next(
            (o.get("uid", "") for o in meta.get("ownerReferences") or [] if o.get("controller")),
            "",
        ),
        unschedulable=unschedulable,
    )
