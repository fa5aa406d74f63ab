"""Flat metrics dicts (the stable keys of results_dir/evaluate/metrics.json) and their printed tables.

Every value is a fraction in 0..1 (PQ 0.5 means 50 %); tables print percentages. Top-level keys
per mode — the operator copies PQ / AP / mIoU into the custom resource's status:

- panoptic: PQ SQ RQ N, PQ_th SQ_th RQ_th N_th, PQ_st SQ_st RQ_st N_st, per_class {id: {name, PQ, SQ, RQ}}
- instance: AP AP50 AP75 APs APm APl, per_class {id: {name, AP}}
- semantic: mIoU fwIoU mACC pACC, per_class {id: {name, IoU, ACC}}

plus "mode" and, when known, "num_images". NaN (nothing to average) is written as null.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from m2f_trainer.evaluation.formats import write_json_atomic

METRICS_FILE = Path("evaluate") / "metrics.json"
HEADLINE = {"panoptic": "PQ", "instance": "AP", "semantic": "mIoU"}


def _names(categories) -> dict[int, str]:
    if not categories:
        return {}
    if isinstance(categories, Mapping):
        categories = categories.values()
    names = {}
    for category in categories:  # {id, name} dicts or bare ids
        if isinstance(category, Mapping):
            names[int(category["id"])] = str(category.get("name", category["id"]))
        else:
            names[int(category)] = str(category)
    return names


INSTANCE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SEMANTIC_KEYS = ("mIoU", "fwIoU", "mACC", "pACC")


def _flat(mode: str, top: dict, per_class: Mapping, categories, num_images: int | None) -> dict:
    """The shared layout: mode, the top-level numbers, per_class {id: {name, ...}}, num_images."""
    names = _names(categories)
    metrics: dict = {"mode": mode, **top}
    metrics["per_class"] = {str(cid): {"name": names.get(int(cid), str(cid)), **values}
                            for cid, values in per_class.items()}
    if num_images is not None:
        metrics["num_images"] = int(num_images)
    return metrics


def panoptic_metrics(results: Mapping, categories=None, num_images: int | None = None) -> dict:
    """pq_compute's result -> flat metrics."""
    top: dict = {}
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            top[key.upper() + suffix] = float(results[group][key])
        top["N" + suffix] = int(results[group]["n"])
    per_class = {cid: {"PQ": float(v["pq"]), "SQ": float(v["sq"]), "RQ": float(v["rq"])}
                 for cid, v in results["per_class"].items()}
    return _flat("panoptic", top, per_class, categories, num_images)


def instance_metrics(results: Mapping, categories=None, num_images: int | None = None) -> dict:
    """evaluate_instances' result -> flat metrics."""
    top = {key: float(results[key]) for key in INSTANCE_KEYS}
    per_class = {cid: {"AP": float(ap)} for cid, ap in results["per_class"].items()}
    return _flat("instance", top, per_class, categories, num_images)


def semantic_metrics(results: Mapping, categories=None, num_images: int | None = None) -> dict:
    """SemanticConfusion.compute()'s result -> flat metrics."""
    top = {key: float(results[key]) for key in SEMANTIC_KEYS}
    per_class = {cid: {"IoU": float(v["IoU"]), "ACC": float(v["ACC"])} for cid, v in results["per_class"].items()}
    return _flat("semantic", top, per_class, categories, num_images)


def _pct(value) -> str:
    return "  nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:5.1f}"


def format_table(metrics: Mapping) -> str:
    """panopticapi-style PQ table, COCO AP table or mIoU table, with per-class rows."""
    mode = metrics["mode"]
    lines = []
    if mode == "panoptic":
        lines.append(f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}")
        lines.append("-" * 38)
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            lines.append(f"{name:10s}| {_pct(metrics['PQ' + suffix])}  {_pct(metrics['SQ' + suffix])}  "
                         f"{_pct(metrics['RQ' + suffix])} {metrics['N' + suffix]:5d}")
        columns = ("PQ", "SQ", "RQ")
    elif mode == "instance":
        keys = INSTANCE_KEYS
        lines.append(" | ".join(f"{k:>5s}" for k in keys))
        lines.append(" | ".join(_pct(metrics[k]) for k in keys))
        columns = ("AP",)
    elif mode == "semantic":
        keys = SEMANTIC_KEYS
        lines.append(" | ".join(f"{k:>5s}" for k in keys))
        lines.append(" | ".join(_pct(metrics[k]) for k in keys))
        columns = ("IoU", "ACC")
    else:
        raise ValueError(f"unknown evaluation mode {mode!r}")
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(len(v["name"]) for v in per_class.values())
        lines.append("")
        lines.append(f"{'category':{width}s} | " + "  ".join(f"{c:>5s}" for c in columns))
        for value in per_class.values():
            lines.append(f"{value['name']:{width}s} | " + "  ".join(_pct(value[c]) for c in columns))
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_metrics(results_dir, metrics: Mapping) -> Path:
    """Write results_dir/evaluate/metrics.json (atomically; NaN as null) and return its path."""
    path = Path(results_dir) / METRICS_FILE
    write_json_atomic(path, _json_safe(dict(metrics)))
    return path


def report(results_dir, metrics: Mapping, stream=None) -> Path:
    """Print the table and write metrics.json."""
    print(format_table(metrics), file=stream or sys.stdout)
    return write_metrics(results_dir, metrics)


def headline(metrics: Mapping) -> tuple[str, float | None]:
    """("PQ"|"AP"|"mIoU", value) — the single number a status line or progress report shows."""
    key = HEADLINE[metrics["mode"]]
    return key, _json_safe(metrics.get(key))


__all__: Sequence[str] = ("panoptic_metrics", "instance_metrics", "semantic_metrics", "format_table",
                          "write_metrics", "report", "headline", "METRICS_FILE")
