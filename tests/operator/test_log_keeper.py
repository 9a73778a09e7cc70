"""log_keeper.choose_logs: which workers' tails a pass reads, and the failure conditions that
name the command showing them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lmjob_api import LargeModelJobStatus
from lmjob_api.kept_logs import TOTAL_BYTES, tail_bytes
from lmjob_operator.failures import Action, Verdict, judge_failures
from lmjob_operator.log_keeper import choose_logs, kept_key
from lmjob_operator.status import build_status
from tests.operator.factories import make_job, rendezvous, worker

ENDED = worker(1, "Failed", exit_code=1)
DONE = worker(0, "Succeeded", exit_code=0)
RUNNING = worker(0)
PENDING = worker(2, "Pending")
EVICTED = worker(3, deletion_timestamp=datetime.now(UTC))


@pytest.mark.parametrize(
    ("pods", "deleting", "kept", "chosen"),
    [
        # Nothing ended, nothing deleted: no read (an idle pass costs no API call).
        ([RUNNING, rendezvous()], set(), {}, []),
        # Ended workers, failed first; each read once.
        ([DONE, ENDED], set(), {}, [ENDED.name, DONE.name]),
        ([DONE, ENDED], set(), {DONE.uid: True, ENDED.uid: True}, []),
        # About to be deleted while running: read before it goes, once.
        ([RUNNING], {RUNNING.name}, {}, [RUNNING.name]),
        ([RUNNING], {RUNNING.name}, {RUNNING.uid: False}, []),
        # Kept while running, ended since: read again for its last lines.
        ([worker(0, "Failed", exit_code=143)], set(), {RUNNING.uid: False}, [RUNNING.name]),
        # Deleted by someone else (an eviction): read while it terminates, once.
        ([EVICTED], set(), {}, [EVICTED.name]),
        ([EVICTED], set(), {EVICTED.uid: False}, []),
        # A pod that never started has no log.
        ([PENDING], {PENDING.name}, {}, []),
    ],
    ids=[
        "idle",
        "ended",
        "ended, kept",
        "deleted",
        "deleted, kept",
        "ended after",
        "evicted",
        "evicted, kept",
        "pending",
    ],
)
def test_choose_logs(pods, deleting, kept, chosen) -> None:
    assert [p.name for p in choose_logs(pods, deleting, kept, num_workers=2)] == chosen


def test_a_large_job_reads_no_more_than_its_record_holds() -> None:
    pods = [worker(i, "Failed" if i == 900 else "Succeeded", exit_code=1) for i in range(1000)]
    chosen = choose_logs(pods, set(), {}, num_workers=1000)
    assert len(chosen) == TOTAL_BYTES // tail_bytes(1000) < 1000
    assert chosen[0].index == 900  # the failed worker first


def test_key_names_attempt_and_outcome() -> None:
    assert kept_key(worker(3, "Failed", round_=2, exit_code=1)).key == (
        "worker-3.attempt-2.failed.log"
    )
    assert kept_key(worker(3, round_=2)).key == "worker-3.attempt-2.log"
    # Ended by the operator's own deletion (SIGTERM: exit 143): not a failure of its own.
    stopped = worker(3, "Failed", round_=2, exit_code=143, deletion_timestamp=datetime.now(UTC))
    assert kept_key(stopped).key == "worker-3.attempt-2.log"


@pytest.mark.parametrize(
    ("pods", "phase", "hint"),
    [
        ([worker(0), worker(1, "Failed", exit_code=78)], "Failed", "lmjob logs demo --worker 1"),
        ([worker(0, "Failed", exit_code=1), worker(1)], "Restarting", "lmjob logs demo --prev"),
    ],
)
def test_a_workers_failure_names_its_kept_log(pods, phase, hint) -> None:
    job = make_job({"runPolicy": {"backoffLimit": 3}})
    verdict = judge_failures(pods, rendezvous(), job.spec.run_policy, 0)
    assert verdict.action in (Action.FAIL, Action.RESTART_GROUP)
    status = build_status(job, pods, None, LargeModelJobStatus(), verdict, datetime.now(UTC))
    cond = next(c for c in status.conditions if c.type == phase and c.status == "True")
    assert cond.message.endswith("--previous") and hint in cond.message, cond.message


def test_no_hint_without_a_worker() -> None:
    job = make_job()
    verdict = Verdict(Action.FAIL, "RendezvousLost", "the rendezvous store is gone")
    status = build_status(job, [worker(0)], None, LargeModelJobStatus(), verdict, datetime.now(UTC))
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.message == "the rendezvous store is gone"
