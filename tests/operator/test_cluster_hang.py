"""A hang end to end on the real control plane (docs/operator.md, "Hangs"): one worker pod
of two real torchrun processes, one of them frozen with SIGSTOP mid-training, as a rank
stuck in a driver or on a dead NIC. The operator sees it through rank 0's metrics endpoint
— the watchdog's stalled seconds past `training.hang.timeoutSeconds` when another rank is
frozen, no answer at all when rank 0 is — reports `Stalled`, restarts the group from the
latest checkpoint (the frozen process killed after the stall's short grace period, since a
stopped process never acts on SIGTERM), counts the restart, and the job succeeds."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmjob_api.kept_logs import DROPPED_MARK, kept_logs_name
from lmjob_cli.localcluster.process_kubelet import ProcessKubelet
from lmjob_trainer.stragglers import TEST_SLOW_RANK_ENV
from tests.operator.harness import condition, create_job, job_status, phase_is, wait_for
from tests.operator.test_cluster_end_to_end import job_spec
from tests.support.processes import rank_pid

pytestmark = pytest.mark.slow

TIMEOUT = 8  # training.hang.timeoutSeconds
SCRAPE_SECONDS = 1.0  # the tests' LMJOB_RESYNC_SECONDS
STEPS = 60
STEP_SECONDS = 0.25  # every step slowed (test hook) so training outlasts the freeze


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` (None: gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.parametrize(
    ("frozen_rank", "reason"),
    [(1, "StepStalled"), (0, "TrainerUnresponsive")],
    ids=["another rank frozen", "rank 0 frozen"],
)
def test_frozen_rank_is_stalled_then_restarted_and_the_job_succeeds(
    kubelet: ProcessKubelet,
    storage: Path,
    kube,
    namespace,
    corpus: Path,
    operator,
    frozen_rank: int,
    reason: str,
) -> None:
    began = time.monotonic()
    kubelet.extra_env[TEST_SLOW_RANK_ENV] = f"0:{STEP_SECONDS}"
    spec = job_spec(corpus, node=namespace, steps=STEPS)
    spec.pop("compression")
    spec["training"].update(
        evaluation={"everySteps": STEPS, "steps": 1},
        checkpoint={"everySteps": 5},
        hang={"timeoutSeconds": TIMEOUT},
    )
    create_job(kube.custom, namespace, "e2e", spec)

    def training(s: dict) -> bool:
        return (s.get("checkpoint") or {}).get("step", 0) >= 5 and s["progress"]["step"] >= 8

    wait_for(lambda: training(job_status(kube.custom, namespace, "e2e")), 120, 0.2, "training")
    pid = rank_pid(kubelet, "e2e-worker-0", frozen_rank)
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()

    def stalled() -> dict | None:
        s = job_status(kube.custom, namespace, "e2e")
        return s if (condition(s, "Stalled") or {}).get("status") == "True" else None

    at_stall = wait_for(stalled, TIMEOUT + 30, 0.1, "Stalled")
    detected = time.monotonic() - frozen_at
    cond = condition(at_stall, "Stalled")
    assert cond["reason"] == reason, cond
    # The step was last seen advancing at most a (slowed) step before the freeze; the
    # scrape interval and the status write's round trip on a busy 2-core machine on top.
    assert detected <= TIMEOUT + SCRAPE_SECONDS + 4, (detected, cond)
    named = cond["message"].split(" are in ")[1]  # where the stacks are, as pods see it

    final = wait_for(phase_is(kube.custom, namespace, "e2e", "Succeeded"), timeout=120)
    log = kubelet.log_of("e2e-worker-0", namespace)
    assert kubelet.errors == [], kubelet.errors
    assert final["restarts"] == 1, final
    assert condition(final, "Stalled")["status"] == "False", final["conditions"]
    assert condition(final, "Restarting")["status"] == "False", final["conditions"]
    # The frozen incarnation was stopped by its pod's deletion (a stopped process only dies
    # of the SIGKILL that ends the grace period), the next one succeeded.
    assert len(kubelet.stopped.get("e2e-worker-0", [])) == 1, kubelet.stopped
    assert process_state(pid) in (None, "Z"), process_state(pid)
    assert kubelet.exit_codes.get("e2e-worker-0", [None])[-1] == 0, log[-3000:]
    resumed = [line for line in log.splitlines() if "resumed from checkpoint" in line]
    assert resumed, log[-3000:]

    # Every rank still running saved its stacks, where the condition said; the frozen one
    # cannot, and that names it.
    [folder] = storage.glob("hangs/train-step-*")
    exact = reason == "StepStalled"  # else: rank 0 may have done a step after its last answer
    assert named == (
        f"/checkpoints/hangs/{folder.name}/" if exact else "/checkpoints/hangs/train-step-*/"
    )
    saved = sorted(p.name for p in folder.glob("rank-*.txt"))
    assert saved == [f"rank-{1 - frozen_rank}.txt"], (saved, list(storage.glob("hangs/*/*")))
    # Waiting in a collective of the stage's loop: the step's, or a checkpoint save's.
    stacks = (folder / saved[0]).read_text()
    assert "lmjob_trainer/loop.py" in stacks and "run_steps" in stacks, stacks
    # ... and names the frozen rank, its sibling process in the pod, as stopped.
    assert f"# pod process: rank {frozen_rank} pid {pid} state T (stopped)" in stacks, stacks

    # The hung incarnation's log outlived its pod, deleted by the restart: its tail is kept
    # in the job's record (`lmjob logs e2e --previous` read it while the next one ran).
    record = kube.core.read_namespaced_config_map(kept_logs_name("e2e"), namespace).data or {}
    first = record.get("worker-0.attempt-0.log", "").removeprefix(DROPPED_MARK)
    assert " msg=step " in first and first in log, (sorted(record), first[-2000:])

    events = kube.core.list_namespaced_event(namespace).items
    assert any(e.reason == reason and e.type == "Warning" for e in events), [
        (e.reason, e.message) for e in events
    ]
    stalls = [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(operator.metrics())
        for sample in family.samples
        if sample.name == "lmjob_operator_stalls_total"
    ]
    assert stalls == [({"namespace": namespace, "job": "e2e", "reason": reason}, 1.0)], stalls
    print(f"hang e2e ({reason}): detected {detected:.1f}s after the freeze, "
          f"{time.monotonic() - began:.0f}s in all")  # fmt: skip
