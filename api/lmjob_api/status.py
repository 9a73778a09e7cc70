"""`status` of a LargeModelJob: what the operator reports, computed on purpose.

The operator builds one `LargeModelJobStatus` from what it observes (pods, the
rank-0 metrics endpoint, stage reports) and writes it only when it changed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

from pydantic import Field

from lmjob_api.base import ApiModel


class JobPhase(StrEnum):
    """Where a job is in its life; the Phase printer column."""

    QUEUED = "Queued"
    """Waiting in a Kueue queue for admission (no pods); the Queued condition says why."""
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    COMPRESSING = "Compressing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def finished(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED)


StagePhase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]
STAGE_PHASES: tuple[str, ...] = get_args(StagePhase)


class Condition(ApiModel):
    """A Kubernetes-style condition (Created, Running, Restarting, Suspended, Succeeded, Failed, ...)."""

    type: str = Field(..., description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(
        None, description="When status last changed (RFC 3339)."
    )


class WorkersStatus(ApiModel):
    """Counts of the worker pods."""

    desired: int = Field(
        0, ge=0, description="spec.workers.replicas the operator is working towards."
    )
    active: int = Field(0, ge=0, description="Pods that exist and have not finished.")
    ready: int = Field(0, ge=0, description="Pods that are Ready.")
    failed: int = Field(0, ge=0, description="Pods that failed in the current incarnation.")
    selector: str = Field(
        "", description="Label selector of the worker pods (scale subresource, HPA)."
    )
    summary: str = Field("", description="`active/desired`, for the Workers printer column.")


class ProgressStatus(ApiModel):
    """Training progress read from the rank-0 worker's metrics endpoint."""

    stage: str = Field("", description="Stage running now: `train` or a compression stage's name.")
    step: int = Field(0, ge=0, description="Optimiser steps done in this stage.")
    total_steps: int = Field(0, ge=0, description="Steps this stage will run.")
    loss: float | None = Field(None, description="Latest training loss.")
    tokens_per_second: float | None = Field(None, description="Latest throughput over all workers.")
    updated_at: str | None = Field(None, description="When this progress was read (RFC 3339).")


class CheckpointStatus(ApiModel):
    """The newest complete checkpoint."""

    latest: str = Field("", description="Path of the newest complete checkpoint.")
    step: int = Field(0, ge=0, description="Its step.")
    save_seconds: float | None = Field(
        None,
        ge=0,
        description="Seconds the newest checkpoint took to write: the default grace period "
        "of the worker pods (workers.terminationGracePeriodSeconds) is derived from it.",
    )


class StageStatus(ApiModel):
    """One stage's outcome: `train` first, then each compression stage."""

    name: str = Field(..., description="Stage name.")
    phase: StagePhase = Field(
        "Pending", description="Pending, Running, Succeeded, Failed or Skipped."
    )
    checkpoint: str | None = Field(None, description="The stage's output checkpoint.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Stage report: evalLoss, params, bytes, sparsity, latencyMs, ...",
    )


# status.evaluations keeps this many, the newest (last stages, highest steps); at about 40
# bytes each that is ~10 kB of status, well under etcd's object limit.
EVALUATIONS_KEPT = 256


class EvaluationStatus(ApiModel):
    """One evaluation of the model: its stage, the optimiser step it ran after, its loss."""

    stage: str = Field(..., description="Stage name: `train` or a compression stage's.")
    step: int = Field(..., ge=0, description="Optimiser step of the stage it ran after.")
    loss: float = Field(..., description="Evaluation loss (finite).")


class StragglerStatus(ApiModel):
    """A rank whose steps are slower than `training.stragglers.threshold` × the median rank."""

    rank: int = Field(..., ge=0, description="Global rank of the slow process.")
    pod: str = Field("", description="Its worker pod.")
    node: str = Field("", description="The node that pod runs on.")
    step_seconds: float = Field(
        ..., ge=0, description="Its median step time over the window (its own work, not waits)."
    )
    data_wait_seconds: float = Field(
        0.0, ge=0, description="Of which waiting for its batch (data loading)."
    )
    median_seconds: float = Field(..., ge=0, description="The median of all ranks' step times.")


class GoodputStatus(ApiModel):
    """Where the job's wall time went (lmjob_api.goodput; docs/operator.md)."""

    ratio: float = Field(
        0.0, ge=0, le=1, description="Productive step time over wall time since creation."
    )
    wall_seconds: float = Field(0.0, ge=0, description="From creation to now (or completion).")
    seconds: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds by kind: productive, redone, checkpoint, evaluation, setup, "
        "rendezvous, restart, scheduling, other; they add up to wallSeconds.",
    )


class LargeModelJobStatus(ApiModel):
    """Observed state of a LargeModelJob."""

    phase: JobPhase = Field(
        JobPhase.PENDING,
        description=(
            "Queued (waiting for Kueue), Pending, Running, Restarting, Compressing, Succeeded,"
            " Failed or Suspended."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions with reasons."
    )
    workers: WorkersStatus = Field(default_factory=WorkersStatus, description="Worker pod counts.")
    world_size: int = Field(0, ge=0, description="Training processes in the current rendezvous.")
    restarts: int = Field(
        0, ge=0, description="Group restarts so far (counted against backoffLimit)."
    )
    progress: ProgressStatus | None = Field(None, description="Training progress.")
    checkpoint: CheckpointStatus | None = Field(None, description="Newest complete checkpoint.")
    stages: list[StageStatus] = Field(default_factory=list, description="Per-stage results.")
    evaluations: list[EvaluationStatus] = Field(
        default_factory=list,
        description="Evaluation losses seen so far, by stage and step; the newest "
        f"{EVALUATIONS_KEPT} are kept.",
    )
    stragglers: list[StragglerStatus] = Field(
        default_factory=list,
        description="Ranks slower than training.stragglers.threshold × the median, as the "
        "latest scrape says (empty: none); also the Stragglers condition.",
    )
    goodput: GoodputStatus | None = Field(
        None, description="Goodput: the share of wall time spent on steps that count."
    )
    start_time: str | None = Field(None, description="When the job first ran (RFC 3339).")
    completion_time: str | None = Field(None, description="When the job finished (RFC 3339).")
    observed_generation: int | None = Field(
        None, description="metadata.generation this status reflects."
    )
