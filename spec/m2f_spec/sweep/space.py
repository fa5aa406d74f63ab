"""Search spaces over experiment paths, checked against the experiment schema before any trial runs.

A parameter is an experiment path (`train.optim.lr`) with a distribution: `float` and `int` (`min`, `max`,
optional `log`, `step`) or `categorical` (`values`). Every value a parameter can take is validated by the same
loader that validates a spec (`config_from_dict`), with the template experiment around it, so a range the
trainer would refuse (an lr of 0, a crop size of 0, a hidden_dim the heads do not divide) is refused here,
naming the parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from m2f_spec.errors import SpecError
from m2f_spec.loader import SECTION_ALIASES, config_from_dict, list_item_type, unwrap_optional
from m2f_spec.schema import ExperimentConfig

FLOAT, INT, CATEGORICAL = "float", "int", "categorical"
TYPES = (FLOAT, INT, CATEGORICAL)
# An int range up to this many values is validated value by value (divisibility rules live between the bounds).
MAX_INT_VALUES_CHECKED = 256
MAX_PARAMETERS = 32

# Used when a sweep gives no parameters (docs/sweep.md explains each range).
DEFAULT_PARAMETERS: dict[str, dict[str, Any]] = {
    "train.optim.lr": {"type": FLOAT, "min": 1e-5, "max": 1e-3, "log": True},
    "train.optim.weight_decay": {"type": FLOAT, "min": 1e-4, "max": 0.1, "log": True},
    "train.optim.backbone_multiplier": {"type": FLOAT, "min": 0.05, "max": 1.0, "log": True},
    "model.mask_former.num_object_queries": {"type": CATEGORICAL, "values": [50, 100, 200]},
    "dataset.augmentation.train_crop_size": {"type": CATEGORICAL, "values": [[512, 512], [640, 640], [768, 768]]},
}


@dataclass(frozen=True)
class Parameter:
    path: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.type == CATEGORICAL:
            return {"type": CATEGORICAL, "values": list(self.values)}
        out: dict[str, Any] = {"type": self.type, "min": self.low, "max": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def schema_field(path: str) -> tuple[Any, Mapping[str, Any]]:
    """(type, field metadata) of a scalar or list field at `path`; SpecError when the path is not one."""
    parts = path.split(".")
    parts[0] = SECTION_ALIASES.get(parts[0], parts[0])
    cls: Any = ExperimentConfig
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise SpecError(f"{'.'.join(parts[:depth])} is a value, not a section")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            known = ", ".join(sorted(fields))
            raise SpecError(f"unknown experiment path (no {part!r} in {'.'.join(parts[:depth]) or 'the spec'}; "
                            f"it has {known})")
        tp, _ = unwrap_optional(typing.get_type_hints(cls)[part])
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
                raise SpecError("names a section, not a value")
            return tp, fields[part].metadata
        cls = tp
    raise SpecError("empty path")  # unreachable: split() gives at least one part


def set_path(experiment: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `experiment` with `path` set (sections created as needed; `data:` honoured)."""
    out = copy.deepcopy(dict(experiment))
    parts = path.split(".")
    if parts[0] in SECTION_ALIASES and parts[0] not in out and SECTION_ALIASES[parts[0]] in out:
        parts[0] = SECTION_ALIASES[parts[0]]
    elif parts[0] in SECTION_ALIASES.values():
        alias = next(a for a, c in SECTION_ALIASES.items() if c == parts[0])
        if alias in out and parts[0] not in out:
            parts[0] = alias
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, Mapping) else {}
        node = child
    node[parts[-1]] = value
    return out


