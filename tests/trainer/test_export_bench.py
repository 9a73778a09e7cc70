"""The export benchmark's latency table (benchmarks/export_formats.py): each runtime's ms is
its best round; its ratio pairs it with the eager lmjob model of the same stage round by
round (median of the rounds' ratios), so a busy round slows both sides of a ratio alike."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from export_formats import latency_rows, markdown

# Per-round medians; the second train round was busy (everything twice as slow).
MEDIANS = {
    ("train", "lmjob"): [4.0, 8.0, 3.0],
    ("train", "transformers"): [6.0, 12.0, 6.0],
    ("train", "onnxruntime"): [2.0, 4.0, 1.8],
    ("student", "lmjob"): [2.0, 2.5],
    ("student", "onnxruntime"): [0.5, 0.5],
}


@pytest.mark.parametrize(
    ("stage", "runtime", "ms", "ratio"),
    [
        ("train", "lmjob", 3.0, 1.0),
        ("train", "transformers", 6.0, 1.5),  # ratios 1.5, 1.5, 2.0
        ("train", "onnxruntime", 1.8, 0.5),  # ratios 0.5, 0.5, 0.6
        ("student", "lmjob", 2.0, 1.0),
        ("student", "onnxruntime", 0.5, 0.225),  # ratios 0.25, 0.2: an even count
    ],
)
def test_best_round_and_ratio_to_the_same_stage(stage, runtime, ms, ratio):
    row = next(r for r in latency_rows(MEDIANS) if r["stage"] == stage)
    assert row[runtime] == pytest.approx({"ms": ms, "ratio": ratio})


def test_table_shows_ratios_and_untimed_runtimes():
    results = {
        "exports": [],
        "stageOutputBytes": {},
        "latency": latency_rows(MEDIANS),
        "conditions": dict.fromkeys(
            ("seqLen", "threads", "warmup", "rounds", "repeats", "machine", "versions"), "x"
        ),
    }
    lines = markdown(results).splitlines()
    assert "| train | 3.00 (1.00×) | 6.00 (1.50×) | 1.80 (0.50×) | needs llama.cpp |" in lines
    # student has no transformers figure: a dash, not a made-up ratio.
    assert "| student | 2.00 (1.00×) | - | 0.50 (0.23×) | needs llama.cpp |" in lines
