"""The search itself, with Optuna: which parameters trial n gets, whether a running trial is pruned, which is best.

Everything is a pure function of the sweep's settings and its trial records (the Kubernetes status or the local
`sweep.json`), so nothing else needs to persist: no study database, and a restarted operator decides exactly
what an uninterrupted one would have.

Determinism across timing and restarts comes from one rule. Trial n is suggested, and later judged for pruning,
against exactly the trials numbered below `seen = n - parallelTrials + 1`, all finished when n starts (trial n
starts only then). The study is rebuilt by replaying the same asks and tells in the same order, so a sampler's
random state and its internal state (CMA-ES) are those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from m2f_spec.sweep.settings import SweepSettings
from m2f_spec.sweep.space import CATEGORICAL, FLOAT, INT, Parameter, grid_space

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

RUNNING, SUCCEEDED, PRUNED, FAILED, STOPPED = "Running", "Succeeded", "Pruned", "Failed", "Stopped"
TERMINAL = frozenset({SUCCEEDED, PRUNED, FAILED, STOPPED})
_TRIAL_STATES = {SUCCEEDED: optuna.trial.TrialState.COMPLETE, PRUNED: optuna.trial.TrialState.PRUNED,
                 FAILED: optuna.trial.TrialState.FAIL, STOPPED: optuna.trial.TrialState.FAIL}


# -- scheduling ---------------------------------------------------------------------------------------------


def seen_by(number: int, parallel: int) -> int:
    """How many trials (numbers 0..seen-1) trial `number` learns from."""
    return max(0, number - parallel + 1)


def can_start(records: Sequence[Mapping], settings: SweepSettings) -> bool:
    """Whether trial len(records) may start now: a free slot, trials left, and every trial it learns from done."""
    number = len(records)
    if number >= settings.trial_budget:
        return False
    if sum(1 for r in records if r["state"] == RUNNING) >= settings.parallel:
        return False
    return all(r["state"] in TERMINAL for r in records[:seen_by(number, settings.parallel)])


def best(records: Sequence[Mapping], goal: str) -> Mapping | None:
    """The succeeded trial with the best objective value (the lowest number among equals)."""
    done = [r for r in records if r["state"] == SUCCEEDED and r.get("value") is not None]
    if not done:
        return None
    sign = -1.0 if goal == "maximize" else 1.0
    return min(done, key=lambda r: (sign * r["value"], r["number"]))


# -- suggestions -----------------------------------------------------------------------------------------


def distributions(parameters: Sequence[Parameter]) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for p in parameters:
        if p.type == CATEGORICAL:
            out[p.path] = optuna.distributions.CategoricalDistribution([_encode(v) for v in p.values])
        elif p.type == INT:
            out[p.path] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.path] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def _encode(value: Any) -> Any:
    # Optuna's categorical choices are scalars; a list value (a crop size) travels as its JSON text.
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _decode(parameter: Parameter, value: Any) -> Any:
    if parameter.type == CATEGORICAL and isinstance(value, str) and not any(isinstance(v, str) and v == value
                                                                          for v in parameter.values):
        return json.loads(value)
    if parameter.type == INT:
        return int(value)
    if parameter.type == FLOAT:
        return float(value)
    return value


def sampler(settings: SweepSettings) -> optuna.samplers.BaseSampler:
    seed, startup = settings.seed, settings.sampler_startup_trials
    if settings.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.algorithm == "grid":
        return optuna.samplers.GridSampler(grid_space(settings.parameters), seed=seed)
    if settings.algorithm == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **({"n_startup_trials": startup} if startup else {}))
    return optuna.samplers.TPESampler(seed=seed, **({"n_startup_trials": startup} if startup else {}))


def suggest(settings: SweepSettings, records: Sequence[Mapping]) -> dict[str, Any]:
    """The parameters of trial len(records) (call only when can_start)."""
    number = len(records)
    study, _ = _replay(settings, records, seen_by(number, settings.parallel))
    trial = study.ask(distributions(settings.parameters))
    return {p.path: _decode(p, trial.params[p.path]) for p in settings.parameters}


def _replay(settings: SweepSettings, records: Sequence[Mapping], tell_upto: int):
    """The study as it was when trial len(records) was asked: each recorded trial asked in turn, after telling
    the trials it had seen; then the trials below `tell_upto` told."""
    study = optuna.create_study(direction=settings.goal, sampler=sampler(settings),
                                study_name=f"m2f-sweep-{settings.seed}")
    dists = distributions(settings.parameters)
    asked: list[optuna.trial.Trial] = []
    told = 0
    for record in records:
        while told < min(int(record.get("seen", 0)), len(asked)):
            _tell(study, asked[told], records[told])
            told += 1
        trial = study.ask(dists)
        if any(_encode(record["parameters"].get(path)) != trial.params.get(path) for path in dists):
            log.warning("trial %s: its recorded parameters differ from the replayed suggestion (was the search "
                        "space or the Optuna version changed?); later suggestions may differ from the original run",
                        record["number"])
        asked.append(trial)
    while told < tell_upto:
        _tell(study, asked[told], records[told])
        told += 1
    return study, asked


def _tell(study: optuna.Study, trial: optuna.trial.Trial, record: Mapping) -> None:
    for step, value in record.get("intermediate") or []:
        trial.report(float(value), int(step))
    _finish(study, trial, record)


def _finish(study: optuna.Study, trial: optuna.trial.Trial, record: Mapping) -> None:
    state = _TRIAL_STATES.get(record["state"])
    if state == optuna.trial.TrialState.COMPLETE:
        study.tell(trial, float(record["value"]))
    else:
        study.tell(trial, state=state or optuna.trial.TrialState.FAIL)


# -- early stopping --------------------------------------------------------------------------------------


def pruner(settings: SweepSettings) -> optuna.pruners.BasePruner:
    stopping = settings.early_stopping
    if stopping.algorithm == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=stopping.startup_trials,
                                           n_warmup_steps=stopping.warmup_epochs)
    if stopping.algorithm == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=stopping.min_epochs, max_resource=settings.max_epochs,
                                              reduction_factor=stopping.reduction_factor)
    return optuna.pruners.NopPruner()


def prune_reason(settings: SweepSettings, records: Sequence[Mapping], record: Mapping) -> str | None:
    """Why the running trial `record` should stop now, or None. Judged against the trials it has seen only."""
    intermediate = record.get("intermediate") or []
    if settings.early_stopping.algorithm == "none" or not intermediate:
        return None
    judge = pruner(settings)
    study = optuna.create_study(direction=settings.goal, sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=judge, study_name=f"m2f-sweep-{settings.seed}")
    seen = [r for r in records[:int(record.get("seen", 0))] if r["state"] in TERMINAL]
    for past in seen:
        trial = study.ask()
        for step, value in past.get("intermediate") or []:
            trial.report(float(value), int(step))
            trial.should_prune()  # the pruner's own bookkeeping (Hyperband's rungs) of the past trial
        _finish(study, trial, past)
    # Placeholders up to its own number: Hyperband assigns brackets by trial number, and the judged trial must
    # sit in the bracket it is later replayed in as a past trial.
    for _ in range(len(seen), int(record["number"])):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    trial = study.ask()
    prune = False
    for step, value in intermediate:
        trial.report(float(value), int(step))
        prune = trial.should_prune()
    if not prune:
        return None
    step, value = intermediate[-1]
    metric = settings.metric
    if settings.early_stopping.algorithm == "median":
        peers = [dict(r.get("intermediate") or []).get(step) for r in seen if r["state"] == SUCCEEDED]
        peers = [v for v in peers if v is not None]
        median = statistics.median(peers) if peers else float("nan")
        best_so_far = (max if settings.goal == "maximize" else min)(v for _, v in intermediate)
        return (f"epoch {step}: best {metric} so far {best_so_far:.4g} is worse than the median {median:.4g} of "
                f"{len(peers)} finished trial(s) at that epoch")
    return (f"epoch {step}: {metric} {value:.4g} is not in the best 1/{settings.early_stopping.reduction_factor} "
            "of its Hyperband rung")


def study_of(parameters: Sequence[Parameter], goal: str, records: Sequence[Mapping]) -> optuna.Study:
    """Every trial as a finished or running Optuna trial (for reports and plots)."""
    study = optuna.create_study(direction=goal, study_name="m2f-sweep-report")
    dists = distributions(parameters)
    for record in records:
        params = {path: _encode(record["parameters"][path]) for path in dists if path in record["parameters"]}
        state = _TRIAL_STATES.get(record["state"], optuna.trial.TrialState.RUNNING)
        intermediate = {int(s): float(v) for s, v in record.get("intermediate") or []}
        value = record.get("value") if state == optuna.trial.TrialState.COMPLETE else None
        if state == optuna.trial.TrialState.PRUNED and intermediate:
            value = intermediate[max(intermediate)]
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params=params, distributions={p: dists[p] for p in params},
            intermediate_values=intermediate, user_attrs={"name": record.get("name", "")}))
    return study
