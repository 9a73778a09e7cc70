"""LargeModelSweeps end to end on the real control plane: the operator (under its own
ServiceAccount) turns a sweep into trial LargeModelJobs that the process kubelet runs for real
(tiny GPTs under torchrun), reads their evaluation losses from the jobs' status, prunes by
the median rule, and keeps the search in the sweep's status only — so an operator killed
mid-sweep and restarted creates no trial twice and loses none.

Trials run one at a time (parallelTrials 1): every pod of the process kubelet shares this
machine's loopback, so two jobs at once would share the rendezvous store's fixed port and
the template's metrics port. A real cluster gives each pod its own address.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import watch

from lmjob_api.sweep import PLURAL as SWEEP_PLURAL
from lmjob_trainer.stragglers import TEST_SLOW_RANK_ENV
from tests.operator.harness import GROUP, VERSION, free_port, get_job, on_node, wait_for
from tests.support.invalid_jobs import load_sweep_cases

pytestmark = pytest.mark.slow

SWEEP = "lr"
MAX_TRIALS = 6  # issue 14: a sweep of at least 6 short trials
# The random sampler's seed: its learning rates put a trial far below every earlier one
# (asserted below), which the median rule must prune.
SEED = 3
STEPS = 50
# Every step sleeps this long (the trainer's test hook, set on the node: LMJOB_* names are
# lmjob's own, which a manifest may not set): a trial trains for at least STEPS × this, so a
# pruned trial is still running when its step-10 loss reaches the sweep, however fast the
# machine.
STEP_SECONDS = 0.1


def sweep_manifest(name: str, corpus: Path, node: str) -> dict[str, Any]:
    """A random search over a tiny GPT's learning rate, median-pruned after 10 steps."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LargeModelSweep",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "workers": {
                    "replicas": 1,
                    "procsPerWorker": 1,
                    "template": on_node(node),
                },
                "training": {
                    "model": {"layers": 1, "heads": 2, "hidden": 32, "seqLen": 32},
                    "data": {"source": str(corpus)},
                    "optimizer": {"lr": 3.0e-3},
                    "schedule": {"warmupSteps": 0, "decay": "constant"},
                    "steps": STEPS,
                    "batch": {"microBatchSize": 4, "globalBatchSize": 4},
                    "evaluation": {"everySteps": 10, "steps": 2},
                    "checkpoint": {"everySteps": STEPS},
                },
                "metrics": {"port": free_port()},
            },
            "parameters": [
                {
                    "path": "training.optimizer.lr",
                    "type": "float",
                    "low": 1.0e-5,
                    "high": 1.0e-2,
                    "log": True,
                }
            ],
            "objective": {"stage": "train", "direction": "minimize"},
            "algorithm": {"type": "random", "seed": SEED},
            "earlyStopping": {"type": "median", "minSteps": 10, "startupTrials": 1},
            "maxTrials": MAX_TRIALS,
            "parallelTrials": 1,
        },
    }


def get_sweep(kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, SWEEP_PLURAL, name)


def sweep_status(kube, namespace: str, name: str) -> dict[str, Any]:
    return get_sweep(kube, namespace, name).get("status") or {}


def create_sweep(kube, namespace: str, manifest: dict[str, Any]) -> None:
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, SWEEP_PLURAL, manifest)


def events_of(kube, namespace: str, kind: str, name: str) -> list[Any]:
    return [
        e
        for e in kube.core.list_namespaced_event(namespace).items
        if e.involved_object.kind == kind and e.involved_object.name == name
    ]


