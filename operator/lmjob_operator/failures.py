"""What a failure means for a job: replace one pod, restart the worker group, or fail the job.

Pure: observed pods + run policy + restarts so far → one verdict; an API server's answer to
a pod create → what to do about it (judge_create_error). The rules (docs/operator.md):

- A worker *disrupted* by Kubernetes (evicted, preempted, node lost or shut down, phase
  Unknown, deleted) is replaced alone, at the same index. Its torchrun agent was killed by a
  signal, which leaves the job's rendezvous open, so the surviving workers re-rendezvous and
  the replacement joins them: elastic membership absorbs it. Not counted in `restarts`.
- A worker that *failed* (its container exited non-zero: torchrun gave up after its local
  restarts) closed the job's rendezvous for good — torchrun does that when an agent exits —
  so nothing can rejoin it. The whole worker group restarts with a fresh rendezvous round
  (`PET_RDZV_ID=<uid>-<restarts>`), and resumes from the latest checkpoint. Counted.
- Losing the rendezvous store while workers run restarts the group the same way. Counted.
- A hang (stall.py: the step stopped advancing) restarts the group the same way. Counted.
- A worker that exited with CONFIG_ERROR (78, lmjob_api.exit_codes) found a configuration
  error at start-up: running it again cannot help, so the job fails at once (ConfigError)
  under every restartPolicy, with the trainer's message, and no restart is counted. So does
  one that exited with NON_FINITE (79): its loss became NaN or infinite (NonFiniteLoss), and
  the same batches after the same checkpoint would do it again.
- `runPolicy.restartPolicy` decides which other failures may restart:
  `OnFailure` every exit code; `ExitCode` only retryable ones (0 and 128+N — killed by a
  signal, e.g. 137 OOM-killed, 143 terminated); 1–127 fail the job (PermanentExitCode);
  `Never` no failure (WorkerFailed). A restart beyond `backoffLimit` fails the job
  (BackoffLimitExceeded).
- Once any worker of the current round succeeded the job is finishing: torchrun only lets an
  agent exit 0 when training completed, so later failures are not restarted.

Why count by round: a pod belongs to round `restarts` when created; status.restarts is
written before any pod is deleted, so after a crash the failed pod's round is already older
than `restarts` and its failure can never be counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from lmjob_api.exit_codes import CONFIG_ERROR, NON_FINITE, PERMANENT_REASONS, is_permanent
from lmjob_api.job import RunPolicy
from lmjob_api.termination import decode_error, decode_stages
from lmjob_operator.pod_view import PodView


class Action(StrEnum):
    NONE = "None"
    REPLACE = "Replace"
    """Delete and recreate the listed disrupted pods; the group keeps running."""
    RESTART_GROUP = "RestartGroup"
    """Count a restart and recreate every worker in a fresh rendezvous round."""
    FAIL = "Fail"
    """The job has failed for good."""


@dataclass(frozen=True)
class Verdict:
    action: Action = Action.NONE
    reason: str = ""
    """CamelCase reason for conditions and events."""
    message: str = ""
    replace: tuple[str, ...] = field(default_factory=tuple)
    """Names of disrupted pods to replace (for REPLACE, and alongside RESTART_GROUP)."""
    worker: int | None = None
    """Index of the worker whose failure this is (its kept log is named in the condition)."""
    grace_seconds: int | None = None
    """Grace period of the pods this verdict deletes (None: each pod's own): short for a
    hang's restart (stall.py), whose stuck ranks cannot checkpoint anyway."""


_PERMANENT_MEANING = {
    CONFIG_ERROR: "a configuration error, never retried; fix the job's spec and create it again",
    NON_FINITE: "the loss became NaN or infinite, never retried: the same batches would "
    "follow the same checkpoint; the checkpoints before it are kept",
}


def exit_code_retryable(code: int) -> bool:
    """ExitCode policy: 1–127 are the program's own errors; 128+N means killed by signal N."""
    return not 1 <= code <= 127


def exit_detail(message: str) -> str:
    """What a worker said about its end: the trainer's error from its termination message,
    or the last log line Kubernetes put there instead (FallbackToLogsOnError)."""
    if not message:
        return ""
    error = decode_error(message)
    if error:
        return error
    if decode_stages(message) is not None:
        return ""  # the trainer's own message, without an error
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def describe(pod: PodView) -> str:
    """One human line about how a pod ended."""
    if pod.exit_code is not None and not pod.disrupted:
        text = f"{pod.name} exited with code {pod.exit_code}"
        text += f" ({pod.reason})" if pod.reason else ""
        detail = exit_detail(pod.message)
        return text + (f": {detail}" if detail else "")
    if pod.phase == "Unknown":
        return f"{pod.name} was lost with its node"
    return f"{pod.name} was {pod.reason or 'disrupted'}" + (
        f": {pod.message}" if pod.message else ""
    )


def is_disrupted(pod: PodView) -> bool:
    """Ended by Kubernetes rather than by the program (see module docstring)."""
    if pod.phase == "Unknown":
        return True
    return pod.phase == "Failed" and (pod.disrupted or pod.exit_code is None)


def current_workers(pods: Iterable[PodView], restarts: int) -> list[PodView]:
    """Worker pods of the current rendezvous round that are not being deleted."""
    return [p for p in pods if p.is_worker and p.rendezvous_round == restarts and not p.deleting]


def judge_failures(
    pods: Iterable[PodView],
    rendezvous: PodView | None,
    policy: RunPolicy,
    restarts: int,
) -> Verdict:
    """The verdict for a running job's observed pods (workers and its rendezvous store)."""
    workers = current_workers(pods, restarts)
    if any(p.phase == "Succeeded" for p in workers):
        return Verdict()

    failed = sorted(
        (p for p in workers if p.phase == "Failed" and not is_disrupted(p)),
        key=lambda p: p.index or 0,
    )
    disrupted = tuple(p.name for p in workers if is_disrupted(p))

    if failed:
        permanent = [p for p in failed if is_permanent(p.exit_code)]
        if permanent:
            code = permanent[0].exit_code or CONFIG_ERROR
            return Verdict(
                Action.FAIL,
                PERMANENT_REASONS[code],
                f"{describe(permanent[0])} (exit code {code}: {_PERMANENT_MEANING[code]})",
                worker=permanent[0].index,
            )
        detail = "; ".join(describe(p) for p in failed)
        if policy.restart_policy == "Never":
            return Verdict(
                Action.FAIL,
                "WorkerFailed",
                f"restartPolicy is Never: {detail}",
                worker=failed[0].index,
            )
        if policy.restart_policy == "ExitCode":
            own = [p for p in failed if not exit_code_retryable(p.exit_code or 0)]
            if own:
                return Verdict(
                    Action.FAIL,
                    "PermanentExitCode",
                    f"{describe(own[0])}: exit codes 1-127 are permanent under "
                    "restartPolicy ExitCode",
                    worker=own[0].index,
                )
        return restart_verdict(
            policy, restarts, "WorkerFailed", detail, disrupted, worker=failed[0].index
        )

    store_lost = (
        rendezvous is None
        or rendezvous.finished
        or rendezvous.deleting
        or (rendezvous.phase == "Unknown")
    )
    if store_lost and any(p.phase == "Running" for p in workers):
        what = "is gone" if rendezvous is None else describe(rendezvous)
        return restart_verdict(
            policy, restarts, "RendezvousLost", f"the rendezvous store {what}", disrupted
        )

    if disrupted:
        text = "; ".join(describe(p) for p in workers if p.name in disrupted)
        return Verdict(Action.REPLACE, "WorkerDisrupted", text, disrupted)
    return Verdict()


def restart_verdict(
    policy: RunPolicy,
    restarts: int,
    reason: str,
    detail: str,
    disrupted: tuple[str, ...] = (),
    worker: int | None = None,
) -> Verdict:
    """Restart the group (a restart counted), or fail the job once backoffLimit is spent."""
    if restarts >= policy.backoff_limit:
        return Verdict(
            Action.FAIL,
            "BackoffLimitExceeded",
            f"{restarts} restart(s) used of backoffLimit {policy.backoff_limit}; "
            f"last failure: {detail}",
            worker=worker,
        )
    return Verdict(
        Action.RESTART_GROUP,
        reason,
        f"restarting all workers (restart {restarts + 1} of {policy.backoff_limit}): {detail}",
        disrupted,
        worker=worker,
    )


class CreateOutcome(StrEnum):
    """What a refused pod create means (judge_create_error)."""

    EXISTS = "Exists"
    """409: a pod of that name is there already; the pod index will show it."""
    WAIT = "Wait"
    """May pass later without a spec change (quota used up, the operator's RBAC, namespace
    terminating): reported as condition Created=False and tried again every resync."""
    RETRY = "Retry"
    """Transient (429, 5xx, timeouts, expired credentials): the pass fails and is retried."""
    REFUSED = "Refused"
    """The API server refuses this pod as the spec builds it (invalid, a PodSecurity or
    admission-webhook denial, a LimitRange): it never will pass, so the job fails at once."""


# 403 messages of refusals that may pass later. Everything else the API server forbids
# (PodSecurity `violates PodSecurity "restricted:latest": ...`, a webhook's denial, a
# LimitRange maximum) is a verdict on the pod itself.
WAIT_MARKERS = (
    "exceeded quota",
    "cannot create resource",  # RBAC: the operator's role, fixed by its admin
    "because it is being terminated",  # the namespace (and so the job) is going away
)
RETRY_STATUSES = frozenset({401, 404, 408, 429})


def judge_create_error(status: int, message: str) -> CreateOutcome:
    """The outcome of a pod create the API server answered with `status` and `message`."""
    if status == 409:
        return CreateOutcome.EXISTS
    if status == 403 and any(marker in message for marker in WAIT_MARKERS):
        return CreateOutcome.WAIT
    if 400 <= status < 500 and status not in RETRY_STATUSES:
        return CreateOutcome.REFUSED
    return CreateOutcome.RETRY
