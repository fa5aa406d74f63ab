"""Field helpers of the experiment-spec schema: defaults plus the constraints the loader and JSON Schema share."""

from dataclasses import MISSING, field
from typing import Any


def spec_field(
    default: Any,
    description: str,
    *,
    choices: tuple[str, ...] | None = None,
    aliases: dict[str, str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    item_minimum: float | None = None,
    item_maximum: float | None = None,
    item_choices: tuple[str, ...] | None = None,
    length: tuple[int, int] | None = None,
    extension: bool = False,
) -> Any:
    """A scalar or list field with the constraints the loader enforces and the JSON Schema publishes.

    ``choices`` are canonical spellings; matching is case-insensitive and ``aliases`` map other accepted
    spellings onto a canonical one. ``length`` bounds list lengths (inclusive). ``extension`` marks
    fields this project adds on top of TAO's schema.
    """
    metadata = {
        "description": description,
        "choices": choices,
        "aliases": aliases or {},
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "item_minimum": item_minimum,
        "item_maximum": item_maximum,
        "item_choices": item_choices,
        "length": length,
        "extension": extension,
    }
    if isinstance(default, list):
        frozen = list(default)
        return field(default_factory=lambda: list(frozen), metadata=metadata)
    if isinstance(default, dict):
        frozen_map = dict(default)
        return field(default_factory=lambda: dict(frozen_map), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, description: str, *, extension: bool = False) -> Any:
    """A nested section (a dataclass) defaulting to its own defaults."""
    return field(default_factory=cls, metadata={"description": description, "extension": extension})


def field_default(f: Any) -> Any:
    """The default value of a dataclass field, whether given directly or by factory."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory()
