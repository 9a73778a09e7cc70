"""The LargeModelSweep resource (`lmjob.dev/v1alpha1`): a hyperparameter search over a job.

A sweep holds a LargeModelJob spec (`template`), the `parameters` to search (each a path into
that spec), the `objective` and how to search (`algorithm`) and stop bad trials early
(`earlyStopping`). Its rules live here once, as CEL for the API server and Python for
`lmjob validate` and the operator; the checks that need the job's own rules (a bound that the
job would reject, a grid larger than `maxTrials`) are in `sweep_checks`, run by both.
"""

from __future__ import annotations

import re
import types
import typing
from enum import StrEnum
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field

from lmjob_api.base import ApiModel, Rule
from lmjob_api.job import JOB_NAME_PATTERN, MAX_JOB_NAME, LargeModelJobSpec, ObjectMeta
from lmjob_api.status import Condition

KIND = "LargeModelSweep"
PLURAL = "largemodelsweeps"
SINGULAR = "largemodelsweep"
SHORT_NAMES = ("lms",)

MAX_TRIALS = 1000
# Trial jobs are `<sweep>-<number>` (number < MAX_TRIALS: at most 3 digits) and must fit
# the job's own name limit.
MAX_SWEEP_NAME = MAX_JOB_NAME - 1 - len(str(MAX_TRIALS - 1))
MAX_PARAMETERS = 16
MAX_CHOICES = 64


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every scalar field below `model` as a dotted camelCase path; list items as `<i>`."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        path = f"{prefix}{alias}"
        out.extend(_paths_of(info.annotation, path))
    return out


def _paths_of(annotation: Any, path: str) -> list[str]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            return sorted({p for m in models for p in _leaf_paths(m, path + ".")})
        return _paths_of(args[0], path) if len(args) == 1 else [path]
    if origin is typing.Annotated:
        return _paths_of(get_args(annotation)[0], path)
    if origin is list:
        (item,) = get_args(annotation)
        inner = _paths_of(item, path + ".<i>")
        return [p for p in inner if p != path + ".<i>"]
    if origin is dict:
        return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _leaf_paths(annotation, path + ".")
    return [path]


PARAMETER_PATHS: tuple[str, ...] = tuple(
    p
    for p in _leaf_paths(LargeModelJobSpec)
    # Free-form and identity fields are not hyperparameters: a pod template, commands,
    # names and paths of data and storage, the controller that runs the job.
    if not p.startswith(
        (
            "workers.template",
            "command",
            "image",
            "storage.",
            "metrics.",
            "runPolicy.",
            "scheduling.",
            "training.hang.",
            "training.stragglers.",
            "managedBy",
        )
    )
    and p.split(".")[-1] not in ("name", "path", "source", "tokenizer", "cacheDir", "type")
)
"""The paths a parameter may set: the job spec's scalar fields (list items by index)."""

PARAMETER_PATH_PATTERN = (
    "^(" + "|".join(re.escape(p).replace("<i>", "[0-9]+") for p in PARAMETER_PATHS) + ")$"
)


def _cel_string(pattern: str) -> str:
    return pattern.replace("\\", "\\\\").replace("'", "\\'")


class ParameterType(StrEnum):
    FLOAT = "float"
    INT = "int"
    CATEGORICAL = "categorical"


Scalar = bool | int | float | str


