"""The termination-message codec shared by the trainer (writes) and the operator (reads)."""

from __future__ import annotations

import json

from lmjob_api.status import StageStatus
from lmjob_api.termination import (
    ESSENTIAL_METRICS,
    FORMAT,
    MAX_BYTES,
    MAX_ERROR,
    decode_error,
    decode_stages,
    encode_stages,
)

FULL = {
    "evalLoss": 1.7955404911190271,
    "perplexity": 6.0253146850183175,
    "params": 834304.0,
    "bytes": 1880573.0,
    "latencyMs": 2.643965499373735,
    "wallSeconds": 9.08003373000065,
    "inputEvalLoss": 1.7955404911190271,
    "evalLossBeforeFinetune": 1.8763913251459599,
    "sparsity": 0.5,
    "weightSparsity": 0.5,
    "linearBytes": 3145728.0,
    "evalLossChange": 0.00023904600004343024,
    "linearCompression": 1.0,
}


def stage(name: str, phase: str = "Succeeded", metrics: dict | None = None) -> StageStatus:
    return StageStatus(
        name=name,
        phase=phase,
        checkpoint=f"/checkpoints/{name}/final",
        metrics=FULL if metrics is None else metrics,
    )


def test_round_trip_keeps_six_significant_digits() -> None:
    stages = [stage("train", metrics={"evalLoss": 1.7955404911, "params": 834304}), stage("q")]
    decoded = decode_stages(encode_stages(stages))
    assert decoded is not None
    assert [(s.name, s.phase, s.checkpoint) for s in decoded] == [
        ("train", "Succeeded", "/checkpoints/train/final"),
        ("q", "Succeeded", "/checkpoints/q/final"),
    ]
    assert decoded[0].metrics == {"evalLoss": 1.79554, "params": 834304.0}
    assert set(decoded[1].metrics) == set(FULL)


def test_non_finite_numbers_and_empty_parts_are_left_out() -> None:
    text = encode_stages([StageStatus(name="p", phase="Running", metrics={"a": float("nan")})])
    assert json.loads(text)["stages"] == [{"name": "p", "phase": "Running"}]


def test_too_many_stages_keep_the_essentials_within_the_limit() -> None:
    many = [stage(f"stage-{i:02d}-with-a-long-name") for i in range(12)]
    text = encode_stages(many)
    assert len(text.encode()) <= MAX_BYTES
    decoded = decode_stages(text)
    assert decoded is not None and len(decoded) == 12
    assert all(set(s.metrics) <= set(ESSENTIAL_METRICS) for s in decoded)
    assert all(s.metrics["evalLoss"] == 1.79554 for s in decoded)


def test_not_ours_is_none() -> None:
    assert decode_stages("Error: CUDA out of memory") is None
    assert decode_stages(json.dumps({"stages": []})) is None  # no format marker
    assert decode_stages(encode_stages([stage("train")])[:-20]) is None  # cut short
    assert decode_stages(json.dumps({"format": FORMAT, "stages": [{"phase": "x"}]})) is None


def test_an_unknown_phase_reads_as_pending() -> None:
    text = json.dumps({"format": FORMAT, "stages": [{"name": "q", "phase": "Paused"}]})
    assert decode_stages(text) == [StageStatus(name="q", phase="Pending")]


def test_the_error_travels_cut_to_its_room() -> None:
    text = encode_stages([stage("train", "Failed")], "ValueError: " + "x" * 2000)
    error = decode_error(text)
    assert error is not None and error.startswith("ValueError: x") and len(error) == MAX_ERROR
    assert decode_stages(text)[0].phase == "Failed"
    assert decode_error(encode_stages([stage("train")])) is None
    assert decode_error("RuntimeError: plain text") is None


def test_the_most_stages_a_job_may_have_fit_with_an_error() -> None:
    """train, the most compression stages, and every format of the most exported stages,
    all with the longest names: the phases of every one still arrive."""
    from lmjob_api.compression import MAX_STAGES
    from lmjob_api.export import EXPORT_FORMATS, MAX_EXPORT_STAGES, export_name

    names = [f"s{i:02d}-" + "x" * 36 for i in range(MAX_STAGES)]
    exports = [export_name(n, f) for n in names[:MAX_EXPORT_STAGES] for f in EXPORT_FORMATS]
    stages = [stage(n) for n in ["train", *names, *exports]]
    text = encode_stages(stages, "E" * (MAX_ERROR * 2))
    assert len(text.encode()) <= MAX_BYTES
    decoded = decode_stages(text)
    assert decoded is not None
    assert [s.name for s in decoded] == ["train", *names, *exports]
    assert decode_error(text) is not None
