"""Compare predictions written by two backends (PyTorch and onnxruntime) with the tolerances the export guarantees.

The parity gate bounds every output's difference (~1e-6 here, 1e-3 at most). What follows from that, and what
these helpers assert: the same images, the same categories, the same masks except for pixels whose decision
sat within rounding of a cut (a threshold or an argmax tie), scores within ``SCORE_TOL``, and a ranking in which
only entries whose scores tie within ``SCORE_TOL`` may swap (including across a top-k cut). Never rounded
floats compared for equality: a 1e-6 difference can straddle any rounding boundary.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SCORE_TOL = 1e-4
# Pixels whose decision may flip between backends: those within rounding of a cut. On the tests' 64x64 images a
# handful at most; more than 0.5 % would mean the outputs differ, not the rounding.
MAX_FLIPPED_PIXEL_FRACTION = 0.005
MIN_MASK_IOU = 0.95


def assert_label_maps_match(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Two per-pixel label maps (semantic PNGs, panoptic id PNGs) of the same size agree but for a few pixels."""
    assert ours.shape == theirs.shape, what
    flipped = np.any(ours != theirs, axis=-1) if ours.ndim == 3 else ours != theirs
    assert flipped.mean() <= MAX_FLIPPED_PIXEL_FRACTION, f"{what}: {int(flipped.sum())} of {flipped.size} pixels differ"


def assert_panoptic_dirs_match(ours_dir: Path, theirs_dir: Path) -> int:
    """Panoptic PNGs agree pixel-wise (see above), and each image's segments match one to one: same category,
    area within the flipped-pixel budget, score within SCORE_TOL. Returns the number of segments compared."""
    ours, theirs = (json.loads((d / "predictions.json").read_text())["annotations"] for d in (ours_dir, theirs_dir))
    assert [a["image_id"] for a in ours] == [a["image_id"] for a in theirs]
    compared = 0
    for mine, ref in zip(ours, theirs, strict=True):
        mine_png = np.asarray(Image.open(ours_dir / mine["file_name"]))
        ref_png = np.asarray(Image.open(theirs_dir / ref["file_name"]))
        assert_label_maps_match(mine_png, ref_png, f"image {ref['image_id']}")
        budget = MAX_FLIPPED_PIXEL_FRACTION * ref_png.shape[0] * ref_png.shape[1]
        assert len(mine["segments_info"]) == len(ref["segments_info"]), f"image {ref['image_id']}: segment count"
        for a, b in zip(mine["segments_info"], ref["segments_info"], strict=True):
            assert a["category_id"] == b["category_id"], f"image {ref['image_id']}: segment {b['id']} category"
            assert abs(a["area"] - b["area"]) <= budget, f"image {ref['image_id']}: segment {b['id']} area"
            assert abs(a["score"] - b["score"]) <= SCORE_TOL, f"image {ref['image_id']}: segment {b['id']} score"
            compared += 1
    return compared


def assert_instances_match(ours: list[dict], theirs: list[dict]) -> None:
    """COCO instance results: per image, every entry pairs with one of the other side (same category, mask IoU
    >= MIN_MASK_IOU, score within SCORE_TOL), matched in score order so that tied scores may swap. An entry left
    unpaired is allowed only at a top-k cut: its score ties (within SCORE_TOL) the lowest score kept there."""
    by_image: dict = defaultdict(lambda: ([], []))
    for side, entries in enumerate((ours, theirs)):
        for entry in entries:
            by_image[entry["image_id"]][side].append(entry)
    for image_id, (mine, ref) in sorted(by_image.items()):
        unpaired = list(mine)
        for entry in sorted(ref, key=lambda e: -e["score"]):
            match = next((m for m in unpaired if _same_instance(m, entry)), None)
            if match is None:
                _assert_at_cut(entry, ref, image_id)
            else:
                unpaired.remove(match)
        for entry in unpaired:
            _assert_at_cut(entry, mine, image_id)


def _same_instance(a: dict, b: dict) -> bool:
    if a["category_id"] != b["category_id"] or abs(a["score"] - b["score"]) > SCORE_TOL:
        return False
    iou = mask_utils.iou([a["segmentation"]], [b["segmentation"]], [0])
    return float(iou[0][0]) >= MIN_MASK_IOU or a["segmentation"]["counts"] == b["segmentation"]["counts"]


def _assert_at_cut(entry: dict, side: list[dict], image_id) -> None:
    lowest = min(e["score"] for e in side)
    assert entry["score"] - lowest <= SCORE_TOL, (
        f"image {image_id}: category {entry['category_id']} score {entry['score']:.6f} has no counterpart "
        f"and is not at the top-k cut (lowest kept {lowest:.6f})")
