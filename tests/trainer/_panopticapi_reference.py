"""Test oracle and benchmark peer: panopticapi's pq_compute algorithm, restated plainly, single process.

panopticapi is not on PyPI, so this module restates cocodataset/panopticapi `evaluation.py`
(`pq_compute_single_core` + `PQStat.pq_average`) step by step: per image a uint32 decode, rgb2id,
`np.unique` over the prediction and over gt * 256^3 + pred, and a Python loop over the pairs.
It deliberately shares no code with m2f_trainer.evaluation.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
from PIL import Image

OFFSET = 256 * 256 * 256
VOID = 0


def reference_rgb2id(color):
    color = color.astype(np.int32) if color.dtype == np.uint8 else color
    return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]


class _CategoryStat:
    def __init__(self):
        self.iou, self.tp, self.fp, self.fn = 0.0, 0, 0, 0


def reference_image_stats(stats, pan_gt, gt_segments_info, pan_pred, pred_segments_info, categories, image_id):
    """Adds one image into `stats` (defaultdict of _CategoryStat) exactly like panopticapi."""
    gt_segms = {el["id"]: dict(el) for el in gt_segments_info}
    pred_segms = {el["id"]: dict(el) for el in pred_segments_info}

    remaining = set(pred_segms)
    labels, counts = np.unique(pan_pred, return_counts=True)
    for label, count in zip(labels, counts, strict=True):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} is presented in PNG and "
                           "not presented in JSON.")
        pred_segms[label]["area"] = count
        remaining.remove(label)
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} has unknown category_id")
    if remaining:
        raise KeyError(f"In the image with ID {image_id} the following segment IDs {list(remaining)} are "
                       "presented in JSON and not presented in PNG.")

    combined = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    pair_area = {}
    labels, counts = np.unique(combined, return_counts=True)
    for label, intersection in zip(labels, counts, strict=True):
        pair_area[(label // OFFSET, label % OFFSET)] = intersection

    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in pair_area.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = (pred_segms[pred_label]["area"] + gt_segms[gt_label]["area"] - intersection
                 - pair_area.get((VOID, pred_label), 0))
        iou = intersection / union
        if iou > 0.5:
            stats[gt_segms[gt_label]["category_id"]].tp += 1
            stats[gt_segms[gt_label]["category_id"]].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_by_category = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info["iscrowd"] == 1:
            crowd_by_category[gt_info["category_id"]] = gt_label
            continue
        stats[gt_info["category_id"]].fn += 1

    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        ignored_area = pair_area.get((VOID, pred_label), 0)
        if pred_info["category_id"] in crowd_by_category:
            ignored_area += pair_area.get((crowd_by_category[pred_info["category_id"]], pred_label), 0)
        if ignored_area / pred_info["area"] > 0.5:
            continue
        stats[pred_info["category_id"]].fp += 1


def reference_average(stats, categories, isthing):
    pq, sq, rq, n = 0, 0, 0, 0
    per_class = {}
    for label, info in categories.items():
        if isthing is not None and (info["isthing"] == 1) != isthing:
            continue
        s = stats[label]
        if s.tp + s.fp + s.fn == 0:
            per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        pq_class = s.iou / (s.tp + 0.5 * s.fp + 0.5 * s.fn)
        sq_class = s.iou / s.tp if s.tp != 0 else 0
        rq_class = s.tp / (s.tp + 0.5 * s.fp + 0.5 * s.fn)
        per_class[label] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
        pq, sq, rq = pq + pq_class, sq + sq_class, rq + rq_class
    if n == 0:
        # panopticapi raises ZeroDivisionError here (e.g. no stuff category counted); m2f reports
        # zeros with n = 0 instead — the one documented deviation, mirrored so the oracle can compare.
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def reference_results(stats, categories):
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = reference_average(stats, categories, isthing)
        if name == "All":
            results["per_class"] = per_class
    return results


def reference_pq_compute(gt_json_file, pred_json_file, gt_folder, pred_folder):
    """Single-process panopticapi pq_compute (without its prints and worker pool)."""
    with open(gt_json_file) as f:
        gt_data = json.load(f)
    with open(pred_json_file) as f:
        pred_data = json.load(f)
    categories = {el["id"]: el for el in gt_data["categories"]}
    pred_annotations = {el["image_id"]: el for el in pred_data["annotations"]}
    stats = defaultdict(_CategoryStat)
    for gt_ann in gt_data["annotations"]:
        pred_ann = pred_annotations[gt_ann["image_id"]]
        pan_gt = reference_rgb2id(np.array(Image.open(os.path.join(gt_folder, gt_ann["file_name"])), dtype=np.uint32))
        pan_pred = reference_rgb2id(np.array(Image.open(os.path.join(pred_folder, pred_ann["file_name"])),
                                             dtype=np.uint32))
        reference_image_stats(stats, pan_gt, gt_ann["segments_info"], pan_pred, pred_ann["segments_info"],
                              categories, gt_ann["image_id"])
    return reference_results(stats, categories)
