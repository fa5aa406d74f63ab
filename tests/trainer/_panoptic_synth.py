"""Synthetic COCO panoptic ground truth + perturbed predictions (PNG folders + JSON), for PQ tests and the bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

THING_IDS = [1, 2, 3, 5, 8, 13, 21, 34, 40, 44, 50, 52, 60, 64, 70, 72, 80, 85, 88, 90]
STUFF_IDS = [92, 95, 100, 118, 119, 122, 125, 128, 130, 200]


def synthetic_categories() -> list[dict]:
    return ([{"id": c, "name": f"thing{c}", "isthing": 1} for c in THING_IDS]
            + [{"id": c, "name": f"stuff{c}", "isthing": 0} for c in STUFF_IDS])


def _id2rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _segments(ids: np.ndarray, category_of: dict[int, int], crowd: set[int]) -> list[dict]:
    present, counts = np.unique(ids, return_counts=True)
    return [{"id": int(i), "category_id": category_of[int(i)], "iscrowd": int(int(i) in crowd), "area": int(n)}
            for i, n in zip(present, counts, strict=True) if i != 0]


def _ground_truth(rng: np.random.Generator, height: int, width: int):
    # Stuff: a coarse random grid upsampled, one segment per stuff category present.
    grid = rng.choice(STUFF_IDS[: rng.integers(3, len(STUFF_IDS) + 1)], size=(6, 8))
    stuff = np.kron(grid, np.ones((height // 6 + 1, width // 8 + 1), dtype=np.int64))[:height, :width]
    ids = np.zeros((height, width), dtype=np.int64)
    category_of: dict[int, int] = {}
    crowd: set[int] = set()
    for category in np.unique(stuff):
        segment_id = int(rng.integers(1, 256**3))
        ids[stuff == category] = segment_id
        category_of[segment_id] = int(category)
    yy, xx = np.ogrid[:height, :width]
    for _ in range(int(rng.integers(3, 25))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(4, max(5, height // 4)), rng.integers(4, max(5, width // 4))
        shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        segment_id = int(rng.integers(1, 256**3))
        ids[shape] = segment_id
        category_of[segment_id] = int(rng.choice(THING_IDS))
        if rng.random() < 0.1:
            crowd.add(segment_id)
    # VOID: a border strip and a few holes.
    ids[:, : int(rng.integers(0, 4))] = 0
    for _ in range(int(rng.integers(0, 4))):
        y, x = rng.integers(0, height), rng.integers(0, width)
        ids[y: y + int(rng.integers(2, 30)), x: x + int(rng.integers(2, 30))] = 0
    return ids, category_of, crowd


def _perturbed_prediction(rng: np.random.Generator, gt_ids: np.ndarray, category_of: dict[int, int]):
    """Shifted boundaries, dropped / relabelled / merged segments, spurious blobs and fresh ids."""
    height, width = gt_ids.shape
    pred = np.roll(gt_ids, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
    present = [int(i) for i in np.unique(pred) if i != 0]
    fill = int(rng.choice(present)) if present else 0
    new_category = {}
    for segment_id in present:
        roll = rng.random()
        if roll < 0.08:
            pred[pred == segment_id] = fill  # missed: swallowed by another segment
        elif roll < 0.16:
            new_category[segment_id] = int(rng.choice(THING_IDS + STUFF_IDS))
    yy, xx = np.ogrid[:height, :width]
    extra = {}
    for _ in range(int(rng.integers(0, 6))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(3, max(4, height // 6)), rng.integers(3, max(4, width // 6))
        blob_id = int(rng.integers(1, 256**3))
        pred[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = blob_id
        extra[blob_id] = int(rng.choice(THING_IDS + STUFF_IDS))
    # Fresh random ids so that nothing lines up with the ground truth's ids by accident.
    old_ids = [int(i) for i in np.unique(pred) if i != 0]
    fresh = rng.choice(np.arange(1, 256**3), size=len(old_ids), replace=False)
    remap = dict(zip(old_ids, (int(f) for f in fresh), strict=True))
    lookup_keys = np.array([0, *old_ids], dtype=np.int64)
    lookup_values = np.array([0, *(remap[i] for i in old_ids)], dtype=np.int64)
    out = lookup_values[np.searchsorted(lookup_keys, pred)]
    category = {remap[i]: new_category.get(i, extra.get(i, category_of.get(i))) for i in old_ids}
    return out, category


def write_synthetic_panoptic(root: Path, num_images: int, height: int, width: int, seed: int = 0) -> dict:
    """Writes root/{gt,pred}/*.png and root/{gt,pred}.json; returns their paths."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    (root / "pred").mkdir(parents=True, exist_ok=True)
    categories = synthetic_categories()
    gt_annotations, pred_annotations, images = [], [], []
    for index in range(num_images):
        image_id = 1000 + index
        file_name = f"{image_id:012d}.png"
        gt_ids, category_of, crowd = _ground_truth(rng, height, width)
        pred_ids, pred_category = _perturbed_prediction(rng, gt_ids, category_of)
        Image.fromarray(_id2rgb(gt_ids)).save(root / "gt" / file_name)
        Image.fromarray(_id2rgb(pred_ids)).save(root / "pred" / file_name)
        images.append({"id": image_id, "file_name": file_name.replace(".png", ".jpg"), "height": height, "width": width})
        gt_annotations.append({"image_id": image_id, "file_name": file_name,
                               "segments_info": _segments(gt_ids, category_of, crowd)})
        pred_segments = _segments(pred_ids, pred_category, set())
        for segment in pred_segments:  # predictions carry neither area nor iscrowd in panopticapi's input
            del segment["area"]
            del segment["iscrowd"]
        pred_annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": pred_segments})
    (root / "gt.json").write_text(json.dumps({"images": images, "annotations": gt_annotations,
                                              "categories": categories}))
    (root / "pred.json").write_text(json.dumps({"annotations": pred_annotations}))
    return {"gt_json_file": root / "gt.json", "pred_json_file": root / "pred.json", "gt_folder": root / "gt",
            "pred_folder": root / "pred"}
