"""Load, override and validate experiment specs into the typed schema; serialise them back."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from m2f_spec.errors import SpecError
from m2f_spec.fields import field_default
from m2f_spec.model_rules import check_model
from m2f_spec.schema import ExperimentConfig

# TAO specs call the dataset section either `dataset:` or `data:`; the attribute is always `dataset`.
SECTION_ALIASES = {"data": "dataset"}
REDACTED = "***"

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- type helpers


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, nullable) for `X | None`; (tp, False) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def list_item_type(tp: Any) -> Any | None:
    """The item type of `list[X]`, or None when tp is not a list type."""
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0]
    return None


_KIND = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _range_text(meta: Mapping[str, Any], prefix: str = "") -> str:
    low, high = meta.get(f"{prefix}minimum"), meta.get(f"{prefix}maximum")
    exclusive_low = meta.get("exclusive_minimum") if not prefix else None
    if exclusive_low is not None:
        return f" > {exclusive_low:g}" + (f" and <= {high:g}" if high is not None else "")
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    if low is not None:
        return f" >= {low:g}"
    if high is not None:
        return f" <= {high:g}"
    return ""


def allowed_text(tp: Any, meta: Mapping[str, Any]) -> str:
    """A human description of what a field accepts, used in every error message."""
    inner, nullable = unwrap_optional(tp)
    null = " or null" if nullable else ""
    if inner is dict:
        return f"a mapping of names to values{null}"
    item = list_item_type(inner)
    if item is not None and dataclasses.is_dataclass(item):
        return f"a list of mappings ({(item.__doc__ or item.__name__).strip().rstrip('.')}){null}"
    if item is not None:
        length = meta.get("length")
        count = ""
        if length:
            count = f"{length[0]} " if length[0] == length[1] else f"{length[0]}..{length[1]} "
        items = _KIND[item].split(" ", 1)[1] + "s"
        if meta.get("item_choices"):
            return f"a list of {count}values from: {', '.join(meta['item_choices'])}{null}"
        return f"a list of {count}{items}{_range_text(meta, 'item_')}{null}"
    if meta.get("choices"):
        return f"one of: {', '.join(meta['choices'])}{null}"
    return f"{_KIND.get(inner, str(inner))}{_range_text(meta)}{null}"


# ------------------------------------------------------------------------------------ conversion


class _Errors:
    """Collects every problem of a spec so that one run reports them all (in one line)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.messages.append(f"{path}: {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(kind: type, value: Any, path: str, meta: Mapping[str, Any], errors: _Errors, prefix: str = "") -> Any:
    allowed = allowed_text(kind, meta) if not prefix else f"{_KIND[kind]}{_range_text(meta, prefix)}"
    given = value
    if kind is bool:
        if not isinstance(value, bool):
            errors.add(path, f"expected {allowed}, got {_show(value)}")
            return None
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.add(path, f"expected {allowed}, got {_show(value)}")
            return None
    elif kind is float:
        # PyYAML reads `1e-4` (no dot) as a string; TAO specs are full of those.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                errors.add(path, f"expected {allowed}, got {_show(value)}")
                return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            errors.add(path, f"expected {allowed}, got {_show(value)}")
            return None
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            errors.add(path, f"expected {allowed}, got {_show(value)}")
            return None
        choices = meta.get(f"{prefix}choices")
        if choices:
            return _choice(value, choices, meta.get("aliases", {}) if not prefix else {}, path, errors)
        return value
    low = meta.get(f"{prefix}minimum")
    high = meta.get(f"{prefix}maximum")
    exclusive_low = meta.get("exclusive_minimum") if not prefix else None
    if (
        (low is not None and value < low)
        or (high is not None and value > high)
        or (exclusive_low is not None and value <= exclusive_low)
    ):
        errors.add(path, f"{_show(given)} is out of range; allowed: {allowed}")
        return None
    return value


def _choice(value: str, choices: tuple[str, ...], aliases: Mapping[str, str], path: str, errors: _Errors) -> Any:
    spellings = {c.lower(): c for c in choices}
    spellings.update({a.lower(): c for a, c in aliases.items()})
    canonical = spellings.get(value.lower())
    if canonical is None:
        close = difflib.get_close_matches(value.lower(), list(spellings), n=1, cutoff=0.6)
        hint = f" (did you mean {spellings[close[0]]!r}?)" if close else ""
        errors.add(path, f"{value!r} is not allowed; allowed: {', '.join(choices)}{hint}")
    return canonical


def _value(tp: Any, value: Any, path: str, meta: Mapping[str, Any], errors: _Errors) -> Any:
    inner, nullable = unwrap_optional(tp)
    if value is None:
        if nullable:
            return None
        errors.add(path, f"must not be null; allowed: {allowed_text(tp, meta)}")
        return None
    if dataclasses.is_dataclass(inner):
        return _section(inner, value, path, errors)
    if inner is dict:  # a free mapping handed to a library as keyword arguments (quantize.backend_kwargs)
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            errors.add(path, f"expected {allowed_text(tp, meta)}, got {_show(value)}")
            return None
        return dict(value)
    item = list_item_type(inner)
    if item is not None:
        if not isinstance(value, (list, tuple)):
            errors.add(path, f"expected {allowed_text(tp, meta)}, got {_show(value)}")
            return None
        length = meta.get("length")
        if length and not (length[0] <= len(value) <= length[1]):
            errors.add(path, f"has {len(value)} items; allowed: {allowed_text(tp, meta)}")
            return None
        if dataclasses.is_dataclass(item):
            return [_section(item, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return [_scalar(item, v, f"{path}[{i}]", meta, errors, prefix="item_") for i, v in enumerate(value)]
    return _scalar(inner, value, path, meta, errors)


def _unknown_key(key: str, valid: Iterable[str], path: str, errors: _Errors) -> None:
    valid = list(valid)
    where = f"{path}.{key}" if path else str(key)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if close:
        suggestion = f"{path}.{close[0]}" if path else close[0]
        errors.add(where, f"unknown key; did you mean {suggestion!r}?")
    else:
        errors.add(where, f"unknown key; valid keys here: {', '.join(valid)}")


def _section(cls: type, data: Any, path: str, errors: _Errors) -> Any:
    if data is None:  # an empty section (`swin:` with nothing under it) means all defaults
        return cls()
    if not isinstance(data, Mapping):
        errors.add(path or "<spec>", f"expected a mapping (section), got {_show(data)}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            _unknown_key(key, fields, path, errors)
            continue
        child = f"{path}.{key}" if path else key
        converted = _value(hints[key], value, child, fields[key].metadata, errors)
        kwargs[key] = field_default(fields[key]) if converted is None and value is not None else converted
    return cls(**kwargs)


# ------------------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.optim.lr=1e-4` -> (["train", "optim", "lr"], 1e-4), the value read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override {text!r} must look like section.key=value (e.g. train.num_gpus=2)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise SpecError(f"override {text!r}: the value is not valid YAML ({exc.problem})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set each dotted key in the raw spec (before validation, so typos get the usual errors)."""
    for text in overrides:
        parts, value = parse_override(text)
        parts[0] = SECTION_ALIASES.get(parts[0], parts[0])
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = _from_working_dir(parts, value)
    return raw


# A split's relative paths resolve under its root_dir; one typed on the command line means the shell's folder.
SPLIT_PATH_FIELDS = ("img_dir", "panoptic_json", "panoptic_dir", "instance_json", "annot_file")


def _from_working_dir(parts: list[str], value: Any) -> Any:
    if (len(parts) == 3 and parts[0] == "dataset" and parts[2] in SPLIT_PATH_FIELDS and isinstance(value, str)
            and value and "://" not in value and not Path(value).is_absolute()):
        return os.path.abspath(value)
    return value


# ------------------------------------------------------------------------------------ resolution


def resolve_gpus(num_gpus: int, gpu_ids: list[int]) -> tuple[int, list[int]]:
    """TAO's rule: inconsistent num_gpus / gpu_ids resolve to the setting that implies more GPUs."""
    if len(gpu_ids) > num_gpus:
        return len(gpu_ids), list(gpu_ids)
    if num_gpus > len(gpu_ids):
        return num_gpus, list(range(num_gpus))
    return num_gpus, list(gpu_ids)


def _cross_checks(cfg: ExperimentConfig, raw: Mapping[str, Any], errors: _Errors) -> None:
    """Constraints between fields, and TAO's GPU rule (split types resolve in DatasetConfig itself)."""
    for name in ("train", "evaluate", "inference"):
        task = getattr(cfg, name)
        if len(set(task.gpu_ids)) != len(task.gpu_ids):
            errors.add(f"{name}.gpu_ids", f"{task.gpu_ids} repeats a GPU index")
        resolved = resolve_gpus(task.num_gpus, task.gpu_ids)
        given = raw.get(name) or {}
        # Giving only one of the two is the normal way to ask for N GPUs; warn about real conflicts only.
        if resolved != (task.num_gpus, task.gpu_ids) and {"num_gpus", "gpu_ids"} <= set(given):
            log.warning(
                "%s: num_gpus %d and gpu_ids %s disagree; using num_gpus %d, gpu_ids %s (the setting "
                "implying more GPUs wins)", name, task.num_gpus, task.gpu_ids, *resolved,
            )
        task.num_gpus, task.gpu_ids = resolved

    optim = cfg.train.optim
    if optim.lr_scheduler == "StepLR" and not optim.milestones:
        errors.add("train.optim.milestones", "is empty; StepLR decays every milestones[0] epochs")

    low, high = cfg.dataset.augmentation.lsj_scale_range
    if low > high:
        errors.add("dataset.augmentation.lsj_scale_range", f"min {low:g} is greater than max {high:g}")

    backbone = cfg.model.backbone
    # Only Swin pairs names with stages one to one (TAO's EfficientViT defaults name 4 maps for 3 stages).
    swin = backbone.swin
    if backbone.type == "swin" and len(swin.out_indices) != len(swin.out_features):
        errors.add(
            "model.backbone.swin.out_features",
            f"has {len(swin.out_features)} names for {len(swin.out_indices)} out_indices",
        )
    if backbone.timm_name is None:
        produced = getattr(backbone, backbone.type).out_features
        missing = [f for f in cfg.model.sem_seg_head.deformable_transformer_encoder_in_features if f not in produced]
        if missing:
            errors.add(
                "model.sem_seg_head.deformable_transformer_encoder_in_features",
                f"{missing} not produced by the backbone (model.backbone.{backbone.type}.out_features: {produced})",
            )

    check_model(cfg, errors.add)

    if not re.fullmatch(r"cuda|cpu|trt|cuda:[0-9]+", cfg.quantize.device):
        errors.add("quantize.device", f"{cfg.quantize.device!r} is not one of cuda, cuda:N, cpu, trt")

    for name in ("export", "gen_trt_engine"):
        if getattr(cfg, name).batch_size == 0:
            errors.add(f"{name}.batch_size", "0 is not allowed; allowed: -1 (dynamic) or an integer >= 1")
    trt = cfg.gen_trt_engine.tensorrt
    if not trt.min_batch_size <= trt.opt_batch_size <= trt.max_batch_size:
        errors.add(
            "gen_trt_engine.tensorrt",
            f"needs min_batch_size <= opt_batch_size <= max_batch_size, got "
            f"{trt.min_batch_size}, {trt.opt_batch_size}, {trt.max_batch_size}",
        )


# ------------------------------------------------------------------------------------ public API


def config_from_dict(raw: Mapping[str, Any] | None, overrides: Iterable[str] = (), source: str = "spec") -> ExperimentConfig:
    """Validate a spec given as a mapping (a parsed YAML file, a custom resource's spec)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"{source}: the spec must be a YAML mapping of sections, got {_show(raw)}")
    raw = copy.deepcopy(dict(raw))  # overrides edit nested sections: never the caller's mapping
    for alias, canonical in SECTION_ALIASES.items():
        if alias in raw:
            if canonical in raw:
                raise SpecError(f"{source}: both {alias!r} and {canonical!r} are given; keep one of them")
            raw[canonical] = raw.pop(alias)
    apply_overrides(raw, overrides)
    errors = _Errors()
    cfg = _section(ExperimentConfig, raw, "", errors)
    if not errors.messages:
        _cross_checks(cfg, raw, errors)
    if errors.messages:
        raise SpecError(f"{source}: " + "; ".join(errors.messages))
    return cfg


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment spec, apply `section.key=value` overrides and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"experiment spec file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read experiment spec file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    return config_from_dict(raw, overrides, source=str(path))


def spec_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The spec as plain data (YAML keys, section `dataset`)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: ExperimentConfig, *, redact_secrets: bool = True) -> str:
    """The spec as YAML in schema order; the encryption key is replaced by *** unless asked not to."""
    data = spec_to_dict(cfg)
    if redact_secrets and data.get("encryption_key"):
        data["encryption_key"] = REDACTED
    return yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, default_flow_style=False, width=110)


class _SpecDumper(yaml.SafeDumper):
    """Block-style sections with short lists of scalars on one line (`gpu_ids: [0, 1]`)."""


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_SpecDumper.add_representer(list, _represent_list)
