"""Deterministic synthetic datasets in the real on-disk formats (COCO panoptic, COCO instance, semantic JSONL).

Each image has two stuff regions (sky over ground) and a few things of known classes: squares
(polygons), discs (uncompressed RLE) and bars; occluded instances are stored as compressed RLE.
A label map and a matching experiment spec (tiny model settings) are written next to the data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

KINDS = ("coco_panoptic", "coco", "semantic")
# Non-contiguous raw ids on purpose: contiguous_id must remap them.
THINGS = [
    {"id": 1, "name": "square", "color": [220, 20, 60], "isthing": 1},
    {"id": 2, "name": "disc", "color": [0, 0, 142], "isthing": 1},
    {"id": 4, "name": "bar", "color": [250, 170, 30], "isthing": 1},
]
STUFF = [
    {"id": 7, "name": "sky", "color": [70, 130, 180], "isthing": 0},
    {"id": 9, "name": "ground", "color": [110, 80, 40], "isthing": 0},
]
MODE_OF_KIND = {"coco_panoptic": "panoptic", "coco": "instance", "semantic": "semantic"}
SPEC_TYPE_OF_KIND = {"coco_panoptic": "coco_panoptic", "coco": "coco", "semantic": "ade"}
MIN_VISIBLE_PIXELS = 16


def _shape_mask(category: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random thing of the category: an axis-aligned square, an ellipse or a tall thin bar."""
    yy, xx = np.ogrid[:height, :width]
    if category == "bar":
        box_h, box_w = int(rng.uniform(0.3, 0.6) * height), max(3, int(rng.uniform(0.06, 0.12) * width))
    else:
        side = int(rng.uniform(0.15, 0.35) * min(height, width))
        box_h, box_w = max(4, side), max(4, int(side * rng.uniform(0.8, 1.25)))
    top = int(rng.integers(0, max(1, height - box_h)))
    left = int(rng.integers(0, max(1, width - box_w)))
    if category == "disc":
        cy, cx, ry, rx = top + box_h / 2, left + box_w / 2, box_h / 2, box_w / 2
        return ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + box_h, left : left + box_w] = True
    return mask


def _scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[dict, np.ndarray]]]:
    """(RGB image, [(category, visible mask)]) with stuff first and things on top, later over earlier."""
    image = np.zeros((height, width, 3), dtype=np.float32)
    horizon = int(rng.uniform(0.35, 0.65) * height)
    sky = np.zeros((height, width), dtype=bool)
    sky[:horizon] = True
    layers: list[tuple[dict, np.ndarray]] = [(STUFF[0], sky), (STUFF[1], ~sky)]
    for _ in range(int(rng.integers(2, 5))):
        category = THINGS[int(rng.integers(len(THINGS)))]
        shape = _shape_mask(category["name"], height, width, rng)
        for _, earlier in layers:
            earlier &= ~shape
        layers.append((category, shape))
    layers = [(c, m) for c, m in layers if m.sum() >= MIN_VISIBLE_PIXELS]
    for category, mask in layers:
        jitter = rng.uniform(-12, 12, size=3)
        image[mask] = np.clip(np.array(category["color"], dtype=np.float32) + jitter, 0, 255)
    image += rng.normal(0, 4, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), layers


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.int8)  # COCO RLE runs go down columns
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _instance_segmentation(category: dict, mask: np.ndarray, full_shape: bool) -> object:
    """Squares / bars that nothing covers as polygons, discs as uncompressed RLE, the rest compressed RLE."""
    if category["name"] != "disc" and full_shape:
        x, y, w, h = _bbox(mask)
        return [[x, y, x + w, y, x + w, y + h, x, y + h]]
    if category["name"] == "disc":
        return _uncompressed_rle(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(s) for s in rle["size"]]}


