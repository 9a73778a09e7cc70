"""Rules that relate the compression stages to the model each one starts from: the
trained model, or after a distill stage its student.

They are rules of any object holding `training` and `compression` (the job's spec, the
trainer's config), so the API server, `lmjob validate` and the trainer share them.
Shapes use the derived defaults of lmjob_api.defaults, in Python and in CEL alike.
"""

from __future__ import annotations

from typing import Any

from lmjob_api.base import Rule
from lmjob_api.compression import DistillStage, PruneStage
from lmjob_api.defaults import cel_derived_heads, cel_heads_exist, cel_or_default
from lmjob_api.training import ModelSpec, model_heads_cel, model_hidden_cel, tp_cel

_T = "self.training"
_STAGES = "self.compression.stages"
_GUARD = f"!has({_T}) || !has(self.compression) || !has({_STAGES}) || "
_TP = tp_cel(_T)
_ML = f"{_T}.model.layers"
_MH = model_hidden_cel(_T)
_MHEADS = model_heads_cel(_T)


def _index(var: str) -> str:
    return f"{_STAGES}.indexOf({var})"


def _student_layers(d: str) -> str:
    return cel_or_default(f"{d}.student.layers", _ML)


def _student_hidden(d: str) -> str:
    return cel_or_default(f"{d}.student.hidden", _MH)


def _student_heads(d: str) -> str:
    derived = cel_or_default(f"{d}.student.hidden", _MHEADS, template=cel_derived_heads("{}", _TP))
    return cel_or_default(f"{d}.student.heads", derived)


def _pairs(spec: Any) -> list[tuple[Any, ModelSpec]]:
    """(stage, the shape it starts from) for every stage; empty without both blocks."""
    if spec.training is None or spec.compression is None:
        return []
    c, t = spec.compression, spec.training
    return list(zip(c.stages, c.models(t.model, tensor_parallel=t.tensor_parallel), strict=True))


def _students(spec: Any) -> list[tuple[ModelSpec, ModelSpec]]:
    """(student, teacher) of every distill stage."""
    tp = spec.training.tensor_parallel if spec.training is not None else 1
    return [
        (stage.build_student(teacher, tensor_parallel=tp), teacher)
        for stage, teacher in _pairs(spec)
        if isinstance(stage, DistillStage)
    ]


def _student_smaller(spec: Any) -> bool:
    return all(
        s.layers <= t.layers
        and s.hidden <= t.hidden
        and (s.layers < t.layers or s.hidden < t.hidden)
        for s, t in _students(spec)
    )


def _head_prune_has_heads(spec: Any) -> bool:
    return all(
        not (isinstance(stage, PruneStage) and stage.structure == "head") or model.heads > 1
        for stage, model in _pairs(spec)
    )


STAGE_FIT_RULES: tuple[Rule, ...] = (
    Rule(
        cel=f"{_GUARD}{_STAGES}.size() == 0 || {_T}.model.architecture == 'gpt'",
        message="compression stages need training.model.architecture gpt: remove the stages "
        "or train lmjob's GPT",
        check=lambda s: not _pairs(s) or s.training.model.architecture == "gpt",
        field="compression.stages",
    ),
    Rule(
        cel=f"{_GUARD}{_STAGES}.all(d, d.type != 'distill' || !has(d.student) || "
        f"({_student_layers('d')} <= {_ML} && {_student_hidden('d')} <= {_MH} && "
        f"({_student_layers('d')} < {_ML} || {_student_hidden('d')} < {_MH})))",
        message="a distill stage's student must be smaller than the trained model: student "
        "layers and hidden at most training.model's, and at least one of them smaller",
        check=_student_smaller,
        field="compression.stages",
    ),
    Rule(
        cel=f"{_GUARD}{_STAGES}.all(d, d.type != 'distill' || !has(d.student) || "
        f"!has(d.student.heads) || {_student_hidden('d')} % d.student.heads == 0)",
        message="a distill stage's student.hidden (default: training.model.hidden) must be a "
        "multiple of student.heads: pick heads that divide it, or leave heads out",
        check=lambda spec: all(s.hidden % s.heads == 0 for s, _ in _students(spec)),
        field="compression.stages",
    ),
    Rule(
        cel=f"{_GUARD}{_TP} == 1 || {_STAGES}.all(d, d.type != 'distill' || !has(d.student) || "
        f"(has(d.student.heads) ? d.student.heads % {_TP} == 0 : (has(d.student.hidden) ? "
        f"{cel_heads_exist('d.student.hidden', _TP)} : true)))",
        message="a distill stage's student.heads must be a multiple of "
        "training.parallelism.tensorParallel: the student trains with the same parallelism",
        check=lambda spec: all(
            s.heads % spec.training.tensor_parallel == 0 for s, _ in _students(spec)
        ),
        field="compression.stages",
    ),
    Rule(
        cel=f"{_GUARD}{_STAGES}.all(p, p.type != 'prune' || !has(p.structure) || "
        f"p.structure != 'head' || ({_STAGES}.exists(d, d.type == 'distill' && "
        f"{_index('d')} < {_index('p')}) ? {_STAGES}.filter(d, d.type == 'distill' && "
        f"{_index('d')} < {_index('p')}).all(d, !has(d.student) || {_student_heads('d')} > 1) "
        f": {_MHEADS} > 1))",
        message="head pruning needs more than one attention head in the model it prunes: use "
        "structure unstructured or channel, or more heads",
        check=_head_prune_has_heads,
        field="compression.stages",
    ),
)
