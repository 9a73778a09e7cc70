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
        ([{**Q, "finetuneSteps": 5}], "compression.stages[0].finetuneSteps", "does not fine-tune"),
        ([Q, P], "compression.stages", "move it last"),
        ([L, {**P, "structure": "head"}], "compression.stages", "before the lowrank"),
        ([{**D, "student": {"layers": 6}}], "compression.stages", "smaller"),
        ([{**D, "student": {"hidden": 48, "heads": 5}}], "compression.stages", "multiple"),
        ([D, {**D, "name": "d2", "student": {"layers": 1}}], "compression.stages", "one distill"),
    ],
)
def test_the_trainer_refuses_what_the_api_refuses(
    stages: list[dict[str, Any]], path: str, words: str
) -> None:
    """The chain's rules live in the API models: the trainer's config loader applies them."""
    with pytest.raises(ManifestError) as err:
        _config(stages)
    assert [p for p in err.value.problems if p.path == path and words in p.message], err.value


def test_int4_needs_cuda_on_this_machine() -> None:
    config = _config([{**Q, "method": "int4-weight-only"}])
    problems = check_compression(config, cuda_devices=0)
    assert [p.path for p in problems] == ["compression.stages[0].method"]
    assert "CUDA" in problems[0].message
    with pytest.raises(ManifestError, match="CUDA"):
        validate_compression(config, cuda_devices=0)


@pytest.mark.parametrize("stages", [[P], [L], [D]])
def test_stages_that_train_need_data(stages: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    for source in (tmp_path / "empty.txt", tmp_path):  # an empty file, a folder of them
        problems = check_compression(_config(stages, str(source)), cuda_devices=0)
        assert [p.path for p in problems] == ["training.data.source"]


def test_good_chain_passes_and_quantize_alone_needs_no_data(tmp_path: Path) -> None:
    assert check_compression(_config([P, L, Q, D]), cuda_devices=0) == []
    (tmp_path / "empty.txt").write_text("")
    no_text = str(tmp_path / "empty.txt")
    assert check_compression(_config([{**P, "finetuneSteps": 0}, Q], no_text), cuda_devices=0) == []
    assert check_compression(_config([{**Q, "method": "int4-weight-only"}]), cuda_devices=1) == []
