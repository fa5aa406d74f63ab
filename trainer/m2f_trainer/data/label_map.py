"""LabelMap: raw COCO category ids <-> training class indices, names, colours and thing/stuff flags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from m2f_trainer.data.io import read_json
from m2f_trainer.errors import DataError

# Class index written into semantic maps for pixels that carry no label (void, crowd-free borders,
# padding). Training losses and the semantic evaluator skip it.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    color: tuple[int, int, int]
    isthing: bool


def _fallback_color(category_id: int) -> tuple[int, int, int]:
    # Deterministic, well-spread colours for label maps that carry none (golden-ratio hue walk).
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((category_id * 0.618033988749895) % 1.0, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def parse_categories(entries: object, source: str) -> list[Category]:
    """Validate a COCO ``categories`` list (id/name/color/isthing); ids must be unique integers > 0."""
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{source}: expected a non-empty list of categories with id/name/color/isthing")
    categories: dict[int, Category] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "id" not in entry:
            raise DataError(f"{source}: category #{position} has no 'id'")
        category_id = entry["id"]
        if isinstance(category_id, bool) or not isinstance(category_id, int):
            raise DataError(f"{source}: category #{position} has a non-integer id {category_id!r}")
        if category_id <= 0:
            raise DataError(f"{source}: category id {category_id} must be > 0 (category #{position})")
        if category_id in categories:
            raise DataError(f"{source}: category id {category_id} appears twice")
        color = entry.get("color")
        if color is None:
            color = _fallback_color(category_id)
        elif not (isinstance(color, list | tuple) and len(color) == 3):
            raise DataError(f"{source}: category id {category_id} has colour {color!r}; expected [r, g, b]")
        categories[category_id] = Category(
            id=category_id,
            name=str(entry.get("name", f"class_{category_id}")),
            color=(int(color[0]), int(color[1]), int(color[2])),
            isthing=bool(entry.get("isthing", 1)),
        )
    return [categories[key] for key in sorted(categories)]


class LabelMap:
    """The category list of a dataset and how its raw ids become training classes.

    ``contiguous_id`` true: class = index of the category in the id-sorted list (0..K-1).
    ``contiguous_id`` false: class = the raw category id, so the model needs ``max id + 1`` classes.
    """

    def __init__(self, categories: Iterable[Category], contiguous_id: bool, source: str = "<categories>"):
        self.categories: list[Category] = sorted(categories, key=lambda c: c.id)
        if not self.categories:
            raise DataError(f"{source}: no categories")
        self.contiguous_id = bool(contiguous_id)
        self.source = source
        self._by_id = {c.id: c for c in self.categories}
        if self.contiguous_id:
            self._class_of = {c.id: index for index, c in enumerate(self.categories)}
        else:
            self._class_of = {c.id: c.id for c in self.categories}
        self._by_class = {klass: self._by_id[raw] for raw, klass in self._class_of.items()}

    @classmethod
    def from_file(cls, path: str | Path, contiguous_id: bool) -> LabelMap:
        """Read a label-map file: a COCO categories list, or a COCO json with a ``categories`` key."""
        path = Path(path)
        content = read_json(path, "label map")
        if isinstance(content, Mapping):
            content = content.get("categories")
        return cls(parse_categories(content, str(path)), contiguous_id, source=str(path))

    @classmethod
    def from_categories(cls, entries: object, contiguous_id: bool, source: str) -> LabelMap:
        return cls(parse_categories(entries, source), contiguous_id, source=source)

    @classmethod
    def from_class_count(cls, num_classes: int, contiguous_id: bool, source: str = "<num_classes>") -> LabelMap:
        """Categories for semantic masks without a label map: raw ids are the mask values.

        contiguous_id true: values 1..num_classes become classes 0..num_classes-1 (ADE20k's 150
        classes in values 1..150); false: values 1..num_classes-1 are the classes themselves.
        """
        last = num_classes if contiguous_id else num_classes - 1
        if last < 1:
            raise DataError(f"{source}: {num_classes} classes leave no mask value to use as a category")
        categories = [Category(i, f"class_{i}", _fallback_color(i), False) for i in range(1, last + 1)]
        return cls(categories, contiguous_id=contiguous_id, source=source)

    # ----------------------------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.categories)

    def __contains__(self, raw_id: object) -> bool:
        return raw_id in self._by_id

    @property
    def num_classes(self) -> int:
        """Classes the model must predict to cover every category (without the no-object class)."""
        return len(self.categories) if self.contiguous_id else self.categories[-1].id + 1

    @property
    def raw_ids(self) -> list[int]:
        return [c.id for c in self.categories]

    def class_of(self, raw_id: int) -> int:
        """Training class of a raw category id; KeyError if the id is not in the map."""
        return self._class_of[raw_id]

    def raw_id(self, class_index: int) -> int:
        """Raw category id of a training class; KeyError if no category has that class."""
        return self._by_class[class_index].id

    def name(self, class_index: int) -> str:
        category = self._by_class.get(class_index)
        return category.name if category else f"class_{class_index}"

    def color(self, class_index: int) -> tuple[int, int, int]:
        category = self._by_class.get(class_index)
        return category.color if category else _fallback_color(class_index)

    def is_thing(self, class_index: int) -> bool:
        return self._by_class[class_index].isthing

    @property
    def thing_classes(self) -> list[int]:
        return [self._class_of[c.id] for c in self.categories if c.isthing]

    @property
    def stuff_classes(self) -> list[int]:
        return [self._class_of[c.id] for c in self.categories if not c.isthing]

    def to_coco_categories(self) -> list[dict]:
        """The categories as a COCO list (raw ids), e.g. for writing prediction json files."""
        return [
            {"id": c.id, "name": c.name, "color": list(c.color), "isthing": int(c.isthing)}
            for c in self.categories
        ]

    def __repr__(self) -> str:
        return (
            f"LabelMap({len(self)} categories from {self.source}, contiguous_id={self.contiguous_id}, "
            f"num_classes={self.num_classes})"
        )