class SweepParameter(ApiModel):
    """One hyperparameter: where it goes in the template, and the values it may take."""

    path: str = Field(
        ...,
        min_length=1,
        max_length=200,
        description="Dotted path into `template` of the field this parameter sets, e.g. "
        "`training.optimizer.lr` or `compression.stages.0.sparsity`.",
    )
    type: ParameterType = Field(..., description="`float`, `int` or `categorical`.")
    low: float | None = Field(None, description="Smallest value (float and int).")
    high: float | None = Field(None, description="Largest value (float and int).")
    log: bool = Field(False, description="Sample on a log scale (float and int; needs low > 0).")
    step: float | None = Field(
        None,
        gt=0,
        description="Spacing of the values from low (float and int); a float needs it for `grid`.",
    )
    choices: list[Scalar] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHOICES,
        description="The values of a categorical parameter (numbers, strings or booleans).",
        json_schema_extra={"items": {"x-kubernetes-preserve-unknown-fields": True}},
    )

    rules = (
        Rule(
            cel=f"self.path.matches('{_cel_string(PARAMETER_PATH_PATTERN)}')",
            message="parameters[].path must name a scalar field of the job spec, as a dotted "
            "camelCase path below spec (e.g. training.optimizer.lr, training.batch.microBatchSize, "
            "compression.stages.0.sparsity); pod templates, commands, names and paths cannot "
            "be searched",
            check=lambda p: re.fullmatch(PARAMETER_PATH_PATTERN, p.path) is not None,
            field="path",
        ),
        # `choices` holds values of any scalar type, which CEL cannot type; whether a
        # parameter has them is checked in sweep_checks (lmjob validate and the operator).
        Rule(
            cel="self.type == 'categorical' ? (!has(self.low) && !has(self.high) && "
            "!has(self.step) && !self.log) : (has(self.low) && has(self.high))",
            message="a categorical parameter takes `choices` (and no low, high, step or log); "
            "a float or int parameter takes `low` and `high` (and no choices)",
            check=lambda p: (
                p.low is None and p.high is None and p.step is None and not p.log
                if p.type == ParameterType.CATEGORICAL
                else p.low is not None and p.high is not None
            ),
        ),
        Rule(
            cel="!has(self.low) || !has(self.high) || self.low < self.high",
            message="parameters[].low must be below high",
            check=lambda p: p.low is None or p.high is None or p.low < p.high,
            field="low",
        ),
        Rule(
            cel="!self.log || (has(self.low) && self.low > 0.0 && !has(self.step))",
            message="a log-scale parameter needs low > 0 and no step",
            check=lambda p: not p.log or (p.low is not None and p.low > 0 and p.step is None),
            field="log",
        ),
        Rule(
            cel="self.type != 'int' || ((!has(self.low) || double(int(self.low)) == self.low) && "
            "(!has(self.high) || double(int(self.high)) == self.high) && "
            "(!has(self.step) || double(int(self.step)) == self.step))",
            message="an int parameter's low, high and step must be whole numbers",
            check=lambda p: (
                p.type != ParameterType.INT
                or all(v is None or float(v).is_integer() for v in (p.low, p.high, p.step))
            ),
            field="low",
        ),
    )

    def grid_values(self) -> list[Scalar] | None:
        """Every value this parameter takes in a grid; None when it has no finite grid."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == ParameterType.INT:
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            return None
        count = int((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


class Direction(StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class SweepObjective(ApiModel):
    """What a trial is scored by: a metric of one stage of its job, when the job succeeds."""

    metric: Literal["evalLoss"] = Field(
        "evalLoss", description="The metric: `evalLoss` (the stage's final evaluation loss)."
    )
    stage: str = Field(
        "train",
        min_length=1,
        description="`train` (the end of training) or a compression stage's name.",
    )
    direction: Direction = Field(Direction.MINIMIZE, description="`minimize` or `maximize`.")


class AlgorithmType(StrEnum):
    TPE = "tpe"
    RANDOM = "random"
    GRID = "grid"
    CMAES = "cmaes"


class SweepAlgorithm(ApiModel):
    """How the next trial's parameters are chosen (Optuna's samplers)."""

    type: AlgorithmType = Field(
        AlgorithmType.TPE,
        description="`tpe` (Bayesian, the default), `random`, `grid` (every combination, in a "
        "seeded order) or `cmaes` (float and int parameters).",
    )
    seed: int = Field(0, ge=0, description="Seed: the same sweep samples the same trials.")
    startup_trials: int = Field(
        5,
        ge=0,
        le=MAX_TRIALS,
        description="Trials sampled at random before `tpe` or `cmaes` model the results.",
    )


class EarlyStoppingType(StrEnum):
    NONE = "none"
    MEDIAN = "median"
    ASHA = "asha"
    HYPERBAND = "hyperband"


class SweepEarlyStopping(ApiModel):
    """Stopping bad trials on their evaluation losses during training (Optuna's pruners)."""

    type: EarlyStoppingType = Field(
        EarlyStoppingType.NONE,
        description="`median` (stop a trial worse than the median of earlier trials at the same "
        "step), `asha` (asynchronous successive halving), `hyperband`, or `none`.",
    )
    min_steps: int = Field(
        1,
        ge=1,
        description="Training steps before a trial may be stopped (median's warm-up; the first "
        "rung of asha and hyperband).",
    )
    startup_trials: int = Field(
        1, ge=0, le=MAX_TRIALS, description="Finished trials before `median` stops any."
    )
    reduction_factor: int = Field(
        3, ge=2, le=16, description="asha and hyperband: 1/this of the trials reach each rung."
    )


class LargeModelSweepSpec(ApiModel):
    """A hyperparameter search: trials are LargeModelJobs made from `template`."""

    template: LargeModelJobSpec = Field(
        ..., description="The LargeModelJob spec every trial starts from."
    )
    parameters: list[SweepParameter] = Field(
        ..., min_length=1, max_length=MAX_PARAMETERS, description="What to search."
    )
    objective: SweepObjective = Field(
        default_factory=SweepObjective, description="What a trial is scored by."
    )
    algorithm: SweepAlgorithm = Field(
        default_factory=SweepAlgorithm, description="How parameters are chosen."
    )
    early_stopping: SweepEarlyStopping = Field(
        default_factory=SweepEarlyStopping, description="Stopping bad trials early."
    )
    max_trials: int = Field(20, ge=1, le=MAX_TRIALS, description="Trials to run in all.")
    parallel_trials: int = Field(1, ge=1, le=100, description="Trials running at once.")
    max_failed_trials: int = Field(
        3,
        ge=0,
        le=MAX_TRIALS,
        description="Failed trials (not pruned ones) the sweep tolerates before it fails.",
    )

    rules = (
        Rule(
            cel="self.parameters.all(p, self.parameters.exists_one(q, q.path == p.path))",
            message="parameters[].path must be unique: each field is searched by one parameter",
            check=lambda s: len({p.path for p in s.parameters}) == len(s.parameters),
            field="parameters",
        ),
        Rule(
            cel="self.parallelTrials <= self.maxTrials",
            message="parallelTrials must not exceed maxTrials",
            check=lambda s: s.parallel_trials <= s.max_trials,
            field="parallelTrials",
        ),
        Rule(
            cel="self.objective.stage == 'train' || (has(self.template.compression) && "
            "self.template.compression.stages.exists(s, s.name == self.objective.stage))",
            message="objective.stage must be `train` or the name of one of "
            "template.compression.stages",
            check=lambda s: (
                s.objective.stage == "train"
                or (
                    s.template.compression is not None
                    and any(st.name == s.objective.stage for st in s.template.compression.stages)
                )
            ),
            field="objective.stage",
        ),
        Rule(
            cel="self.algorithm.type != 'grid' || self.parameters.all(p, p.type != 'float' || "
            "has(p.step))",
            message="algorithm grid needs a step on every float parameter (or make it "
            "categorical): a grid is a finite set of values",
            check=lambda s: (
                s.algorithm.type != AlgorithmType.GRID
                or all(p.type != ParameterType.FLOAT or p.step is not None for p in s.parameters)
            ),
            field="algorithm.type",
        ),
        Rule(
            cel="self.earlyStopping.type == 'none' || has(self.template.training)",
            message="earlyStopping needs template.training: it reads the built-in trainer's "
            "evaluation losses",
            check=lambda s: (
                s.early_stopping.type == EarlyStoppingType.NONE or s.template.training is not None
            ),
            field="earlyStopping.type",
        ),
    )


class TrialState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETE = "Complete"
    PRUNED = "Pruned"
    FAILED = "Failed"


FINISHED_TRIAL_STATES = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED})


