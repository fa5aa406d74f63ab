"""The field reference of docs/spec.md, generated from the schema: `python -m m2f_spec.reference`."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from m2f_spec.fields import field_default
from m2f_spec.loader import allowed_text
from m2f_spec.schema import ExperimentConfig

EXTENSION_MARK = "**[ext]**"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _section_tables(cls: type, prefix: str, title: str, out: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    rows, children = [], []
    for f in dataclasses.fields(cls):
        path, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            children.append((tp, f"{path}.", path))
            continue
        allowed = allowed_text(tp, f.metadata)
        if f.metadata.get("aliases"):
            allowed += " (also " + ", ".join(f"{a} = {c}" for a, c in f.metadata["aliases"].items()) + ")"
        mark = f" {EXTENSION_MARK}" if f.metadata.get("extension") else ""
        meaning = f.metadata["description"].replace("Project extension: ", "")
        meaning = meaning[:1].upper() + meaning[1:]
        rows.append(f"| `{path}`{mark} | {_show(field_default(f))} | {allowed} | {meaning} |")
    if rows:
        out += [f"### `{title}`", "", (cls.__doc__ or "").strip(), "",
                "| field | default | allowed | meaning |", "|---|---|---|---|", *rows, ""]
    for child, child_prefix, child_title in children:
        _section_tables(child, child_prefix, child_title, out)


def fields_markdown() -> str:
    """One table per section: every field with its default, allowed values and meaning."""
    out: list[str] = []
    _section_tables(ExperimentConfig, "", "top level", out)
    return "\n".join(out)


if __name__ == "__main__":
    print(fields_markdown())
