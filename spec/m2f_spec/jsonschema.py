"""JSON Schema of the experiment spec, generated from the dataclasses (the CRDs embed it)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from m2f_spec.fields import field_default
from m2f_spec.loader import SECTION_ALIASES, list_item_type, unwrap_optional
from m2f_spec.schema import ExperimentConfig

OPENAPI = "openapi"
DRAFT_07 = "draft-07"
FLAVORS = (OPENAPI, DRAFT_07)

_JSON_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _spellings(choices: tuple[str, ...], aliases: dict[str, str]) -> list[str]:
    # The loader matches enums case-insensitively; a CRD enum cannot, so it lists the usual spellings.
    out: list[str] = []
    for word in (*choices, *aliases):
        for variant in (word, word.lower(), word.upper()):
            if variant not in out:
                out.append(variant)
    return out


def _bounds(meta: dict[str, Any], prefix: str, flavor: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if meta.get(f"{prefix}minimum") is not None:
        out["minimum"] = meta[f"{prefix}minimum"]
    if meta.get(f"{prefix}maximum") is not None:
        out["maximum"] = meta[f"{prefix}maximum"]
    if not prefix and meta.get("exclusive_minimum") is not None:
        if flavor == OPENAPI:  # OpenAPI 3.0 (and Kubernetes) use a boolean next to minimum
            out["minimum"] = meta["exclusive_minimum"]
            out["exclusiveMinimum"] = True
        else:
            out["exclusiveMinimum"] = meta["exclusive_minimum"]
    return out


def _field_schema(tp: Any, meta: dict[str, Any], default: Any, flavor: str) -> dict[str, Any]:
    inner, nullable = unwrap_optional(tp)
    description = meta.get("description", "")
    if meta.get("extension"):
        description += " [project extension]"
    if dataclasses.is_dataclass(inner):
        schema = _object_schema(inner, flavor)
        schema["description"] = description
        if nullable:
            if flavor == OPENAPI:
                schema["nullable"] = True
            else:
                schema["type"] = ["object", "null"]
        return schema
    item = list_item_type(inner)
    if inner is dict:
        # Keyword arguments for a library: any keys. A CRD must be told to keep what it cannot describe.
        schema = {"type": "object"}
        if flavor == OPENAPI:
            schema["x-kubernetes-preserve-unknown-fields"] = True
    elif item is not None and dataclasses.is_dataclass(item):
        schema = {"type": "array", "items": _object_schema(item, flavor)}
    elif item is not None:
        items: dict[str, Any] = {"type": _JSON_TYPE[item], **_bounds(meta, "item_", flavor)}
        if meta.get("item_choices"):
            items["enum"] = list(meta["item_choices"])
        schema = {"type": "array", "items": items}
        if meta.get("length"):
            schema["minItems"], schema["maxItems"] = meta["length"]
    else:
        schema = {"type": _JSON_TYPE[inner], **_bounds(meta, "", flavor)}
        if meta.get("choices"):
            schema["enum"] = _spellings(meta["choices"], meta.get("aliases", {}))
    if nullable:
        if flavor == OPENAPI:
            schema["nullable"] = True
        else:
            schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"].append(None)
    if default is not None:
        schema["default"] = default
    schema["description"] = description
    return schema


def _object_schema(cls: type, flavor: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        default = None if dataclasses.is_dataclass(hints[f.name]) else field_default(f)
        properties[f.name] = _field_schema(hints[f.name], dict(f.metadata), default, flavor)
    schema = {"type": "object", "description": (cls.__doc__ or "").strip(), "properties": properties}
    if flavor == DRAFT_07:
        # Kubernetes forbids additionalProperties next to properties: a CRD prunes unknown fields (or,
        # with kubectl's strict field validation, rejects them) instead, and the loader names them.
        schema["additionalProperties"] = False
    return schema


def json_schema(flavor: str = OPENAPI) -> dict[str, Any]:
    """The whole spec's schema.

    ``openapi`` (default) is what a Kubernetes CRD's openAPIV3Schema accepts: no $ref, `nullable`,
    boolean `exclusiveMinimum`, no `additionalProperties` beside `properties`. ``draft-07`` is plain
    JSON Schema for generic validators, closed objects (`additionalProperties: false`).
    Both accept `data` as an alias of `dataset` (the loader rejects a spec giving both).
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    schema = _object_schema(ExperimentConfig, flavor)
    for alias, canonical in SECTION_ALIASES.items():
        aliased = dict(schema["properties"][canonical])
        aliased["description"] = f"Alias of `{canonical}` (TAO specs use both)."
        schema["properties"][alias] = aliased
        schema.setdefault("allOf", []).append({"not": {"required": [alias, canonical]}})
    schema["description"] = "Mask2Former experiment spec (TAO-compatible)."
    if flavor == DRAFT_07:
        schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "ExperimentConfig", **schema}
    return schema
