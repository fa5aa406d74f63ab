"""Label selectors (=, ==, !=, in, notin, exists, !exists) and field selectors (=, ==, !=) as the API server parses them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Predicate = Callable[[dict], bool]

_SET_REQUIREMENT = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQUALITY_REQUIREMENT = re.compile(r"^\s*([\w./-]+)\s*(==|!=|=)\s*([\w.-]*)\s*$")
_EXISTS_REQUIREMENT = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")


class SelectorError(ValueError):
    """A selector string that does not parse; the message quotes the offending requirement."""


@dataclass(frozen=True)
class _Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "=":
            return present and value in self.values
        if self.operator == "!=":
            return not present or value not in self.values
        if self.operator == "in":
            return present and value in self.values
        if self.operator == "notin":
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        return not present  # "!exists"


def _split_top_level(selector: str) -> list[str]:
    """Split on commas that are not inside the parentheses of a set requirement."""
    parts, depth, current = [], 0, []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def parse_label_selector(selector: str | None) -> Predicate:
    """Compile `labelSelector` into a predicate over an object; empty selects everything."""
    requirements: list[_Requirement] = []
    for part in _split_top_level(selector or ""):
        if match := _SET_REQUIREMENT.match(part):
            values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
            requirements.append(_Requirement(match.group(1), match.group(2), values))
        elif match := _EQUALITY_REQUIREMENT.match(part):
            operator = "!=" if match.group(2) == "!=" else "="
            requirements.append(_Requirement(match.group(1), operator, frozenset([match.group(3)])))
        elif match := _EXISTS_REQUIREMENT.match(part):
            operator = "!exists" if match.group(1) else "exists"
            requirements.append(_Requirement(match.group(2), operator))
        else:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")

    def predicate(obj: dict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement.matches(labels) for requirement in requirements)

    return predicate


def field_value(obj: dict, path: str) -> str:
    """The string value of a dotted field path; missing fields read as "" like in the API server."""
    node: object = obj
    for key in path.split("."):
        if not isinstance(node, dict):
            return ""
        node = node.get(key)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def parse_field_selector(selector: str | None) -> Predicate:
    """Compile `fieldSelector` (metadata.name, metadata.namespace, status.phase, spec.nodeName, ...)."""
    requirements: list[tuple[str, bool, str]] = []
    for part in _split_top_level(selector or ""):
        match = re.match(r"^\s*([\w.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not match:
            raise SelectorError(f"invalid field selector: {part.strip()!r}")
        requirements.append((match.group(1), match.group(2) != "!=", match.group(3)))

    def predicate(obj: dict) -> bool:
        return all((field_value(obj, path) == value) == equal for path, equal, value in requirements)

    return predicate


def selects(obj: dict, label_selector: Predicate, field_selector: Predicate) -> bool:
    return label_selector(obj) and field_selector(obj)