def metric(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def printed_columns(kubectl, namespace: str) -> dict[str, str]:
    """`kubectl get lms -o wide` of the sweep, header → cell."""
    out = kubectl("get", "lms", SWEEP, "-n", namespace, "-o", "wide").stdout.splitlines()
    return dict(zip(out[0].split(), out[1].split(), strict=True))


class TrialJobWatch:
    """Records every trial job the API server reports added, and kills the operator the
    moment the job of trial `kill_at` appears: between the sweep's status write and the
    rest of that pass."""

    def __init__(self, kube, namespace: str, operator, kill_at: str) -> None:
        self.added: list[tuple[str, str]] = []
        self.killed = threading.Event()
        self._stop = threading.Event()
        self._args = (kube, namespace, operator, kill_at)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        kube, namespace, operator, kill_at = self._args
        stream = watch.Watch()
        while not self._stop.is_set():
            try:
                self._watch(stream, kube, namespace, operator, kill_at)
            except Exception:  # the control plane going away at the end of the session
                if not self._stop.wait(0.5):
                    continue
                return

    def _watch(self, stream: watch.Watch, kube, namespace: str, operator, kill_at: str) -> None:
        for event in stream.stream(
            kube.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "largemodeljobs",
            label_selector=f"lmjob.dev/sweep={SWEEP}",
            timeout_seconds=5,
        ):
            meta = event["object"]["metadata"]
            if event["type"] == "ADDED" and (meta["name"], meta["uid"]) not in self.added:
                self.added.append((meta["name"], meta["uid"]))
                if meta["name"] == kill_at and not self.killed.is_set():
                    operator.kill()
                    self.killed.set()
            if self._stop.is_set():
                stream.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_sweep_prunes_finds_the_best_and_survives_an_operator_kill(
    kubelet, operator, kube, namespace, corpus: Path, kubectl, control_plane
) -> None:
    kubelet.extra_env[TEST_SLOW_RANK_ENV] = f"0:{STEP_SECONDS}"
    audit_from = control_plane.audit_offset()
    jobs = TrialJobWatch(kube, namespace, operator, kill_at=f"{SWEEP}-2")
    create_sweep(kube, namespace, sweep_manifest(SWEEP, corpus, node=namespace))
    try:
        assert jobs.killed.wait(180), "trial 2's job never appeared"
        operator.start()
        status = wait_for(
            lambda: (s := sweep_status(kube, namespace, SWEEP)).get("phase") == "Succeeded" and s,
            timeout=300,
            interval=0.5,
            what="the sweep to succeed",
        )
    finally:
        jobs.stop()
    assert kubelet.errors == [], kubelet.errors

    # Every trial once: numbers 0..n-1, each job created once (by the API server's audit
    # log, across both operator processes) and never replaced by another of its name.
    trials = status["trials"]
    names = [f"{SWEEP}-{i}" for i in range(MAX_TRIALS)]
    assert [t["number"] for t in trials] == list(range(MAX_TRIALS)), trials
    assert [t["name"] for t in trials] == names
    assert status["summary"] == f"{MAX_TRIALS}/{MAX_TRIALS}"
    creates = [
        (e["objectRef"].get("name"), e["responseStatus"]["code"])
        for e in control_plane.audit_events(audit_from)
        if (e.get("objectRef") or {}).get("resource") == "largemodeljobs"
        and (e.get("objectRef") or {}).get("namespace") == namespace
        and not (e.get("objectRef") or {}).get("subresource")
        and e.get("user", {}).get("username", "").endswith(":lmjob-operator")
        and e["verb"] == "create"
    ]
    created = [name for name, code in creates if code == 201]
    assert sorted(created) == names, f"a trial job was created twice or never: {creates}"
    assert sorted(name for name, _ in jobs.added) == names, jobs.added

    # The trial far below every earlier learning rate was pruned, with the rule's reason,
    # and its job deleted.
    rates = [t["parameters"]["training.optimizer.lr"] for t in trials]
    slow = min(range(MAX_TRIALS), key=lambda i: rates[i])
    assert slow > 0 and rates[slow] * 3 < min(rates[:slow]), (
        f"seed {SEED} no longer samples a learning rate far below every earlier one: "
        f"{rates}; pick another seed"
    )
    pruned = [t for t in trials if t["state"] == "Pruned"]
    assert trials[slow]["state"] == "Pruned", trials[slow]
    assert status["pruned"] == len(pruned) >= 1
    for trial in pruned:
        assert trial["reason"], trial
        assert trial["step"] >= 10, trial
        wait_for(
            lambda name=trial["name"]: get_job(kube.custom, namespace, name) is None,
            timeout=30,
            what=f"pruned trial job {trial['name']} gone",
        )

    # Each Complete trial's value is its job's final evaluation loss; the best is the least.
    complete = [t for t in trials if t["state"] == "Complete"]
    assert complete and status["completed"] == len(complete)
    for trial in complete:
        job = get_job(kube.custom, namespace, trial["name"])
        assert job is not None and job["status"]["phase"] == "Succeeded", trial
        (train,) = [s for s in job["status"]["stages"] if s["name"] == "train"]
        assert trial["value"] == pytest.approx(train["metrics"]["evalLoss"], rel=1e-6)
        owner = job["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == (
            "LargeModelSweep",
            SWEEP,
            True,
        )
        assert job["metadata"]["labels"]["lmjob.dev/trial"] == str(trial["number"])
    winner = min(complete, key=lambda t: t["value"])
    best = status["best"]
    assert (best["number"], best["name"]) == (winner["number"], winner["name"])
    assert best["value"] == winner["value"]
    assert best["parameters"] == winner["parameters"]

    columns = printed_columns(kubectl, namespace)
    assert columns["PHASE"] == "Succeeded"
    assert columns["TRIALS"] == f"{MAX_TRIALS}/{MAX_TRIALS}"
    assert columns["PRUNED"] == str(len(pruned))
    assert float(columns["BEST"]) == pytest.approx(winner["value"], rel=1e-6)
    assert columns["BEST-TRIAL"] == winner["name"]

    # Events and metrics are posted and set just after the status write the test saw.
    wanted = {"TrialCreated", "TrialPruned", "BestTrial", "Succeeded"}
    wait_for(
        lambda: wanted <= {e.reason for e in events_of(kube, namespace, "LargeModelSweep", SWEEP)},
        timeout=10,
        what=f"events {wanted} on the sweep",
    )
    wait_for(
        lambda: metric(operator.metrics(), 'lmjob_operator_sweeps{phase="Succeeded"}') == 1,
        timeout=10,
        what="the sweep counted Succeeded",
    )
    text = operator.metrics()
    assert metric(text, 'lmjob_operator_sweep_trials{state="Pruned"}') == len(pruned)
    assert metric(text, 'lmjob_operator_sweep_trials{state="Complete"}') == len(complete)

    # The sweep owns its trials: deleting it deletes their jobs (garbage collection).
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, SWEEP_PLURAL, SWEEP)
    wait_for(
        lambda: (
            not kube.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "largemodeljobs"
            )["items"]
        ),
        timeout=60,
        interval=0.5,
        what="the trial jobs garbage-collected with their sweep",
    )


