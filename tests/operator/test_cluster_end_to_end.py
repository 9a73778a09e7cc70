"""End to end on the real control plane: a LargeModelJob is created, the operator (under
its own ServiceAccount) makes the pods, the real kube-scheduler places them on a local node
and that node's process kubelet runs them, as `lmjob cluster up`'s nodes do — the real
rendezvous store and a real torchrun with the built-in trainer. The job trains, compresses
and succeeds; its progress comes from the running trainer's metrics endpoint and its final
stage numbers from rank 0's termination message.

Each test has a node of its own, tainted NoSchedule: no other test's pods (those whose
status the harness plays, Pending for want of a node) are placed there, and the job's
template tolerates the taint and selects that node by name. The checkpoint claim is bound to
a hostPath PersistentVolume of the test's own, since the scheduler places no pod whose claim
is unbound."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from lmjob_api.goodput import LEDGER, Tally
from lmjob_api.kept_logs import DROPPED_MARK
from lmjob_api.termination import decode_stages
from lmjob_cli.localcluster.process_kubelet import ProcessKubelet
from lmjob_cli.main import main
from tests.operator.harness import (
    condition,
    create_job,
    free_port,
    job_status,
    on_node,
    patch_spec,
    phase_is,
    pods_of,
    wait_for,
)

pytestmark = pytest.mark.slow


def job_spec(text: Path, steps: int, node: str) -> dict:
    """A tiny GPT on one worker pod of two processes on `node`, checkpointing to claim `ckpt`."""
    return {
        "workers": {"replicas": 1, "procsPerWorker": 2, "template": on_node(node)},
        "training": {
            "model": {"layers": 2, "heads": 2, "hidden": 32, "seqLen": 32},
            "data": {"source": str(text)},
            "optimizer": {"lr": 3.0e-3},
            "schedule": {"warmupSteps": 0, "decay": "constant"},
            "steps": steps,
            "batch": {"microBatchSize": 4, "globalBatchSize": 8},
            "evaluation": {"everySteps": 100, "steps": 2},
            "checkpoint": {"everySteps": 100},
        },
        "compression": {"stages": [{"name": "int8", "type": "quantize", "method": "int8-dynamic"}]},
        "metrics": {"port": free_port()},
        "storage": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}},
    }


def wait_for_status(kube, namespace: str, ready: Callable[[dict], bool], what: str) -> dict:
    """Job e2e's status once `ready` holds for it."""

    def probe() -> dict | None:
        status = job_status(kube.custom, namespace, "e2e")
        return status if ready(status) else None

    return wait_for(probe, timeout=180, what=what)


def checkpointed(status: dict) -> bool:
    return bool((status.get("checkpoint") or {}).get("step"))