class TrialReport(ApiModel):
    """One evaluation of a trial during training."""

    step: int = Field(..., ge=0, description="Training step.")
    value: float = Field(..., description="Evaluation loss at that step.")


class TrialStatus(ApiModel):
    """One trial: its parameters, its job, and how it went."""

    number: int = Field(..., ge=0, description="Trial number, from 0.")
    name: str = Field(..., description="Its LargeModelJob.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="The value of each parameter, by path."
    )
    state: TrialState = Field(
        TrialState.PENDING, description="Pending, Running, Complete, Pruned or Failed."
    )
    value: float | None = Field(None, description="The objective, once Complete.")
    last_value: float | None = Field(None, description="The newest evaluation loss.")
    best_value: float | None = Field(None, description="The best evaluation loss so far.")
    step: int = Field(0, ge=0, description="Training step of the newest evaluation.")
    reports: list[TrialReport] = Field(
        default_factory=list, description="Evaluation losses during training, by step."
    )
    reason: str = Field("", description="Why it was pruned or failed.")
    sampler_state: str = Field(
        "",
        description="Optuna's per-trial attributes (JSON), so the study is rebuilt exactly.",
    )
    start_time: str | None = Field(None, description="When it was created (RFC 3339).")
    completion_time: str | None = Field(None, description="When it finished (RFC 3339).")


