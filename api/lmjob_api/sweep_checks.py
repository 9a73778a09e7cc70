"""A sweep's trial specs, and the sweep rules that need the job's own rules to decide.

`trial_spec` writes a trial's parameter values into the template; the same function makes
every trial job (operator and `lmjob sweep`) and checks the sweep here, so what is admitted
is what runs. `check_sweep` tries each parameter's bounds (or choices) in the template
and names the bound the job would reject, and counts a grid against `maxTrials`; `lmjob
validate` and the operator run it (CEL cannot apply a value to a path).
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from pydantic import ValidationError

from lmjob_api.job import API_VERSION, LargeModelJobSpec
from lmjob_api.sweep import (
    AlgorithmType,
    LargeModelSweep,
    LargeModelSweepSpec,
    ParameterType,
    SweepParameter,
)
from lmjob_api.validation import (
    Problem,
    as_json,
    as_sent,
    check_rules,
    problems_from_pydantic,
    validate_job,
)


class PathError(ValueError):
    """A parameter path that does not fit the template (e.g. a list index past its end)."""


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of the wire-form `spec` with `value` at the dotted `path`; objects on the way
    are created, list items must exist."""
    out = copy.deepcopy(spec)
    node: Any = out
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                where = ".".join(parts[:i])
                raise PathError(f"{where} has {len(node)} items: index {index} is past its end")
            node = node[index]
        else:
            child = node.get(part)
            if child is None:
                # The next part an index: the list must come from the template.
                if parts[i + 1].isdigit():
                    where = ".".join(parts[: i + 1])
                    raise PathError(f"{where} is not set in the template: add the list first")
                child = node[part] = {}
            node = child
    if isinstance(node, list):
        raise PathError(f"{path} names a list item, not a field")
    node[parts[-1]] = value
    return out


def coerce(parameter: SweepParameter, value: Any) -> Any:
    """The value as the job field takes it: an int parameter's values are whole numbers."""
    if parameter.type == ParameterType.INT and isinstance(value, float):
        return int(value)
    return value


def trial_spec(template: LargeModelJobSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The wire-form job spec of a trial: the template with each parameter's value set."""
    spec = template.to_wire()
    for path, value in values.items():
        spec = set_path(spec, path, value)
    return spec


def validate_spec(spec: dict[str, Any]) -> list[Problem]:
    """The job's verdict on one spec (schema and rules), with paths below the spec."""
    try:
        model = LargeModelJobSpec.model_validate_json(json.dumps(as_sent(spec)), strict=True)
    except ValidationError as err:
        return problems_from_pydantic(err)
    return check_rules(model)


def _probe_values(parameter: SweepParameter) -> list[tuple[str, Any]]:
    """(field below the parameter, value) pairs that stand for its whole range."""
    if parameter.choices is not None:
        return [(f"choices[{i}]", c) for i, c in enumerate(parameter.choices)]
    assert parameter.low is not None and parameter.high is not None
    out = [("low", coerce(parameter, parameter.low)), ("high", coerce(parameter, parameter.high))]
    return out


def grid_size(spec: LargeModelSweepSpec) -> int:
    """Combinations of a grid sweep (math.inf when a parameter has no finite grid)."""
    size = 1
    for parameter in spec.parameters:
        values = parameter.grid_values()
        if values is None:
            return math.inf  # type: ignore[return-value]
        size *= len(values)
    return size


def check_sweep(spec: LargeModelSweepSpec, prefix: str = "spec") -> list[Problem]:
    """Problems the schema and CEL rules cannot see; [] when every trial could run."""
    problems: list[Problem] = []
    template = spec.template.to_wire()
    for i, parameter in enumerate(spec.parameters):
        where = f"{prefix}.parameters[{i}]"
        if (parameter.choices is not None) != (parameter.type == ParameterType.CATEGORICAL):
            problems.append(
                Problem(
                    f"{where}.choices",
                    "a categorical parameter takes `choices`; a float or int parameter takes "
                    "`low` and `high` instead",
                )
            )
            continue
        for field, value in _probe_values(parameter):
            try:
                candidate = set_path(template, parameter.path, value)
            except PathError as err:
                problems.append(Problem(f"{where}.path", f"{err}: fix the path or the template"))
                break
            found = validate_spec(candidate)
            if found:
                first = found[0]
                problems.append(
                    Problem(
                        f"{where}.{field}",
                        f"{parameter.path}: {value!r} fails the job's own rules "
                        f"({first.path or 'spec'}: {first.message}); narrow the range",
                    )
                )
    if spec.algorithm.type == AlgorithmType.GRID and not problems:
        size = grid_size(spec)
        if size > spec.max_trials:
            problems.append(
                Problem(
                    f"{prefix}.maxTrials",
                    f"the grid has {size} combinations, more than maxTrials {spec.max_trials}: "
                    "raise maxTrials or use fewer values",
                )
            )
    return problems


def validate_sweep(data: Any) -> tuple[Any, list[Problem]]:
    """Validate one LargeModelSweep manifest mapping: schema, rules, then `check_sweep`."""
    try:
        sweep = LargeModelSweep.model_validate_json(as_json(data), strict=True)
    except ValidationError as err:
        return None, problems_from_pydantic(err)
    problems = check_rules(sweep) or check_sweep(sweep.spec)
    return (None if problems else sweep), problems


def validate_manifest(data: Any) -> tuple[Any, list[Problem]]:
    """Validate a LargeModelJob or a LargeModelSweep, by its kind: the object (or None) and
    its problems."""
    if not (isinstance(data, dict) and data.get("kind") == "LargeModelSweep"):
        return validate_job(data)
    if data.get("apiVersion") != API_VERSION:
        return None, [
            Problem("apiVersion", f"must be {API_VERSION} (got {data.get('apiVersion')!r})")
        ]
    return validate_sweep(data)
