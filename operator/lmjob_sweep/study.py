"""An Optuna study rebuilt from a sweep's status, and the samplers and pruners the spec names.

Nothing of Optuna outlives one decision: every trial of the status is added back with its
state, parameters, evaluation reports and Optuna's own per-trial attributes (`samplerState`:
successive halving's rungs, the grid's cell, CMA-ES's optimizer), so a study rebuilt from the
same status answers the same. Each new trial is sampled with a seed derived from the sweep's
seed and the trial's number: rebuilding must not replay one random stream from its start.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import BaseSampler, CmaEsSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState

from lmjob_api.sweep import (
    AlgorithmType,
    EarlyStoppingType,
    LargeModelSweepSpec,
    ParameterType,
    SweepParameter,
    TrialStatus,
)
from lmjob_api.sweep import (
    TrialState as SweepTrialState,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
# constant_liar and CMA-ES's parameters are "experimental" in Optuna's terms; the warning says
# nothing a sweep's user can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

_STATES = {
    SweepTrialState.PENDING: TrialState.RUNNING,
    SweepTrialState.RUNNING: TrialState.RUNNING,
    SweepTrialState.COMPLETE: TrialState.COMPLETE,
    SweepTrialState.PRUNED: TrialState.PRUNED,
    SweepTrialState.FAILED: TrialState.FAIL,
}


def distribution(parameter: SweepParameter) -> BaseDistribution:
    """The Optuna distribution of one parameter."""
    if parameter.type == ParameterType.CATEGORICAL:
        assert parameter.choices is not None
        return CategoricalDistribution(list(parameter.choices))
    assert parameter.low is not None and parameter.high is not None
    if parameter.type == ParameterType.INT:
        return IntDistribution(
            int(parameter.low),
            int(parameter.high),
            log=parameter.log,
            step=int(parameter.step or 1),
        )
    return FloatDistribution(parameter.low, parameter.high, log=parameter.log, step=parameter.step)


def distributions(spec: LargeModelSweepSpec) -> dict[str, BaseDistribution]:
    return {p.path: distribution(p) for p in spec.parameters}


def trial_seed(spec: LargeModelSweepSpec, number: int) -> int:
    """The sampler's seed for trial `number`: fixed by the sweep's seed, different per trial."""
    return (spec.algorithm.seed * 1_000_003 + number * 7_919 + 17) % (2**32)


def sampler(spec: LargeModelSweepSpec, number: int) -> BaseSampler:
    """The sampler that picks trial `number`'s parameters."""
    seed = trial_seed(spec, number)
    algorithm = spec.algorithm
    if algorithm.type == AlgorithmType.RANDOM:
        return RandomSampler(seed=seed)
    if algorithm.type == AlgorithmType.GRID:
        space = {p.path: p.grid_values() for p in spec.parameters}
        # The grid's own seed is the sweep's: it fixes the order the cells are visited in.
        return GridSampler(space, seed=spec.algorithm.seed)  # type: ignore[arg-type]
    if algorithm.type == AlgorithmType.CMAES:
        return CmaEsSampler(seed=seed, n_startup_trials=algorithm.startup_trials)
    # constant_liar: trials still running count as bad guesses, so parallel trials spread out.
    # multivariate: learning rate, warmup and dropout interact; one joint density models that
    # where independent ones chase each parameter's noisy best alone.
    return TPESampler(
        seed=seed,
        n_startup_trials=algorithm.startup_trials,
        constant_liar=True,
        multivariate=True,
    )


def pruner(spec: LargeModelSweepSpec) -> BasePruner:
    """The pruner `earlyStopping` names."""
    stopping = spec.early_stopping
    if stopping.type == EarlyStoppingType.MEDIAN:
        return MedianPruner(
            n_startup_trials=stopping.startup_trials, n_warmup_steps=stopping.min_steps
        )
    if stopping.type == EarlyStoppingType.ASHA:
        return SuccessiveHalvingPruner(
            min_resource=stopping.min_steps, reduction_factor=stopping.reduction_factor
        )
    if stopping.type == EarlyStoppingType.HYPERBAND:
        max_steps = spec.template.training.steps if spec.template.training else "auto"
        return HyperbandPruner(
            min_resource=stopping.min_steps,
            max_resource=max_steps,
            reduction_factor=stopping.reduction_factor,
        )
    return NopPruner()


def _frozen(spec: LargeModelSweepSpec, trial: TrialStatus) -> FrozenTrial:
    dists = distributions(spec)
    params = {k: v for k, v in trial.parameters.items() if k in dists}
    state = _STATES[trial.state]
    return optuna.trial.create_trial(
        state=state,
        value=trial.value if state == TrialState.COMPLETE else None,
        params=params,
        distributions={k: dists[k] for k in params},
        intermediate_values={r.step: r.value for r in trial.reports},
        system_attrs=json.loads(trial.sampler_state) if trial.sampler_state else {},
    )


def rebuild(sweep: str, spec: LargeModelSweepSpec, trials: list[TrialStatus]) -> optuna.Study:
    """A study holding every trial of the status, in number order (so numbers match)."""
    study = optuna.create_study(
        storage=InMemoryStorage(),
        study_name=sweep,
        direction=spec.objective.direction.value,
        sampler=sampler(spec, len(trials)),
        pruner=pruner(spec),
    )
    for trial in sorted(trials, key=lambda t: t.number):
        study.add_trial(_frozen(spec, trial))
    return study


def sampler_state(study: optuna.Study, number: int) -> str:
    """Optuna's attributes of trial `number` as stored in the status (JSON, sorted)."""
    attrs = study.trials[number].system_attrs
    return json.dumps(attrs, sort_keys=True) if attrs else ""


def ask(study: optuna.Study, spec: LargeModelSweepSpec) -> tuple[int, dict[str, Any]]:
    """Sample the next trial (its number and parameters); it stays RUNNING in the study."""
    study.sampler = sampler(spec, len(study.trials))
    trial = study.ask(distributions(spec))
    return trial.number, dict(trial.params)


def report_and_prune(study: optuna.Study, number: int, step: int, value: float) -> bool:
    """Record trial `number`'s evaluation at `step` and ask the pruner, as a live trial would."""
    frozen = study.trials[number]
    study._storage.set_trial_intermediate_value(frozen._trial_id, step, value)
    return study.pruner.prune(study, study._storage.get_trial(frozen._trial_id))
