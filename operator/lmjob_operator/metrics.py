"""The operator's Prometheus metrics, `lmjob_operator_*` (served by `python -m lmjob_operator`).

Defined once at import; the reconcile and the API layer update them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from lmjob_api import JobPhase
from lmjob_api.sweep import SweepPhase, TrialState

JOBS = Gauge(
    "lmjob_operator_jobs",
    "LargeModelJobs this operator handles, by phase.",
    ["phase"],
)
RECONCILE_SECONDS = Histogram(
    "lmjob_operator_reconcile_duration_seconds",
    "Wall time of one reconcile of one job.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "lmjob_operator_reconcile_errors_total",
    "Reconciles that ended in an error (retried with backoff).",
    ["reason"],
)
POD_RESTARTS = Counter(
    "lmjob_operator_pod_restarts_total",
    "Worker pods replaced: `group` for every pod of a whole-group restart, `disruption` for "
    "a pod replaced alone after Kubernetes ended it.",
    ["kind"],
)
STALLS = Counter(
    "lmjob_operator_stalls_total",
    "Hangs the operator acted on (a Stalled condition, then a group restart): `StepStalled` "
    "when rank 0's watchdog says the step stopped, `TrainerUnresponsive` when rank 0's "
    "metrics endpoint stopped answering.",
    ["namespace", "job", "reason"],
)
SWEEPS = Gauge(
    "lmjob_operator_sweeps",
    "LargeModelSweeps this operator handles, by phase.",
    ["phase"],
)
SWEEP_TRIALS = Gauge(
    "lmjob_operator_sweep_trials",
    "Trials of the sweeps this operator handles, by state (Pending, Running, Complete, "
    "Pruned, Failed).",
    ["state"],
)
TRIAL_JOBS = Counter(
    "lmjob_operator_sweep_trial_jobs_total",
    "Trial jobs the operator created (`created`) or stopped early (`stopped`).",
    ["action"],
)
GOODPUT = Gauge(
    "lmjob_operator_job_goodput_ratio",
    "Each job's status.goodput.ratio: productive step time over wall time since creation.",
    ["namespace", "job"],
)
PODS_CREATED = Counter("lmjob_operator_pods_created_total", "Pods created.", ["role"])
API_CALLS = Counter(
    "lmjob_operator_api_calls_total",
    "Kubernetes API requests made by the reconcile (kopf's own watches and patches excluded).",
    ["verb", "resource", "code"],
)
API_SECONDS = Histogram(
    "lmjob_operator_api_call_duration_seconds",
    "Latency of the reconcile's Kubernetes API requests.",
    ["verb"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)


def set_job_phases(phases: Iterable[str]) -> None:
    """Publish the count of jobs per phase (every phase present, zeros included)."""
    counts = dict.fromkeys((p.value for p in JobPhase), 0)
    for phase in phases:
        counts[phase] = counts.get(phase, 0) + 1
    for phase, count in counts.items():
        JOBS.labels(phase=phase).set(count)


def set_job_goodput(namespace: str, job: str, ratio: float | None) -> None:
    """Publish one job's goodput ratio; None removes its series (gone, or not measured)."""
    if ratio is not None:
        GOODPUT.labels(namespace=namespace, job=job).set(ratio)
        return
    with contextlib.suppress(KeyError):  # never published
        GOODPUT.remove(namespace, job)


def set_sweep_counts(phases: Iterable[str], trial_states: Iterable[str]) -> None:
    """Publish the count of sweeps per phase and of their trials per state (zeros included)."""
    for gauge, label, known, values in (
        (SWEEPS, "phase", SweepPhase, phases),
        (SWEEP_TRIALS, "state", TrialState, trial_states),
    ):
        counts = dict.fromkeys((v.value for v in known), 0)
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            gauge.labels(**{label: value}).set(count)