class BestTrial(ApiModel):
    """The best Complete trial."""

    number: int = Field(..., ge=0, description="Trial number.")
    name: str = Field(..., description="Its LargeModelJob.")
    value: float = Field(..., description="Its objective.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Its parameters.")


class SweepPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class LargeModelSweepStatus(ApiModel):
    """Observed state of a sweep; the only state of its search."""

    phase: SweepPhase = Field(
        SweepPhase.PENDING, description="Pending, Running, Succeeded or Failed."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    trials: list[TrialStatus] = Field(default_factory=list, description="Every trial so far.")
    best: BestTrial | None = Field(None, description="The best Complete trial.")
    completed: int = Field(0, ge=0, description="Complete trials.")
    pruned: int = Field(0, ge=0, description="Pruned trials.")
    failed: int = Field(0, ge=0, description="Failed trials.")
    running: int = Field(0, ge=0, description="Pending or Running trials.")
    summary: str = Field("", description="`finished/maxTrials`, for the Trials printer column.")
    start_time: str | None = Field(None, description="When the sweep started (RFC 3339).")
    completion_time: str | None = Field(None, description="When it finished (RFC 3339).")
    observed_generation: int | None = Field(None, description="Spec generation last acted on.")


class LargeModelSweep(ApiModel):
    """A LargeModelSweep manifest."""

    api_version: Literal["lmjob.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["LargeModelSweep"]
    metadata: ObjectMeta
    spec: LargeModelSweepSpec
    status: LargeModelSweepStatus | None = None

    rules = (
        Rule(
            cel=f"self.metadata.name.size() <= {MAX_SWEEP_NAME} && "
            f"self.metadata.name.matches('{JOB_NAME_PATTERN}')",
            message=f"metadata.name must be at most {MAX_SWEEP_NAME} characters of lowercase "
            "letters, digits and '-', starting with a letter: it prefixes the trial jobs' names",
            check=lambda s: (
                len(s.metadata.name) <= MAX_SWEEP_NAME
                and re.fullmatch(JOB_NAME_PATTERN, s.metadata.name) is not None
            ),
        ),
    )
