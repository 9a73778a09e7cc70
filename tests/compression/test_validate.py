"""Pre-launch checks: every bad chain is refused with the field that is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import SHAKESPEARE

from lmjob_api.trainer_config import parse_trainer_config
from lmjob_api.validation import ManifestError
from lmjob_trainer.compression import check_compression, validate_compression


def _config(stages: list[dict[str, Any]], source: str = str(SHAKESPEARE)) -> Any:
    return parse_trainer_config(
        {
            "training": {
                "model": {"layers": 4, "heads": 4, "hidden": 64, "seqLen": 64},
                "data": {"source": source},
            },
            "compression": {"stages": stages},
        }
    )


P = {"name": "p", "type": "prune", "finetuneSteps": 10}
L = {"name": "l", "type": "lowrank", "rankRatio": 0.5}
Q = {"name": "q", "type": "quantize"}
D = {"name": "d", "type": "distill", "student": {"layers": 2}}


@pytest.mark.parametrize(
    ("stages", "path", "words"),
    [
        ([{**Q, "method": "int4-weight-only"}], "compression.stages[0].method", "CUDA"),
        ([{**Q, "finetuneSteps": 5}], "compression.stages[0].finetuneSteps", "does not fine-tune"),
        ([Q, P], "compression.stages[1].type", "move the quantize stage last"),
        ([L, {**P, "structure": "head"}], "compression.stages[1].structure", "before it"),
        ([{**D, "student": {"layers": 6}}], "compression.stages[0].student.layers", "larger"),
        (
            [{**D, "student": {"hidden": 48, "heads": 5}}],
            "compression.stages[0].student.hidden",
            "multiple",
        ),
        # The second student is compared with the first one, its teacher, not the trained model.
        (
            [D, {**D, "name": "d2", "student": {"layers": 3}}],
            "compression.stages[1].student.layers",
            "larger",
        ),
    ],
)
def test_bad_chains_are_refused_naming_the_field(
    stages: list[dict[str, Any]], path: str, words: str
) -> None:
    problems = check_compression(_config(stages), cuda_devices=0)
    assert [p for p in problems if p.path == path and words in p.message], problems
    with pytest.raises(ManifestError, match=words):
        validate_compression(_config(stages), cuda_devices=0)


@pytest.mark.parametrize("stages", [[P], [L], [D]])
def test_stages_that_train_need_data(stages: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    for source in (tmp_path / "empty.txt", tmp_path):  # an empty file, a folder of them
        problems = check_compression(_config(stages, str(source)), cuda_devices=0)
        assert [p.path for p in problems] == ["training.data.source"]


def test_good_chain_passes_and_quantize_alone_needs_no_data(tmp_path: Path) -> None:
    assert check_compression(_config([P, L, D, Q]), cuda_devices=0) == []
    (tmp_path / "empty.txt").write_text("")
    no_text = str(tmp_path / "empty.txt")
    assert check_compression(_config([{**P, "finetuneSteps": 0}, Q], no_text), cuda_devices=0) == []
    assert check_compression(_config([{**Q, "method": "int4-weight-only"}]), cuda_devices=1) == []
