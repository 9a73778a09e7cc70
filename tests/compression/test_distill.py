"""Distillation: the loss formula, the student's shape and its start from the teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from lmjob_api.compression import DistillStage, LowRankStage, PruneStage, StudentSpec
from lmjob_trainer.compression.distill import apply_teacher_init, distillation_loss
from lmjob_trainer.compression.lowrank import apply_lowrank
from lmjob_trainer.compression.prune import apply_pruning
from lmjob_trainer.compression.quantize import apply_quantization
from lmjob_trainer.compression.validate import build_student_spec
from lmjob_trainer.model import GPT


def _stage(**student: int) -> DistillStage:
    return DistillStage(name="student", type="distill", student=StudentSpec(**student))


def test_loss_is_the_documented_mix() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=gen), torch.randn(2, 5, 11, generator=gen)
    y = torch.randint(0, 11, (2, 5), generator=gen)
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten())
    temp, alpha = 2.0, 0.3
    p_t = F.softmax(t / temp, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean()
    expected = (1 - alpha) * ce + alpha * temp**2 * kl
    assert distillation_loss(s, t, y, temp, alpha).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    assert distillation_loss(s, t, y, temp, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    assert distillation_loss(s, s, y, temp, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_student_fields_default_to_the_teacher() -> None:
    spec = build_student_spec(TINY, _stage(layers=1))
    assert (spec.layers, spec.heads, spec.hidden, spec.seq_len) == (
        1,
        TINY.heads,
        TINY.hidden,
        TINY.seq_len,
    )


def test_student_starts_from_evenly_spaced_teacher_blocks(trained) -> None:
    student = GPT(build_student_spec(TINY, _stage(layers=1)), 256)
    assert apply_teacher_init(student, trained)
    assert torch.equal(student.blocks[0].mlp.fc.weight, trained.blocks[1].mlp.fc.weight)
    assert torch.equal(student.tok_emb.weight, trained.tok_emb.weight)
    assert student.head.weight is student.tok_emb.weight  # the tie survives
    narrow = GPT(build_student_spec(TINY, _stage(hidden=32)), 256)
    assert not apply_teacher_init(narrow, trained)


def test_student_starts_from_a_compressed_teacher_s_dense_equivalent(trained) -> None:
    apply_lowrank(
        trained, LowRankStage(name="l", type="lowrank", rank_ratio=0.5, method="svd"), None
    )
    apply_quantization(trained, "int8-weight-only")
    student = GPT(build_student_spec(TINY, _stage(layers=1)), 256)
    assert apply_teacher_init(student, trained)
    fc = trained.blocks[1].mlp.fc  # low-rank, int8: the student gets up · down, dequantized
    expected = fc.up.weight.dequantize() @ fc.down.weight.dequantize()
    assert torch.allclose(student.blocks[0].mlp.fc.weight, expected)
    assert torch.equal(student.blocks[0].mlp.fc.bias, fc.up.bias)
    # Removed heads cannot come back: a head-pruned teacher leaves the student random.
    pruned = GPT(TINY, 256)
    apply_pruning(pruned, PruneStage(name="p", type="prune", sparsity=0.5, structure="head"))
    assert not apply_teacher_init(GPT(build_student_spec(TINY, _stage(layers=1)), 256), pruned)
