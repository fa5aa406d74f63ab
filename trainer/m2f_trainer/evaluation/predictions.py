"""Score a predictions directory (the layout in formats.py / docs/evaluation.md) against ground truth, no model."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from m2f_trainer.errors import DataError, UserError
from m2f_trainer.evaluation import formats, report
from m2f_trainer.evaluation.instance import evaluate_instances, instances_from_panoptic
from m2f_trainer.evaluation.panoptic import pq_compute
from m2f_trainer.evaluation.semantic import SemanticConfusion

MODES = ("panoptic", "instance", "semantic")
# As m2f_trainer.data.semantic (not imported: it needs torch): the JSONL key pairs it accepts, and
# ground-truth value 0 counts as unlabelled (ignored) unless 0 is a category id (ADE20k's "other").
JSONL_KEYS = (("img_path", "mask_path"), ("img", "segm"))
UNLABELLED_ID = 0


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} not found in the predictions directory")
    return path


def _is_panoptic(dataset: Mapping) -> bool:
    annotations = dataset.get("annotations") or []
    return bool(annotations) and "segments_info" in annotations[0]


def _category_ids(categories) -> list[int]:
    if categories is None:
        return []
    if isinstance(categories, Mapping):
        categories = list(categories.values())
    return [int(c["id"]) if isinstance(c, Mapping) else int(c) for c in categories]


def evaluate_prediction_dir(mode: str, pred_dir, *, gt_json=None, gt_folder=None, gt_root=None, categories=None,
                            ignore_label: int = 255, num_workers: int | None = None) -> dict:
    """Flat metrics (see report.py) of the predictions in `pred_dir` for `mode`.

    Ground truth:
    - panoptic: `gt_json` COCO panoptic JSON, `gt_folder` its PNGs (default: the JSON path without .json);
    - instance: `gt_json` COCO instances JSON, or a COCO panoptic JSON (+ `gt_folder`) whose thing
      segments become the instances;
    - semantic: `gt_folder` of label PNGs with raw ids matched to predictions by file stem, or
      `gt_json` a JSONL of {"img_path", "mask_path"} lines (relative paths resolve against `gt_root`, the
      split's root_dir, else the JSONL's folder, as the semantic loader resolves them), or a COCO
      panoptic JSON (+ `gt_folder`) whose category per pixel is the label (VOID ignored). Ground
      truth `ignore_label` pixels, and 0 unless it is a category id, are ignored.
      `categories` (list of raw ids or {id, name} dicts, in class-index order) is required.
    """
    if mode not in MODES:
        raise UserError(f"evaluate mode {mode!r} is not one of {', '.join(MODES)}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: predictions directory does not exist")
    if mode == "panoptic":
        return _panoptic(pred_dir, gt_json, gt_folder, categories, num_workers)
    if mode == "instance":
        return _instance(pred_dir, gt_json, gt_folder, categories)
    return _semantic(pred_dir, gt_json, gt_folder, gt_root, categories, ignore_label)


def _panoptic(pred_dir: Path, gt_json, gt_folder, categories, num_workers) -> dict:
    if gt_json is None:
        raise UserError("panoptic evaluation of prediction files needs the ground-truth panoptic JSON")
    pred_json = _require(pred_dir / formats.PANOPTIC_DIR / formats.PANOPTIC_JSON, "panoptic predictions JSON")
    results = pq_compute(gt_json, pred_json, gt_folder, pred_json.parent, num_workers=num_workers)
    gt = formats.read_json(gt_json)
    return report.panoptic_metrics(results, categories or gt["categories"], num_images=len(gt["annotations"]))


def _instance(pred_dir: Path, gt_json, gt_folder, categories) -> dict:
    if gt_json is None:
        raise UserError("instance evaluation of prediction files needs the ground-truth COCO JSON")
    results_file = _require(pred_dir / formats.INSTANCE_DIR / formats.INSTANCE_JSON, "instance results JSON")
    dataset = formats.read_json(gt_json)
    if _is_panoptic(dataset):
        dataset = instances_from_panoptic(dataset, gt_folder if gt_folder is not None else
                                          _default_folder(gt_json))
    results = evaluate_instances(dataset, results_file)
    return report.instance_metrics(results, categories or dataset["categories"],
                                   num_images=len(dataset["images"]))


def _default_folder(json_file) -> Path:
    text = str(json_file)
    return Path(text[: -len(".json")] if text.endswith(".json") else text)


def _semantic_pairs(gt_json, gt_folder, gt_root=None) -> Iterator[tuple[str, Path | None, dict | None]]:
    """(stem, label PNG, panoptic annotation) per ground-truth image."""
    if gt_json is not None and str(gt_json).endswith(".jsonl"):
        base = Path(gt_root) if gt_root else Path(gt_json).parent
        try:
            lines = Path(gt_json).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"{gt_json}: file not found") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            keys = next((k for k in JSONL_KEYS if isinstance(entry, dict) and all(x in entry for x in k)), None)
            if keys is None:
                raise DataError(f"{gt_json}:{number}: expected a JSON object with 'img_path' and 'mask_path'")
            yield Path(entry[keys[0]]).stem, base / entry[keys[1]], None
    elif gt_json is not None:
        dataset = formats.read_json(gt_json)
        if not _is_panoptic(dataset):
            raise DataError(f"{gt_json}: semantic ground truth must be label PNGs, a JSONL or a COCO panoptic JSON")
        folder = Path(gt_folder) if gt_folder is not None else _default_folder(gt_json)
        for ann in dataset["annotations"]:
            yield Path(ann["file_name"]).stem, folder / ann["file_name"], ann
    elif gt_folder is not None:
        files = sorted(Path(gt_folder).glob("*.png"))
        if not files:
            raise DataError(f"{gt_folder}: no ground-truth label PNGs")
        for path in files:
            yield path.stem, path, None
    else:
        raise UserError("semantic evaluation of prediction files needs ground-truth label PNGs or a JSONL/JSON")


def _semantic(pred_dir: Path, gt_json, gt_folder, gt_root, categories, ignore_label: int) -> dict:
    class_ids = _category_ids(categories)
    if not class_ids:
        raise UserError("semantic evaluation needs the categories (dataset.label_map) to map raw ids to classes")
    if ignore_label in class_ids:
        raise UserError(f"ignore label {ignore_label} is also a category id")
    # raw id -> class index; -1 = unknown, -2 = ignore.
    lut = np.full(max(max(class_ids), ignore_label, 255) + 1, -1, dtype=np.int64)
    lut[class_ids] = np.arange(len(class_ids))
    lut[ignore_label] = -2
    if UNLABELLED_ID not in class_ids:
        lut[UNLABELLED_ID] = -2
    confusion = SemanticConfusion(len(class_ids), ignore_label=len(class_ids))
    pred_folder = _require(pred_dir / formats.SEMANTIC_DIR, "semantic/ folder")
    count = 0
    for stem, gt_path, panoptic_ann in _semantic_pairs(gt_json, gt_folder, gt_root):
        pred_path = _require(pred_folder / f"{stem}.png", f"semantic prediction for {stem}")
        raw_pred = formats.read_semantic_png(pred_path)
        if panoptic_ann is not None:
            raw_gt = _panoptic_to_labels(formats.read_panoptic_png(gt_path), panoptic_ann, ignore_label)
        else:
            raw_gt = formats.read_semantic_png(gt_path)
        gt = _to_classes(lut, raw_gt, gt_path, "ground-truth", allow_ignore=True)
        pred = _to_classes(lut, raw_pred, pred_path, "predicted", allow_ignore=False)
        gt[gt == -2] = len(class_ids)
        confusion.update(pred, gt, where=str(pred_path))
        count += 1
    results = confusion.compute(class_ids)
    return report.semantic_metrics(results, categories, num_images=count)


def _panoptic_to_labels(ids: np.ndarray, annotation: Mapping, ignore_label: int) -> np.ndarray:
    labels = np.full(ids.shape, ignore_label, dtype=np.int64)
    for segment in annotation["segments_info"]:
        labels[ids == segment["id"]] = segment["category_id"]
    return labels


def _to_classes(lut: np.ndarray, raw: np.ndarray, path: Path, side: str, allow_ignore: bool) -> np.ndarray:
    outside = (raw < 0) | (raw >= len(lut))
    if outside.any():
        raise DataError(f"{path}: {side} label id {int(raw[outside][0])} is not a category id")
    classes = lut[raw]
    bad = (classes == -1) | ((classes == -2) & (not allow_ignore))
    if bad.any():
        raise DataError(f"{path}: {side} label id {int(raw[bad][0])} is not a category id")
    return classes


__all__: Sequence[str] = ("evaluate_prediction_dir", "MODES")
