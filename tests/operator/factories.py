"""Small builders of jobs and pod views for the operator's table tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from lmjob_api import LargeModelJob
from lmjob_operator.pod_view import PodView

UID = "0f0e0d0c-1111-2222-3333-444455556666"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

TRAINING = {
    "model": {"architecture": "gpt", "layers": 2, "heads": 2, "hidden": 32, "seqLen": 32},
    "data": {"source": "/data/tiny.txt", "tokenizer": "bytes"},
    "steps": 200,
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def job_manifest(spec: dict[str, Any] | None = None, name: str = "demo") -> dict[str, Any]:
    """A valid manifest (built-in trainer, 2 workers) with `spec` merged in."""
    base = {"workers": {"replicas": 2}, "training": TRAINING}
    merged = deep_merge(base, spec or {})
    if "command" in merged:
        merged.pop("training", None)
    return {
        "apiVersion": "lmjob.dev/v1alpha1",
        "kind": "LargeModelJob",
        "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1},
        "spec": merged,
    }


def make_job(spec: dict[str, Any] | None = None, name: str = "demo") -> LargeModelJob:
    return LargeModelJob.model_validate(job_manifest(spec, name))


def worker(
    index: int,
    phase: str = "Running",
    *,
    round_: int = 0,
    bounds: str = "2-2",
    job: str = "demo",
    **fields: Any,
) -> PodView:
    return PodView(
        name=f"{job}-worker-{index}",
        uid=f"uid-{job}-{index}-{round_}",
        job=job,
        role="worker",
        index=index,
        rendezvous_round=round_,
        phase=phase,
        bounds=bounds,
        owner_uid=UID,
        **{"pod_ip": f"10.0.0.{index + 1}", **fields},
    )


def rendezvous(phase: str = "Running", job: str = "demo", **fields: Any) -> PodView:
    return PodView(
        name=f"{job}-rendezvous",
        uid=f"uid-{job}-rdzv",
        job=job,
        role="rendezvous",
        index=None,
        rendezvous_round=None,
        phase=phase,
        owner_uid=UID,
        **fields,
    )
