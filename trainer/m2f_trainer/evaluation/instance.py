"""Instance mask AP with pycocotools COCOeval (iouType "segm"), plus COCO instance GT derived from panoptic GT."""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from m2f_trainer.errors import DataError
from m2f_trainer.evaluation.distributed import merged_across_ranks
from m2f_trainer.evaluation.formats import (
    check_instance_results,
    encode_instances,
    read_instance_results,
    read_json,
    read_panoptic_png,
)

# The first six COCOeval.stats, in order.
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _load_dataset(gt_json) -> dict:
    dataset = read_json(gt_json) if isinstance(gt_json, (str, os.PathLike)) else copy.deepcopy(dict(gt_json))
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise DataError(f"{gt_json if isinstance(gt_json, (str, os.PathLike)) else 'ground truth'}: "
                            f"a COCO instances JSON needs the key {key!r}")
    return dataset


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _check_results(results: Sequence[Mapping], gt_coco) -> None:
    image_ids = set(gt_coco.getImgIds())
    category_ids = set(gt_coco.getCatIds())
    for index, entry in enumerate(results):
        if entry["image_id"] not in image_ids:
            raise DataError(f"instance result #{index}: image_id {entry['image_id']} is not in the ground truth")
        if entry["category_id"] not in category_ids:
            raise DataError(f"instance result #{index} (image_id {entry['image_id']}): unknown category_id "
                            f"{entry['category_id']}")
        image = gt_coco.imgs[entry["image_id"]]
        size = list(entry["segmentation"]["size"])
        if size != [image["height"], image["width"]]:
            raise DataError(f"instance result #{index}: mask size {size} differs from image_id "
                            f"{entry['image_id']}'s size {[image['height'], image['width']]}")


def evaluate_instances(gt_json, results) -> dict:
    """COCOeval segm on a COCO instances ground truth (path or dict) and results (path or list).

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} equal to COCOeval.stats[:6] (fractions;
    -1 where COCOeval has nothing to average) and "per_class": {category_id: AP} computed as
    detectron2 does (mean precision over IoUs, recalls; area all; maxDets 100; NaN if no GT).
    """
    from pycocotools.cocoeval import COCOeval

    gt_coco = _coco(_load_dataset(gt_json))
    if isinstance(results, (str, os.PathLike)):
        results = read_instance_results(results)
    results = [dict(r) for r in check_instance_results(list(results))]
    _check_results(results, gt_coco)
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            dt_coco = gt_coco.loadRes(results)
    else:
        # loadRes cannot take an empty list; an empty result set still has a well-defined AP of 0.
        dt_coco = _coco({"images": gt_coco.dataset["images"], "categories": gt_coco.dataset["categories"],
                         "annotations": []})
    evaluator = COCOeval(gt_coco, dt_coco, iouType="segm")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {key: float(value) for key, value in zip(AP_KEYS, evaluator.stats[:6], strict=True)}
    # precision: [iou thresholds, recall thresholds, categories, area ranges, max dets]
    precision = evaluator.eval["precision"]
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(category_id)] = float(np.mean(values)) if values.size else float("nan")
    metrics["per_class"] = per_class
    return metrics


class InstanceResults:
    """Collects COCO results (RLE) image by image, gathers them across ranks, scores with COCOeval."""

    def __init__(self):
        self.results: list[dict] = []

    def update(self, image_id, masks, scores, category_ids) -> None:
        """masks bool [N,H,W] at the image's original size; raw category ids."""
        as_numpy = [x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
                    for x in (masks, scores, category_ids)]
        self.results += encode_instances(image_id, *as_numpy)

    def state_dict(self) -> dict:
        return {"results": list(self.results)}

    def merge(self, state: Mapping) -> None:
        self.results += list(state["results"])

    def all_gather(self) -> InstanceResults:
        return merged_across_ranks(self, InstanceResults())

    def compute(self, gt_json) -> dict:
        return evaluate_instances(gt_json, self.results)


def instances_from_panoptic(panoptic_json, panoptic_folder=None) -> dict:
    """COCO instances ground truth (thing segments as RLE, crowd kept as iscrowd) from COCO panoptic GT.

    Lets a panoptic dataset be scored for instance AP, as detectron2 does with its converted JSON.
    """
    from pycocotools import mask as mask_utils

    source = panoptic_json
    panoptic = read_json(panoptic_json) if isinstance(panoptic_json, (str, os.PathLike)) else panoptic_json
    if panoptic_folder is None:
        text = str(source)
        panoptic_folder = text[: -len(".json")] if text.endswith(".json") else text
    panoptic_folder = Path(panoptic_folder)
    things = {c["id"] for c in panoptic["categories"] if int(c.get("isthing", 0)) == 1}
    annotations = []
    for ann in panoptic["annotations"]:
        ids = read_panoptic_png(panoptic_folder / ann["file_name"])
        for segment in ann["segments_info"]:
            if segment["category_id"] not in things:
                continue
            mask = np.asfortranarray((ids == segment["id"]).astype(np.uint8))
            if not mask.any():
                continue
            rle = mask_utils.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": ann["image_id"], "category_id": segment["category_id"],
                "segmentation": rle, "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(segment.get("iscrowd", 0)),
            })
    categories = [c for c in panoptic["categories"] if c["id"] in things]
    return {"images": panoptic["images"], "annotations": annotations, "categories": categories}
