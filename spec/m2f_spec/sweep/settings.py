"""A sweep's settings, read and checked from the Mask2FormerSweep spec or a local `--space` file (same keys)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from m2f_spec.errors import SpecError
from m2f_spec.loader import config_from_dict
from m2f_spec.sweep.space import CATEGORICAL, Parameter, grid_space, parameters_from_automl, parse_parameters

ALGORITHMS = ("tpe", "random", "grid", "cmaes")
EARLY_STOPPING = ("none", "median", "hyperband")
GOALS = ("maximize", "minimize")
# TAO AutoML's algorithm names -> ours (TAO's Hyperband samples at random and stops by rungs).
AUTOML_ALGORITHMS = {"bayesian": ("tpe", "none"), "hyperband": ("random", "hyperband")}
DEFAULTS = {"maxTrials": 12, "parallelTrials": 1, "maxFailedTrials": 3, "seed": 0}
MAX_TRIALS = 999  # trials are named <sweep>-NNN; the status's history stays far below etcd's object limit
MAX_GRID_POINTS = 10_000
# What the trainer's validation reports per task (m2f_trainer.evaluation.report), and `loss` with val_loss.
VALIDATION_METRICS = {
    "panoptic": ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"),
    "instance": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "semantic": ("mIoU", "fwIoU", "mACC", "pACC"),
}
_KEYS = {"parameters", "objective", "algorithm", "algorithmSettings", "earlyStopping", "maxTrials",
         "parallelTrials", "maxFailedTrials", "seed", "automl_hyperparameters", "automl_range_override",
         "automl_algorithm", "automl_max_recommendations"}


@dataclass(frozen=True)
class EarlyStopping:
    algorithm: str = "none"
    startup_trials: int = 5  # median: trials that must finish before any is pruned (Optuna's default)
    warmup_epochs: int = 0  # median: epochs of a trial never judged
    min_epochs: int = 1  # hyperband: the first rung
    reduction_factor: int = 3  # hyperband: 1/reduction_factor of a rung goes on


@dataclass(frozen=True)
class SweepSettings:
    parameters: tuple[Parameter, ...]
    metric: str
    goal: str = "maximize"
    algorithm: str = "tpe"
    sampler_startup_trials: int | None = None
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    max_trials: int = DEFAULTS["maxTrials"]
    parallel: int = DEFAULTS["parallelTrials"]
    max_failed: int = DEFAULTS["maxFailedTrials"]
    seed: int = DEFAULTS["seed"]
    max_epochs: int = 10

    grid_points: int | None = None  # algorithm grid: how many points the space has

    @property
    def trial_budget(self) -> int:
        """maxTrials, or fewer when a grid has fewer points."""
        return self.max_trials if self.grid_points is None else min(self.max_trials, self.grid_points)


def _int(raw: Mapping, key: str, where: str, minimum: int, default: int | None = None,
         maximum: int | None = None) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SpecError(f"{where}.{key}: an integer {bounds} is required, got {value!r}")
    return value


def _grid_points(parameters: tuple[Parameter, ...], where: str) -> int:
    points = math.prod(len(values) for values in grid_space(parameters, where).values())
    if points > MAX_GRID_POINTS:
        raise SpecError(f"{where}.parameters: algorithm grid spans {points} points, more than {MAX_GRID_POINTS}; "
                        "use fewer values or a larger step")
    return points


def _choice(raw: Mapping, key: str, where: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise SpecError(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def settings_from(raw: Mapping[str, Any], experiment: Mapping[str, Any], where: str = "spec") -> SweepSettings:
    """The settings of a sweep over `experiment` (the template's); SpecError names the field and what is allowed."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: a mapping is required")
    unknown = set(raw) - _KEYS
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"valid: {', '.join(sorted(k for k in _KEYS if not k.startswith('automl_')))}")
    experiment_cfg = config_from_dict(experiment, source=f"{where}.template.experiment")
    raw = dict(raw)
    if "automl_hyperparameters" in raw:
        if raw.get("parameters"):
            raise SpecError(f"{where}: give either parameters or automl_hyperparameters, not both")
        raw["parameters"] = parameters_from_automl(raw)
        algorithm, stopping = AUTOML_ALGORITHMS.get(str(raw.get("automl_algorithm", "bayesian")).lower(), (None, None))
        if algorithm is None:
            raise SpecError(f"{where}.automl_algorithm: {raw['automl_algorithm']!r} is not one of "
                            f"{', '.join(AUTOML_ALGORITHMS)}")
        raw.setdefault("algorithm", algorithm)
        raw.setdefault("earlyStopping", {"algorithm": stopping})
        if "automl_max_recommendations" in raw:
            raw.setdefault("maxTrials", raw["automl_max_recommendations"])
    parameters = tuple(parse_parameters(raw.get("parameters"), experiment, where=f"{where}.parameters"))

    objective = raw.get("objective") or {}
    if not isinstance(objective, Mapping):
        raise SpecError(f"{where}.objective: {{metric, goal}} is required")
    mode = str(experiment_cfg.model.mode).lower()
    metric = objective.get("metric", VALIDATION_METRICS.get(mode, ("PQ",))[0])
    known = (*VALIDATION_METRICS.get(mode, ()), "loss")
    if metric not in known:
        raise SpecError(f"{where}.objective.metric: {metric!r} is not a validation metric of model.mode {mode}; "
                        f"choose from {', '.join(known)}")
    goal = _choice(objective, "goal", f"{where}.objective", GOALS, "minimize" if metric.endswith("loss") else "maximize")
    if metric == "loss" and experiment_cfg.train.optim.monitor_name != "val_loss":
        raise SpecError(f"{where}.objective.metric: loss (the validation loss) is computed only with "
                        "train.optim.monitor_name: val_loss in the experiment")

    algorithm = _choice(raw, "algorithm", where, ALGORITHMS, "tpe")
    algorithm_settings = raw.get("algorithmSettings") or {}
    if not isinstance(algorithm_settings, Mapping) or set(algorithm_settings) - {"startupTrials"}:
        raise SpecError(f"{where}.algorithmSettings: only startupTrials is accepted")
    sampler_startup = _int(algorithm_settings, "startupTrials", f"{where}.algorithmSettings", 0)

    stopping_raw = raw.get("earlyStopping") or {}
    if isinstance(stopping_raw, str):
        stopping_raw = {"algorithm": stopping_raw}
    if not isinstance(stopping_raw, Mapping):
        raise SpecError(f"{where}.earlyStopping: none, median, hyperband or {{algorithm, ...}} is required")
    allowed = {"algorithm", "startupTrials", "warmupEpochs", "minEpochs", "reductionFactor"}
    if set(stopping_raw) - allowed:
        raise SpecError(f"{where}.earlyStopping: unknown key(s) {', '.join(sorted(set(stopping_raw) - allowed))}")
    w = f"{where}.earlyStopping"
    stopping = EarlyStopping(
        algorithm=_choice(stopping_raw, "algorithm", w, EARLY_STOPPING, "none"),
        startup_trials=_int(stopping_raw, "startupTrials", w, 0, 5),
        warmup_epochs=_int(stopping_raw, "warmupEpochs", w, 0, 0),
        min_epochs=_int(stopping_raw, "minEpochs", w, 1, 1),
        reduction_factor=_int(stopping_raw, "reductionFactor", w, 2, 3),
    )
    if stopping.algorithm != "none" and experiment_cfg.train.validation_interval > experiment_cfg.train.num_epochs:
        raise SpecError(f"{w}.algorithm: {stopping.algorithm} needs validation metrics during training, but "
                        f"train.validation_interval {experiment_cfg.train.validation_interval} exceeds "
                        f"train.num_epochs {experiment_cfg.train.num_epochs}")

    settings = SweepSettings(
        parameters=parameters, metric=metric, goal=goal, algorithm=algorithm,
        sampler_startup_trials=sampler_startup, early_stopping=stopping,
        max_trials=_int(raw, "maxTrials", where, 1, DEFAULTS["maxTrials"], MAX_TRIALS),
        parallel=_int(raw, "parallelTrials", where, 1, DEFAULTS["parallelTrials"]),
        max_failed=_int(raw, "maxFailedTrials", where, 0, DEFAULTS["maxFailedTrials"]),
        seed=_int(raw, "seed", where, 0, DEFAULTS["seed"]),
        max_epochs=experiment_cfg.train.num_epochs,
        grid_points=_grid_points(parameters, where) if algorithm == "grid" else None,
    )
    if algorithm == "cmaes" and all(p.type == CATEGORICAL for p in parameters):
        raise SpecError(f"{where}.algorithm: cmaes searches numeric ranges; every parameter here is categorical "
                        "(use tpe, random or grid)")
    return settings


