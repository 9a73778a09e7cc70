"""Offline validation of manifests: the same verdicts the API server gives, as readable lines.

Each problem names the field path (as `kubectl` would: `spec.workers.minReplicas`) and
says what to do. Used by `lmjob validate`, `lmjob run`, the operator and the trainer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lmjob_api.base import ApiModel


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(ValueError):
    """A manifest or config that cannot be used, with every problem found."""

    def __init__(self, source: str, problems: Iterable[Problem | str]) -> None:
        self.source = source
        self.problems = [p if isinstance(p, Problem) else Problem("", p) for p in problems]
        super().__init__(f"{source}: " + "; ".join(str(p) for p in self.problems))


# Union members pydantic puts into error locations; users never wrote them.
_UNION_MEMBER_LOCS = {"int", "str", "float", "bool", "prune", "lowrank", "quantize", "distill"}

_FRIENDLY = {
    "extra_forbidden": "unknown field: remove it or check its spelling (see `kubectl explain`)",
    "missing": "required field is missing",
}


def _join(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems_from_pydantic(
    err: ValidationError, prefix: tuple[str | int, ...] = ()
) -> list[Problem]:
    """Turn pydantic's errors into field-path problems, dropping union-member noise."""
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for e in err.errors(include_url=False):
        loc = list(prefix)
        for i, part in enumerate(e["loc"]):
            prev = e["loc"][i - 1] if i else None
            if (
                isinstance(part, str)
                and part in _UNION_MEMBER_LOCS
                and (isinstance(prev, int) or part in {"int", "str", "float", "bool"})
            ):
                continue
            loc.append(part)
        message = _FRIENDLY.get(e["type"], e["msg"])
        if e["type"] not in _FRIENDLY and "input" in e and not isinstance(e["input"], dict | list):
            message += f" (got {e['input']!r})"
        key = (_join(loc), message)
        if key not in seen:
            seen.add(key)
            problems.append(Problem(*key))
    return problems


def _children(
    value: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[ApiModel, tuple[str | int, ...]]]:
    if isinstance(value, ApiModel):
        yield value, path
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _children(item, (*path, i))


def check_rules(model: BaseModel, path: tuple[str | int, ...] = ()) -> list[Problem]:
    """Evaluate every cross-field Rule in a validated model tree (the Python twin of CEL)."""
    problems: list[Problem] = []
    if isinstance(model, ApiModel):
        for rule in type(model).rules:
            # A transition rule needs the stored object, which a manifest alone lacks.
            if not rule.transition and not rule.check(model):
                where = _join(path) + (
                    "." + rule.field if rule.field and path else rule.field or ""
                )
                problems.append(Problem(where, rule.message))
    for name, field in type(model).model_fields.items():
        alias = field.alias or name
        for child, child_path in _children(getattr(model, name), (*path, alias)):
            problems.extend(check_rules(child, child_path))
    if isinstance(model, ApiModel):
        for child, alias in model.rule_children():
            problems.extend(check_rules(child, (*path, alias)))
    return problems


def as_sent(value: Any) -> Any:
    """`value` as kubectl sends it to the API server, so the offline verdict is the server's:
    null-valued keys dropped (the server prunes them: a null field is an absent one), and
    numbers as Go's encoding/json writes them, a whole float as an integer (`steps: 1e3`
    arrives as 1000). A float JSON cannot carry (.inf, .nan) stays a string, so the field
    that holds it is named as not a number, where kubectl would refuse the whole file."""
    if isinstance(value, dict):
        return {k: as_sent(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [as_sent(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 2**63:
            return int(value)
    return value


def as_json(data: Any) -> str:
    """The manifest as the API server receives it (`as_sent`), as JSON text (YAML dates
    become strings).

    Validated strictly in JSON mode, as the API server types it: `true` is not an integer
    and `"8"` is not a number (Python's lax coercions would accept both)."""
    return json.dumps(as_sent(data), default=str)


def validate_job(data: Any) -> tuple[Any, list[Problem]]:
    """Validate one manifest mapping; returns the job (or None) and its problems."""
    from lmjob_api.job import API_VERSION, KIND, LargeModelJob

    if not isinstance(data, dict):
        return None, [Problem("", f"a manifest must be a mapping, got {type(data).__name__}")]
    head = []
    if data.get("apiVersion") != API_VERSION:
        head.append(
            Problem("apiVersion", f"must be {API_VERSION} (got {data.get('apiVersion')!r})")
        )
    if data.get("kind") != KIND:
        head.append(Problem("kind", f"must be {KIND} (got {data.get('kind')!r})"))
    if head:
        return None, head
    try:
        job = LargeModelJob.model_validate_json(as_json(data), strict=True)
    except ValidationError as err:
        return None, problems_from_pydantic(err)
    problems = check_rules(job)
    return (None if problems else job), problems


class ManifestLoader(yaml.SafeLoader):
    """YAML typed as kubectl types it (Go's yaml.v2, YAML 1.1), so that offline validation
    sees the numbers the API server sees: PyYAML reads `3e-4` and `1.0e3` (an exponent
    without a dot or sign) and `0o17` as strings, Go as a float and an int."""


ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)
ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?0o[0-7_]+$"), list("-+0")
)


def load_documents(path: str | Path) -> list[Any]:
    """All YAML documents of a file (empty ones dropped); raises ManifestError on bad YAML."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ManifestError(str(path), [f"cannot read: {err.strerror}"]) from None
    try:
        return [d for d in yaml.load_all(text, Loader=ManifestLoader) if d is not None]
    except yaml.YAMLError as err:
        raise ManifestError(str(path), [f"not valid YAML: {err}".replace("\n", " ")]) from None


def load_job(path: str | Path) -> Any:
    """The single LargeModelJob in a file, validated; raises ManifestError with every problem."""
    docs = load_documents(path)
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "LargeModelJob"] or docs
    if len(jobs) != 1:
        raise ManifestError(str(path), [f"expected one LargeModelJob, found {len(jobs)} documents"])
    job, problems = validate_job(jobs[0])
    if problems:
        raise ManifestError(str(path), problems)
    return job