def apply_parameters(experiment: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(experiment)
    for path, value in values.items():
        out = set_path(out, path, value)
    return out


def parse_parameters(raw: Mapping[str, Any] | None, experiment: Mapping[str, Any],
                     where: str = "parameters", validate_values: bool = True) -> list[Parameter]:
    """The search space, each parameter checked against the schema with `experiment` around it. An empty or
    missing mapping means DEFAULT_PARAMETERS. SpecError names `where[path]` and what is wrong.
    `validate_values=False` only reads the space (a report of a sweep that already ran)."""
    if raw is None or (isinstance(raw, Mapping) and not raw):
        raw = DEFAULT_PARAMETERS
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: a mapping of experiment paths to distributions, got {type(raw).__name__}")
    if len(raw) > MAX_PARAMETERS:
        raise SpecError(f"{where}: at most {MAX_PARAMETERS} parameters, got {len(raw)}")
    return [_parameter(str(path), spec, experiment, f"{where}[{path}]", validate_values) for path, spec in raw.items()]


def _parameter(path: str, spec: Any, experiment: Mapping[str, Any], where: str, validate_values: bool) -> Parameter:
    def fail(message: str) -> SpecError:
        return SpecError(f"{where}: {message}")

    try:
        field_type, _ = schema_field(path)
    except SpecError as exc:
        raise fail(str(exc)) from None
    if not isinstance(spec, Mapping):
        raise fail(f"a distribution {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise fail(f"type: {kind!r} is not one of {', '.join(TYPES)}")
    unknown = set(spec) - ({"type", "values"} if kind == CATEGORICAL else {"type", "min", "max", "log", "step"})
    if unknown:
        raise fail(f"unknown key(s) {', '.join(sorted(map(str, unknown)))} for a {kind} parameter")
    if kind == CATEGORICAL:
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise fail("values: a non-empty list is required")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise fail("values: each value may appear once")
        parameter = Parameter(path, CATEGORICAL, values=tuple(values))
        candidates = list(values)
    else:
        if field_type is not float and field_type is not int:
            raise fail(f"a {kind} range needs a numeric field; {path} holds {_type_name(field_type)} "
                       "(use type: categorical)")
        if kind == FLOAT and field_type is int:
            raise fail(f"{path} is an integer field; use type: int")
        low, high = _number(spec.get("min")), _number(spec.get("max"))
        for key, value in (("min", low), ("max", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise fail(f"{key}: a finite number is required, got {value!r}")
            if kind == INT and int(value) != value:
                raise fail(f"{key}: an integer is required, got {value!r}")
        if low > high:
            raise fail(f"min {low!r} is greater than max {high!r}")
        log, step = bool(spec.get("log", False)), _number(spec.get("step"))
        if log and low <= 0:
            raise fail(f"log: true needs min > 0, got {low!r}")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise fail(f"step: a positive number is required, got {step!r}")
            if log:
                raise fail("step and log: true cannot be combined")
            if kind == INT and int(step) != step:
                raise fail(f"step: an integer is required, got {step!r}")
        if kind == INT:
            low, high, step = int(low), int(high), int(step) if step is not None else None
        parameter = Parameter(path, kind, float(low) if kind == FLOAT else low,
                              float(high) if kind == FLOAT else high, log, step)
        candidates = _candidates(parameter)
    for value in candidates if validate_values else ():
        try:
            config_from_dict(set_path(experiment, path, value), source="experiment")
        except SpecError as exc:
            raise fail(f"value {value!r} is not accepted by the experiment schema: {exc}") from None
    return parameter


def _number(value: Any) -> Any:
    """PyYAML reads `1e-5` (no dot) as a string, as the spec loader knows; so does this."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _candidates(parameter: Parameter) -> list[Any]:
    """The values validated for a numeric range: both bounds, and every value of a small int range."""
    if parameter.type == INT:
        step = parameter.step or 1
        count = (parameter.high - parameter.low) // step + 1
        if count <= MAX_INT_VALUES_CHECKED and not parameter.log:
            return list(range(parameter.low, parameter.high + 1, step))
    return sorted({parameter.low, parameter.high})


def _type_name(tp: Any) -> str:
    item = list_item_type(tp)
    if item is not None:
        return f"a list of {getattr(item, '__name__', item)}"
    return {bool: "a boolean", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def grid_space(parameters: list[Parameter] | tuple[Parameter, ...], where: str = "parameters") -> dict[str, list[Any]]:
    """Every value of each parameter for algorithm grid (categorical values are JSON text when not scalars)."""
    space = {}
    for p in parameters:
        if p.type == CATEGORICAL:
            space[p.path] = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in p.values]
        elif p.step is not None or p.type == INT:
            step = p.step or 1
            count = int(math.floor((p.high - p.low) / step + 1e-9)) + 1
            if count > 1_000_000:
                raise SpecError(f"{where}[{p.path}]: {count} grid values; use a larger step")
            space[p.path] = [round(p.low + i * step, 12) for i in range(count)]
        else:
            raise SpecError(f"{where}[{p.path}]: algorithm grid needs values or a step for a float range")
    return space


# -- TAO AutoML-style input -------------------------------------------------------------------------------


def parameters_from_automl(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """TAO AutoML's way of naming a search (`automl_hyperparameters`: experiment paths, ranges from the schema,
    `automl_range_override`: [{parameter, valid_min, valid_max, valid_options}]) -> our `parameters` mapping."""
    paths = raw.get("automl_hyperparameters") or []
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise SpecError("automl_hyperparameters: a list of experiment paths is required")
    overrides = {}
    for index, item in enumerate(raw.get("automl_range_override") or []):
        if not isinstance(item, Mapping) or not isinstance(item.get("parameter"), str):
            raise SpecError(f"automl_range_override[{index}]: {{parameter, valid_min, valid_max | valid_options}}")
        overrides[item["parameter"]] = item
    parameters: dict[str, dict[str, Any]] = {}
    for path in paths:
        where = f"automl_hyperparameters[{path}]"
        try:
            field_type, metadata = schema_field(path)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        override = overrides.get(path, {})
        if "valid_options" in override:
            parameters[path] = {"type": CATEGORICAL, "values": list(override["valid_options"])}
        elif field_type is bool:
            parameters[path] = {"type": CATEGORICAL, "values": [False, True]}
        elif metadata.get("choices"):
            parameters[path] = {"type": CATEGORICAL, "values": list(metadata["choices"])}
        elif path in DEFAULT_PARAMETERS and not {"valid_min", "valid_max"} & set(override):
            parameters[path] = dict(DEFAULT_PARAMETERS[path])
        elif field_type in (int, float):
            low = override.get("valid_min", metadata.get("minimum", metadata.get("exclusive_minimum")))
            high = override.get("valid_max", metadata.get("maximum"))
            if low is None or high is None:
                raise SpecError(f"{where}: the schema gives no finite range; add it to automl_range_override "
                                "with valid_min and valid_max")
            parameters[path] = {"type": INT if field_type is int else FLOAT, "min": low, "max": high}
        else:
            raise SpecError(f"{where}: {_type_name(field_type)} field; give valid_options in automl_range_override")
    return parameters
