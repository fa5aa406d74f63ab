"""PATCH bodies: JSON merge patch (RFC 7386), strategic merge (merge with keyed lists), JSON patch (RFC 6902)."""

from __future__ import annotations

import copy

import jsonpatch

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)

# Keys by which Kubernetes merges lists of objects in strategic merge patches, in order of preference
# (containers/volumes/env by name, container ports by containerPort, volumeMounts by mountPath, ...).
_LIST_MERGE_KEYS = ("name", "containerPort", "mountPath", "port", "devicePath", "ip", "topologyKey")


class PatchError(ValueError):
    """A patch that cannot be applied (bad JSON patch path, wrong body type)."""


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386: dicts merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(old: list, new: list) -> str | None:
    items = [item for item in [*old, *new] if isinstance(item, dict)]
    if not items or len(items) != len(old) + len(new):
        return None
    for key in _LIST_MERGE_KEYS:
        if all(key in item for item in items):
            return key
    return None


def strategic_merge_patch(target: object, patch: object) -> object:
    """Merge patch where lists of keyed objects merge element-wise, `$patch: delete` removes one
    element, and `$setElementOrder/<field>` orders the result; other `$` directives are dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    if patch.get("$patch") == "replace":
        result = {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_lists(result[key], value, patch.get(f"$setElementOrder/{key}"))
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_lists(old: list, new: list, order: list | None) -> list:
    merge_key = _merge_key(old, new)
    if merge_key is None:
        return [strategic_merge_patch(None, item) for item in new]
    merged = {item[merge_key]: item for item in copy.deepcopy(old)}
    sequence = [item[merge_key] for item in old]
    for item in new:
        key = item[merge_key]
        if item.get("$patch") == "delete":
            merged.pop(key, None)
            continue
        merged[key] = strategic_merge_patch(merged.get(key), item)
        if key not in sequence:
            sequence.append(key)
    if order:
        wanted = [entry.get(merge_key) for entry in order if isinstance(entry, dict)]
        sequence = [key for key in wanted if key in merged] + [key for key in sequence if key not in wanted]
    return [merged[key] for key in sequence if key in merged]


def apply_patch(target: dict, patch: object, content_type: str) -> dict:
    """Apply a PATCH body of the given content type to a copy of `target`."""
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise PatchError("a JSON patch must be a list of operations")
        try:
            return jsonpatch.apply_patch(target, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, TypeError) as exc:
            raise PatchError(f"the JSON patch cannot be applied: {exc}") from exc
    if not isinstance(patch, dict):
        raise PatchError(f"a {content_type} body must be a JSON object")
    if content_type == STRATEGIC_MERGE_PATCH:
        result = strategic_merge_patch(target, patch)
    else:  # merge patch; server-side apply is approximated as a merge of the applied configuration
        result = merge_patch(target, patch)
    assert isinstance(result, dict)
    return result