def lmjob(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_job_trains_compresses_and_succeeds(
    kubelet: ProcessKubelet,
    storage: Path,
    kube,
    namespace,
    corpus: Path,
    control_plane,
    capsys,
    operator,
) -> None:
    create_job(kube.custom, namespace, "e2e", job_spec(corpus, node=namespace, steps=300))
    running = wait_for_status(
        kube,
        namespace,
        lambda s: (s.get("progress") or {}).get("stage") == "train" and s["progress"].get("step"),
        "progress from the trainer",
    )
    # `lmjob logs` of the running worker, through the API server and the node's kubelet:
    # its last lines, then the whole log followed until the container exits.
    kc = ["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace]
    code, tail, err = lmjob(capsys, "logs", "e2e", "--tail", "3", *kc)
    assert code == 0, err
    assert len(tail.splitlines()) == 3 and tail in kubelet.log_of("e2e-worker-0", namespace), tail
    code, followed, err = lmjob(capsys, "logs", "e2e", "--follow", *kc)
    assert code == 0, err
    assert " msg=step " in followed and 'msg="trainer done"' in followed, followed[-3000:]
    assert followed == kubelet.log_of("e2e-worker-0", namespace)
    final = wait_for(phase_is(kube.custom, namespace, "e2e", "Succeeded"), timeout=240)
    worker_log = kubelet.log_of("e2e-worker-0", namespace)
    assert kubelet.errors == [], kubelet.errors
    assert kubelet.exit_codes.get("e2e-worker-0") == [0], worker_log[-3000:]

    assert running["phase"] in ("Running", "Compressing"), running
    assert running["progress"]["totalSteps"] == 300
    assert running["worldSize"] == 2

    train = json.loads((storage / "train" / "report.json").read_text())
    int8 = json.loads((storage / "int8" / "report.json").read_text())
    assert train["steps"] == 300 and train["worldSize"] == 2
    stages = {s["name"]: s for s in final["stages"]}
    assert [s["name"] for s in final["stages"]] == ["train", "int8"]
    assert stages["train"]["phase"] == stages["int8"]["phase"] == "Succeeded", stages
    assert stages["train"]["metrics"]["evalLoss"] == pytest.approx(train["evalLoss"], rel=1e-5)
    for metric, value in int8["metrics"].items():
        assert stages["int8"]["metrics"][metric] == pytest.approx(value, rel=1e-5), metric
    # The kubelet's copy of rank 0's last word, which status.stages was read from.
    pod = kube.core.read_namespaced_pod("e2e-worker-0", namespace)
    assert pod.spec.node_name == namespace  # bound there by the scheduler, not the test
    message = pod.status.container_statuses[0].state.terminated.message
    assert {s.name: s.phase for s in decode_stages(message) or []} == {
        "train": "Succeeded",
        "int8": "Succeeded",
    }
    assert final["workers"]["summary"] == "0/1"
    assert final["restarts"] == 0
    # Two ranks at the same pace: nobody is named a straggler.
    assert final["stragglers"] == [], final["stragglers"]
    assert (condition(final, "Stragglers") or {}).get("status") != "True", final["conditions"]
    # Every evaluation the scrapes saw (evaluation.everySteps 100) stays in status.
    seen = [(e["stage"], e["step"]) for e in final["evaluations"]]
    assert seen and seen == sorted(set(seen)), final["evaluations"]
    assert all(stage == "train" and step % 100 == 0 for stage, step in seen), seen
    # Goodput: the trainer's ledger seconds plus the wait for the first launch, adding up to
    # the time from creation to completion; the operator exports the same ratio.
    goodput = final["goodput"]
    assert 0 < goodput["ratio"] <= 1 and goodput["seconds"]["productive"] > 0, goodput
    assert goodput["seconds"]["scheduling"] > 0 and goodput["seconds"]["setup"] > 0, goodput
    assert goodput["seconds"]["rendezvous"] > 0, goodput  # the launcher forming the group
    assert goodput["seconds"]["redone"] == goodput["seconds"]["restart"] == 0, goodput
    assert sum(goodput["seconds"].values()) == pytest.approx(goodput["wallSeconds"], abs=0.5)
    ledger = Tally.of_file(storage / LEDGER)
    assert goodput["seconds"]["productive"] <= round(ledger.seconds["productive"], 1), goodput
    exported = f'lmjob_operator_job_goodput_ratio{{job="e2e",namespace="{namespace}"}} '
    assert exported + str(goodput["ratio"]) in operator.metrics()


def rank_0_pod(kubelet: ProcessKubelet, namespace: str, pods: list[str]) -> str:
    """The pod whose process holds global rank 0 now: only rank 0 logs steps, so of each pod's
    log, the one whose last step line is the latest."""

    def last_step(pod: str) -> int:
        lines = [ln for ln in kubelet.log_of(pod, namespace).splitlines() if " msg=step " in ln]
        return int(lines[-1].split(" step=")[1].split()[0]) if lines else -1

    return max(pods, key=last_step)


def test_scale_up_then_losing_rank_0s_pod_leaves_the_other_to_rerendezvous_and_finish(
    kubelet: ProcessKubelet, storage: Path, kube, namespace, kubectl, corpus: Path
) -> None:
    """`kubectl scale` 1 → 2 while training: the operator adds a pod to the same rendezvous
    and torchrun re-forms the group at the larger size (a resize is not a failure). Then the
    pod holding rank 0 is force-deleted (its node gone: no grace, no save). The other pod is
    not restarted: its torchrun agent re-forms the group through the rendezvous store (a pod
    of its own, so rank 0's loss does not take the rendezvous with it), the new workers
    resume from the latest complete checkpoint, the operator replaces the lost pod, which
    joins, and the job finishes at two workers, the loss counted as no failure.

    (A worker that fails instead — exits non-zero — restarts the group: the stall test and
    tests/operator/test_cluster_failures.py cover that path.)"""
    spec = job_spec(corpus, node=namespace, steps=900)
    spec["workers"].update(replicas=1, minReplicas=1, maxReplicas=2, procsPerWorker=1)
    create_job(kube.custom, namespace, "e2e", spec)
    first = wait_for_status(kube, namespace, checkpointed, "a first checkpoint")
    kubectl("scale", "lmj/e2e", "--replicas=2", "-n", namespace)
    at_loss = wait_for_status(
        kube,
        namespace,
        lambda s: s.get("worldSize") == 2 and s["checkpoint"]["step"] > first["checkpoint"]["step"],
        "a checkpoint at two workers",
    )
    assert at_loss["restarts"] == 0, at_loss  # a resize is not a failure
    pods = ["e2e-worker-0", "e2e-worker-1"]
    lost = rank_0_pod(kubelet, namespace, pods)
    survivor = next(p for p in pods if p != lost)
    kube.core.delete_namespaced_pod(lost, namespace, grace_period_seconds=0)
    final = wait_for(phase_is(kube.custom, namespace, "e2e", "Succeeded"), timeout=300)
    logs = {p: kubelet.log_of(p, namespace) for p in pods}
    assert kubelet.errors == [], kubelet.errors
    # One incarnation of the survivor, from start to success: it was never restarted.
    assert kubelet.exit_codes.get(survivor) == [0], (kubelet.exit_codes, logs[survivor][-3000:])
    assert kubelet.exit_codes.get(lost, [None])[-1] == 0, kubelet.exit_codes
    assert final["restarts"] == 0, final  # a lost pod is replaced, not a failure
    # The group re-formed (at the scale-up, after the loss): that time is not productive.
    assert final["goodput"]["seconds"]["rendezvous"] > 0, final["goodput"]
    # The re-formed group resumed from a checkpoint at or after the one seen before the loss:
    # every step it did twice comes after that checkpoint, and it logged the resume.
    history = [
        json.loads(line) for line in (storage / "train" / "history.jsonl").read_text().splitlines()
    ]
    steps = [h["step"] for h in history if "loss" in h]
    assert steps[-1] == 900
    redone = [s for i, s in enumerate(steps[1:], 1) if s <= steps[i - 1]]
    assert all(s > at_loss["checkpoint"]["step"] for s in redone), (at_loss, redone[:3])
    resumed = [
        int(line.split("step-")[1][:9])
        for log in logs.values()
        for line in log.splitlines()
        if "resumed from checkpoint" in line
    ]
    assert resumed and max(resumed) >= at_loss["checkpoint"]["step"], resumed
    sizes = [h["world_size"] for h in history if "world_size" in h]
    assert sizes[0] == 1 and sizes[-1] == 2, sorted(set(sizes))
    train = json.loads((storage / "train" / "report.json").read_text())
    assert train["steps"] == 900 and train["phase"] == "Succeeded"


@pytest.mark.parametrize(
    ("source", "error", "within"),
    [
        # Caught by the worker's launcher before torch is imported.
        ("no-such-corpus.txt", "no-such-corpus.txt does not exist", 30),
        ("empty-folder", "empty-folder holds no .txt files", 30),
        # Caught inside a worker process (tokenising shows too few tokens), which marks it
        # for the launcher: the store's torch import, then the worker's, come first (about
        # 20 s under load).
        ("tiny.txt", "tokens are too few for model.seqLen", 45),
    ],
    ids=["missing file", "folder without text", "text shorter than a sequence"],
)
def test_startup_config_error_fails_the_job_fast(
    kubelet: ProcessKubelet,
    storage: Path,
    kube,
    namespace,
    corpus: Path,
    control_plane,
    capsys,
    source: str,
    error: str,
    within: float,
) -> None:
    """A data source admission cannot check (files): the worker pod exits 78 and the job is
    Failed within seconds, with the trainer's message, no restart counted and no pod
    recreated — neither torchrun nor the operator retries it. cleanPodPolicy All deletes the
    failed pod; `lmjob logs --previous` still shows its last lines, kept by the operator."""
    (corpus.parent / "empty-folder").mkdir()
    (corpus.parent / "tiny.txt").write_text("To be.\n")
    spec = job_spec(corpus, node=namespace, steps=300)
    spec["training"]["data"]["source"] = str(corpus.parent / source)
    spec["workers"]["procsPerWorker"] = 1  # one torch import less on a busy 2-core machine
    spec.setdefault("runPolicy", {})["cleanPodPolicy"] = "All"
    started = time.monotonic()
    create_job(kube.custom, namespace, "e2e", spec)
    final = wait_for(phase_is(kube.custom, namespace, "e2e", "Failed"), timeout=60)
    seconds = time.monotonic() - started
    worker_log = kubelet.log_of("e2e-worker-0", namespace)
    assert kubelet.errors == [], kubelet.errors
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ConfigError", failed
    assert "exited with code 78" in failed["message"], failed
    assert "cannot run this config: training.data.source" in failed["message"], failed
    assert error in failed["message"], failed
    assert seconds < within, (seconds, worker_log[-3000:])
    time.sleep(2)
    assert kubelet.exit_codes.get("e2e-worker-0") == [78], worker_log[-3000:]
    assert "attempts left" not in worker_log, worker_log[-3000:]  # torchrun never restarted
    assert job_status(kube.custom, namespace, "e2e")["restarts"] == 0

    # The failed pod is deleted (cleanPodPolicy All); its log outlives it, as the Failed
    # condition says, through `lmjob logs` from the user's machine.
    assert failed["message"].endswith("last lines: lmjob logs e2e --previous"), failed
    wait_for(lambda: not pods_of(kube.core, namespace, "e2e"), timeout=60, what="pods deleted")
    kc = ["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace]
    code, kept, err = lmjob(capsys, "logs", "e2e", "--previous", *kc)
    assert code == 0, err
    assert err == "lmjob: showing the log tail kept as e2e-logs/worker-0.attempt-0.failed.log\n"
    assert error in kept and worker_log.endswith(kept), (kept[-3000:], worker_log[-3000:])
    code, last, err = lmjob(capsys, "logs", "e2e", "--tail", "2", *kc)
    assert code == 0 and err.startswith("lmjob: pod e2e-worker-0 is gone: showing"), err
    assert last == "".join(kept.splitlines(keepends=True)[-2:])
    code, _, err = lmjob(capsys, "logs", "e2e", "--worker", "1", "--previous", *kc)
    assert code == 1 and err == "lmjob: no log of worker 1 of job e2e is kept\n", err


def test_suspend_and_eviction_each_redo_at_most_one_step(
    kubelet: ProcessKubelet, storage: Path, kube, namespace, corpus: Path, control_plane, capsys
) -> None:
    """Stopped the two ways a cluster stops a worker — `runPolicy.suspend` (as `kubectl
    patch` or Kueue does) and a drain through the eviction API — the trainer saves the step
    in flight on SIGTERM, within the pod's grace period (the process kubelet sends SIGTERM,
    then SIGKILL after it), and resumes from it: at most one step is done twice, no
    periodic checkpoint in between (checkpoint.everySteps is beyond the run), and neither
    stop counts as a restart."""
    spec = job_spec(corpus, node=namespace, steps=100_000)
    spec.pop("compression")
    spec["workers"]["procsPerWorker"] = 1
    spec["training"]["checkpoint"] = {"everySteps": 100_000}
    spec["training"]["evaluation"] = {"everySteps": 100_000, "steps": 1}
    create_job(kube.custom, namespace, "e2e", spec)

    def past(step: int) -> Callable[[dict], bool]:
        return lambda s: (s.get("progress") or {}).get("step", 0) > step

    wait_for_status(kube, namespace, past(3), "training under way")
    patch_spec(kube.custom, namespace, "e2e", {"runPolicy": {"suspend": True}})
    wait_for(phase_is(kube.custom, namespace, "e2e", "Suspended"), timeout=60)
    wait_for(lambda: not pods_of(kube.core, namespace, "e2e"), timeout=60, what="pods gone")
    patch_spec(kube.custom, namespace, "e2e", {"runPolicy": {"suspend": False}})
    resumed = wait_for_status(
        kube, namespace, lambda s: past(0)(s) and checkpointed(s), "resumed from the save"
    )
    saved = resumed["checkpoint"]["step"]
    wait_for_status(kube, namespace, past(saved + 3), "training on after the resume")
    # The suspension deleted the running worker, its log tail kept first: while the resumed
    # pod (the same round) runs, `lmjob logs --previous` shows the suspended one's lines.
    kc = ["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace]
    code, kept, err = lmjob(capsys, "logs", "e2e", "--previous", *kc)
    assert code == 0 and err.endswith(" e2e-logs/worker-0.attempt-0.log\n"), err
    kept = kept.removeprefix(DROPPED_MARK)
    assert " msg=step " in kept and kept in kubelet.log_of("e2e-worker-0", namespace), kept[-2000:]
    # The save's measure reached status, and sizes the next pods' grace period (30 s floor).
    assert resumed["checkpoint"]["saveSeconds"] > 0, resumed["checkpoint"]

    old = kube.core.read_namespaced_pod("e2e-worker-0", namespace)
    assert old.spec.termination_grace_period_seconds == 30
    kube.core.create_namespaced_pod_eviction(
        "e2e-worker-0",
        namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name="e2e-worker-0", namespace=namespace)),
    )
    wait_for(
        lambda: any(
            p.metadata.uid != old.metadata.uid for p in pods_of(kube.core, namespace, "e2e")
        ),
        timeout=60,
        what="the evicted worker's replacement",
    )
    final = wait_for_status(
        kube,
        namespace,
        lambda s: (
            checkpointed(s)
            and s["checkpoint"]["step"] > saved
            and past(s["checkpoint"]["step"] + 3)(s)
        ),
        "resumed after the eviction",
    )
    assert kubelet.errors == [], kubelet.errors
    # Two stops that ended before the grace period did (no SIGKILL: 137), and neither
    # spent backoffLimit.
    stops = kubelet.stopped.get("e2e-worker-0", [])
    assert len(stops) == 2 and 137 not in stops, kubelet.stopped
    assert final["restarts"] == 0
    lines = (storage / "train" / "history.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if '"loss"' in line]
    redone = len(steps) - len(set(steps))
    assert redone <= 2, f"{redone} steps redone over two stops"
    assert sorted(set(steps)) == list(range(min(steps), max(steps) + 1))  # none skipped