OFFLINE_CASES = load_sweep_cases(server=False)


def test_sweeps_the_job_rules_reject_fail_without_a_trial(operator, kube, namespace) -> None:
    """What the API server admits but no trial could run with (a bound the job rejects, a
    grid past maxTrials, ...): the sweep goes Failed with the `Invalid` condition naming the
    field as `lmjob validate` does, and no job is ever created."""
    for case_id, manifest, _ in OFFLINE_CASES:
        manifest["metadata"]["name"] = case_id
        create_sweep(kube, namespace, manifest)
    for case_id, _, field in OFFLINE_CASES:
        status = wait_for(
            lambda name=case_id: (
                (s := sweep_status(kube, namespace, name)).get("phase") == "Failed" and s
            ),
            timeout=30,
            what=f"sweep {case_id} failed",
        )
        (invalid,) = [c for c in status["conditions"] if c["type"] == "Invalid"]
        assert (invalid["status"], invalid["reason"]) == ("True", "InvalidSpec"), invalid
        assert f"{field}:" in invalid["message"], (case_id, invalid)
        assert not status.get("trials"), status
        wait_for(
            lambda name=case_id: (
                "InvalidSpec"
                in {e.reason for e in events_of(kube, namespace, "LargeModelSweep", name)}
            ),
            timeout=10,
            what=f"an InvalidSpec event on {case_id}",
        )
    jobs = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "largemodeljobs")
    assert jobs["items"] == []
    # Never retried: later passes (one a second) leave the status as it was.
    before = {c: sweep_status(kube, namespace, c) for c, _, _ in OFFLINE_CASES}
    time.sleep(2.5)
    assert {c: sweep_status(kube, namespace, c) for c, _, _ in OFFLINE_CASES} == before
