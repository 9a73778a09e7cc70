"""Defaults derived from what the user wrote, each in Python and as CEL, so that a default
never turns a manifest invalid and the API server computes the same value the trainer uses.

A rule that involves a derived default is written so that the derived value always
satisfies it where any value could; the CEL twins below let such a rule ask "does a
fitting default exist?" when the user left the field out.
"""

from __future__ import annotations

HEAD_DIM = 64
"""Preferred attention head size (GPT-2's): hidden 384 -> 6 heads, 768 -> 12."""
DEFAULT_HIDDEN = 384
MAX_HEADS = 256
# Head sizes tried in order when deriving `heads` from `hidden`: 64 first, then larger
# ones (for very wide models, to stay within MAX_HEADS), then smaller ones.
HEAD_DIMS = (64, 128, 256, 512, 32, 16, 8, 4, 2, 1)
MAX_DEFAULT_MICRO_BATCH = 16
MAX_DEFAULT_WARMUP = 100


def derive_heads(hidden: int, tensor_parallel: int = 1) -> int:
    """Heads for a model of width `hidden`: the first head size of HEAD_DIMS that divides it
    into at most MAX_HEADS heads, a multiple of `tensor_parallel`. Where no head size gives a
    multiple of it, the first that divides (the tensor-parallel rule then names the field);
    1 where none does."""
    for need_tp in (True, False):
        for dim in HEAD_DIMS:
            heads = hidden // dim
            if (
                hidden % dim == 0
                and heads <= MAX_HEADS
                and (not need_tp or heads % tensor_parallel == 0)
            ):
                return heads
    return 1


def derive_micro_batch(global_batch: int | None) -> int:
    """Sequences per forward pass: MAX_DEFAULT_MICRO_BATCH, or with a global batch, the
    fewest passes of at most that many that hold it, split evenly (24 -> 12, 40 -> 14)."""
    if global_batch is None:
        return MAX_DEFAULT_MICRO_BATCH
    passes = -(-global_batch // MAX_DEFAULT_MICRO_BATCH)
    return -(-global_batch // passes)


def derive_warmup(steps: int) -> int:
    """Warmup steps: a tenth of the run, at most MAX_DEFAULT_WARMUP."""
    return min(MAX_DEFAULT_WARMUP, steps // 10)


def cel_or_default(path: str, default: str, *, template: str = "{}") -> str:
    """CEL: `template` applied to `path` when the field is set, else `default`."""
    return f"(has({path}) ? {template.replace('{}', path)} : {default})"


def _cel_dims(hidden: str, tensor_parallel: str | None) -> str:
    cond = f"{hidden} % hd == 0 && {hidden} / hd <= {MAX_HEADS}"
    if tensor_parallel is not None:
        cond += f" && ({hidden} / hd) % {tensor_parallel} == 0"
    return cond


def cel_heads_exist(hidden: str, tensor_parallel: str) -> str:
    """CEL: true when derive_heads(hidden, tensor_parallel) is a multiple of tensor_parallel."""
    dims = list(HEAD_DIMS)
    return f"({tensor_parallel} == 1 || {dims}.exists(hd, {_cel_dims(hidden, tensor_parallel)}))"


def cel_derived_heads(hidden: str, tensor_parallel: str) -> str:
    """CEL: derive_heads(hidden, tensor_parallel)."""
    dims = list(HEAD_DIMS)
    with_tp, without = _cel_dims(hidden, tensor_parallel), _cel_dims(hidden, None)
    return (
        f"({dims}.exists(hd, {with_tp}) ? {dims}.filter(hd, {with_tp}).map(hd, {hidden} / hd)[0] "
        f": ({dims}.exists(hd, {without}) ? {dims}.filter(hd, {without}).map(hd, {hidden} / hd)[0] "
        ": 1))"
    )
