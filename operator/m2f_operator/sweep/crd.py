"""The Mask2FormerSweep CRD's schema and printer columns (m2f_operator.crds writes it with the others)."""

from __future__ import annotations

from m2f_spec.sweep.settings import ALGORITHMS, DEFAULTS, EARLY_STOPPING, GOALS, MAX_TRIALS
from m2f_spec.sweep.space import MAX_PARAMETERS, TYPES

_OBJECT = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_ANY = {"x-kubernetes-preserve-unknown-fields": True}  # a parameter value: number, string, boolean or list


def _describe(schema: dict, text: str) -> dict:
    return {**schema, "description": text}


def _without_cel(node):
    if isinstance(node, list):
        return [_without_cel(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: _without_cel(value) for key, value in node.items() if key != "x-kubernetes-validations"}


def spec_schema(train_spec_schema: dict) -> dict:
    # The template is a Train's spec; its CEL rules compare a Train's old and new spec and mean nothing here
    # (the search is fixed by the operator once trials exist: status.searchDigest).
    template = _describe(_without_cel(train_spec_schema),
                         "A Mask2FormerTrain spec every trial starts from (gang shape, volumes, experiment); "
                         "resultsDir is the root of the trials' folders (default /results/sweep).")
    distribution = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": list(TYPES)},
            "min": {"type": "number"},
            "max": {"type": "number"},
            "log": {"type": "boolean", "description": "Sample on a log scale (min > 0)."},
            "step": {"type": "number", "description": "Discretisation step (not with log)."},
            "values": {"type": "array", "maxItems": 64, "items": _ANY, "description": "Categorical choices."},
        },
    }
    return {
        "type": "object",
        "required": ["template"],
        "properties": {
            "template": template,
            "parameters": _describe({"type": "object", "maxProperties": MAX_PARAMETERS,
                                     "additionalProperties": distribution},
                                    "Search space: experiment path -> {type: float|int|categorical, min, max, log, "
                                    "step, values}; omitted: the default space (docs/sweep.md)."),
            "objective": _describe({"type": "object", "properties": {
                "metric": {"type": "string", "maxLength": 128,
                           "description": "A validation metric: PQ, mIoU, AP, SQ, ... (default: the task's headline)."},
                "goal": {"type": "string", "enum": list(GOALS)},
            }}, "What the search optimises."),
            "algorithm": _describe({"type": "string", "enum": list(ALGORITHMS)}, "Sampler (default tpe)."),
            "algorithmSettings": _describe({"type": "object", "properties": {
                "startupTrials": {"type": "integer", "minimum": 0,
                                  "description": "tpe / cmaes: random trials before the model is used."}}},
                "Sampler settings."),
            "earlyStopping": _describe({"type": "object", "properties": {
                "algorithm": {"type": "string", "enum": list(EARLY_STOPPING)},
                "startupTrials": {"type": "integer", "minimum": 0,
                                  "description": "median: finished trials needed before any is stopped (default 5)."},
                "warmupEpochs": {"type": "integer", "minimum": 0, "description": "median: epochs never judged."},
                "minEpochs": {"type": "integer", "minimum": 1, "description": "hyperband: the first rung."},
                "reductionFactor": {"type": "integer", "minimum": 2, "description": "hyperband: 1/n go on."},
            }}, "Stops hopeless trials from their per-validation objective (default none)."),
            "maxTrials": _describe({"type": "integer", "minimum": 1, "maximum": MAX_TRIALS},
                                   f"Trials in all (default {DEFAULTS['maxTrials']})."),
            "parallelTrials": _describe({"type": "integer", "minimum": 1},
                                        f"Trials running at once (default {DEFAULTS['parallelTrials']})."),
            "maxFailedTrials": _describe({"type": "integer", "minimum": 0},
                                         f"More failed trials fail the sweep (default {DEFAULTS['maxFailedTrials']})."),
            "seed": _describe({"type": "integer", "minimum": 0}, "Sampler seed: the same seed, the same search."),
            "suspend": _describe({"type": "boolean"}, "Start no new trial while true (running ones go on)."),
        },
    }


def status_schema(condition: dict) -> dict:
    record = {
        "type": "object",
        "properties": {
            "number": {"type": "integer"},
            "name": {"type": "string"},
            "parameters": _OBJECT,
            "state": {"type": "string", "description": "Running, Succeeded, Pruned, Failed or Stopped."},
            "seen": {"type": "integer", "description": "How many earlier trials its suggestion learned from."},
            "intermediate": {"type": "array", "description": "[epoch, objective] per validation observed.",
                             "items": {"type": "array", "items": {"type": "number"}}},
            "value": {"type": "number"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "startTime": {"type": "string"},
            "completionTime": {"type": "string"},
        },
    }
    return {
        "type": "object",
        "properties": {
            "phase": {"type": "string"},
            "message": {"type": "string"},
            "conditions": {"type": "array", "items": condition, "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]},
            "observedGeneration": {"type": "integer"},
            "startTime": {"type": "string", "format": "date-time"},
            "completionTime": {"type": "string", "format": "date-time"},
            "trials": {"type": "object", "properties": {
                key: {"type": "integer"} for key in ("total", "running", "succeeded", "pruned", "failed")}},
            "bestTrial": {"type": "object", "properties": {
                "name": {"type": "string"}, "number": {"type": "integer"}, "parameters": _OBJECT,
                "metric": {"type": "string"}, "value": {"type": "number"}}},
            "history": _describe({"type": "array", "items": record},
                                 "Every trial: parameters, state, intermediate values, objective, prune reason. "
                                 "The durable record the search is rebuilt from."),
            "searchDigest": _describe({"type": "string"}, "Digest of the search as its first trial started."),
            "kopf": _describe(_OBJECT, "kopf handler progress."),
        },
    }


def printer_columns() -> list[dict]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Trials", "type": "integer", "jsonPath": ".status.trials.total"},
        {"name": "Running", "type": "integer", "jsonPath": ".status.trials.running"},
        {"name": "Succeeded", "type": "integer", "jsonPath": ".status.trials.succeeded"},
        {"name": "Pruned", "type": "integer", "jsonPath": ".status.trials.pruned"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.trials.failed"},
        {"name": "Metric", "type": "string", "jsonPath": ".status.bestTrial.metric"},
        {"name": "Best", "type": "number", "jsonPath": ".status.bestTrial.value"},
        {"name": "Best-Trial", "type": "string", "jsonPath": ".status.bestTrial.name"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
