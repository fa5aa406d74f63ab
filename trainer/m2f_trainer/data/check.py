"""`m2f data check`: load every configured split fully and report counts and every broken file or id."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from m2f_trainer.data.build import (
    SPLITS,
    build_dataset,
    build_label_map,
    is_configured,
    is_labelled,
    split_type,
)
from m2f_trainer.data.label_map import LabelMap
from m2f_trainer.errors import DataError


@dataclass
class SplitReport:
    split: str
    type: str
    images: int = 0
    segments: Counter = field(default_factory=Counter)  # class index -> segment count
    crowd: int = 0
    problems: list[str] = field(default_factory=list)

    def lines(self, label_map: LabelMap, top: int = 10) -> list[str]:
        total = sum(self.segments.values())
        lines = [f"{self.split} ({self.type}): {self.images} images, {total} segments ({self.crowd} crowd)"]
        if self.segments:
            common = ", ".join(f"{label_map.name(c)} {n}" for c, n in self.segments.most_common(top))
            lines.append(f"  segments per category (top {min(top, len(self.segments))}): {common}")
        lines.append(f"  problems: {len(self.problems)}")
        lines += [f"  problem: {p}" for p in self.problems]
        return lines


def check_split(cfg: Any, split: str, label_map: LabelMap) -> SplitReport:
    """Index the split leniently, then read every image and annotation, collecting problems."""
    report = SplitReport(split, split_type(cfg, split) if is_labelled(cfg, split) else "unlabelled images")
    try:
        dataset = build_dataset(cfg, split, label_map=label_map, train=False, strict=False)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.problems += dataset.problems
    for index in range(len(dataset)):
        try:
            sample = dataset.raw_sample(index)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        report.problems += dataset.audit(index)
        report.images += 1
        report.segments.update(sample["labels"].tolist())
        report.crowd += int(sample["is_crowd"].sum())
    return report


def check(cfg: Any) -> tuple[list[SplitReport], LabelMap]:
    label_map = build_label_map(cfg)
    reports = [check_split(cfg, split, label_map) for split in SPLITS if is_configured(cfg, split)]
    return reports, label_map