def _id_to_rgb(segment_map: np.ndarray) -> np.ndarray:
    return np.stack([segment_map % 256, segment_map // 256 % 256, segment_map // 65536], axis=-1).astype(np.uint8)


def _spec(kind: str, out: Path, categories: list[dict], size: tuple[int, int], data: dict) -> dict:
    height, width = size
    short = min(height, width)
    split = {"root_dir": str(out), "batch_size": 2, "num_workers": 0, **data}
    return {
        "results_dir": str(out / "results"),
        "model": {
            "mode": MODE_OF_KIND[kind],
            "backbone": {"timm_name": "resnet18"},
            "mask_former": {
                "num_object_queries": 16,
                "hidden_dim": 32,
                "nheads": 4,
                "dim_feedforward": 64,
                "dec_layers": 3,
                "train_num_points": 1024,
            },
            "sem_seg_head": {
                "num_classes": len(categories),
                "convs_dim": 32,
                "mask_dim": 32,
                "transformer_enc_layers": 1,
            },
        },
        "dataset": {
            "type": SPEC_TYPE_OF_KIND[kind],
            "contiguous_id": True,
            "label_map": str(out / "label_map.json"),
            "augmentation": {
                "train_min_size": sorted({max(32, short * 3 // 4), short, short * 5 // 4}),
                "train_max_size": max(height, width) * 2,
                "train_crop_size": [height, width],
                "test_min_size": max(32, short),
                "test_max_size": max(32, max(height, width) * 2),
            },
            "train": dict(split),
            "val": dict(split),
            "test": {"root_dir": str(out), "img_dir": "images", "batch_size": 1, "num_workers": 0},
        },
        "train": {"num_epochs": 1, "seed": 1234, "checkpoint_interval": 1, "validation_interval": 1,
                  "activation_checkpoint": False},
    }


def synthesize(
    kind: str,
    out_dir: str | Path,
    num_images: int = 8,
    seed: int = 0,
    size: tuple[int, int] | int = (128, 128),
) -> Path:
    """Write a synthetic ``kind`` dataset (coco_panoptic | coco | semantic) to ``out_dir``; returns spec.yaml.

    The same arguments always produce byte-identical files. The spec points train and val at the
    same images, so short overfitting runs can be scored.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(height, width) < 16:
        raise ValueError("size must be at least 16x16")
    out = Path(out_dir).resolve()
    # Files of an earlier, larger run would linger in the image folder (the test split lists it).
    for folder in ("images", "panoptic", "masks"):
        for stale in (out / folder).glob("[0-9][0-9][0-9][0-9][0-9][0-9].*"):
            stale.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = THINGS if kind == "coco" else THINGS + STUFF
    (out / "label_map.json").write_text(json.dumps(categories, indent=1))
    rng = np.random.default_rng(seed)

    images, annotations, jsonl_lines = [], [], []
    instance_id = 0
    for index in range(num_images):
        stem = f"{index + 1:06d}"
        image, layers = _scene(height, width, rng)
        Image.fromarray(image).save(out / "images" / f"{stem}.jpg", quality=95)
        images.append({"id": index + 1, "file_name": f"{stem}.jpg", "height": height, "width": width})
        if kind == "coco_panoptic":
            segment_map = np.zeros((height, width), dtype=np.int64)
            segments = []
            for number, (category, mask) in enumerate(layers, start=1):
                segment_id = category["id"] * 1000 + number  # arbitrary ids > 0, as in COCO
                segment_map[mask] = segment_id
                segments.append({"id": segment_id, "category_id": category["id"], "iscrowd": 0,
                                 "area": int(mask.sum()), "bbox": _bbox(mask)})
            (out / "panoptic").mkdir(exist_ok=True)
            Image.fromarray(_id_to_rgb(segment_map)).save(out / "panoptic" / f"{stem}.png")
            annotations.append({"image_id": index + 1, "file_name": f"{stem}.png", "segments_info": segments})
        elif kind == "coco":
            for category, mask in layers:
                if not category["isthing"]:
                    continue
                instance_id += 1
                full = bool(mask.sum() == np.prod(_bbox(mask)[2:]))
                annotations.append({
                    "id": instance_id, "image_id": index + 1, "category_id": category["id"], "iscrowd": 0,
                    "area": int(mask.sum()), "bbox": _bbox(mask),
                    "segmentation": _instance_segmentation(category, mask, full),
                })
        else:
            label = np.zeros((height, width), dtype=np.uint8)
            for category, mask in layers:
                label[mask] = category["id"]
            label[[0, -1], :] = 255  # an ignore frame, as real label PNGs often have
            label[:, [0, -1]] = 255
            (out / "masks").mkdir(exist_ok=True)
            Image.fromarray(label).save(out / "masks" / f"{stem}.png")
            jsonl_lines.append(json.dumps({"img_path": f"images/{stem}.jpg", "mask_path": f"masks/{stem}.png"}))

    (out / "annotations").mkdir(exist_ok=True)
    if kind == "coco_panoptic":
        content = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / "panoptic.json").write_text(json.dumps(content))
        data = {"panoptic_json": "annotations/panoptic.json", "panoptic_dir": "panoptic", "img_dir": "images"}
    elif kind == "coco":
        content = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / "instances.json").write_text(json.dumps(content))
        data = {"instance_json": "annotations/instances.json", "img_dir": "images"}
    else:
        (out / "annotations" / "train.jsonl").write_text("\n".join(jsonl_lines) + "\n")
        data = {"annot_file": "annotations/train.jsonl"}
    spec_path = out / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(kind, out, categories, (height, width), data), sort_keys=False))
    return spec_path
