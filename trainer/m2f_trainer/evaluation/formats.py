"""Prediction file formats shared by `m2f inference` and `m2f evaluate`: panoptic PNG+JSON, instance RLE JSON, semantic PNG.

On-disk layout of a predictions directory (see docs/evaluation.md)::

    <pred_dir>/panoptic/predictions.json   COCO panoptic: {"annotations": [...], "categories": [...]}
    <pred_dir>/panoptic/<stem>.png         segment id = R + 256 G + 256^2 B, 0 = VOID
    <pred_dir>/instance/instances.json     COCO results list with RLE masks (counts as str)
    <pred_dir>/semantic/<stem>.png         raw category id per pixel (uint8, or uint16 above 255)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from m2f_trainer.errors import DataError

PANOPTIC_DIR = "panoptic"
PANOPTIC_JSON = "predictions.json"
INSTANCE_DIR = "instance"
INSTANCE_JSON = "instances.json"
SEMANTIC_DIR = "semantic"
MAX_SEGMENT_ID = 256**3 - 1  # what fits in the 24 bits of an RGB pixel


# ---------------------------------------------------------------------------------------------- panoptic PNG


def rgb2id(color: np.ndarray) -> np.ndarray:
    """COCO panoptic colour [H,W,3] uint8 -> segment ids [H,W] uint32 (R + 256 G + 256^2 B)."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[2] < 3:
        raise ValueError(f"expected an [H,W,3] colour array, got shape {color.shape}")
    # Shifts and ors on one uint32 buffer: no int64 temporaries of the whole image.
    ids = color[..., 2].astype(np.uint32)
    ids <<= 8
    ids |= color[..., 1]
    ids <<= 8
    ids |= color[..., 0]
    return ids


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H,W] (0 .. 256^3-1) -> COCO panoptic colour [H,W,3] uint8."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"segment ids must lie in 0..{MAX_SEGMENT_ID}, got {ids.min()}..{ids.max()}")
    ids = ids.astype(np.uint32, copy=False)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a COCO panoptic PNG into segment ids [H,W] uint32; DataError naming the file if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                image = image.convert("RGB")
            # PIL keeps RGB pixels as 4 bytes: packing them as RGBX and reading little-endian uint32
            # gives R + 256 G + 256^2 B + 256^3 X in one copy, instead of rgb2id's four passes.
            packed = image.tobytes("raw", "RGBX")
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"{path}: panoptic PNG not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read panoptic PNG ({exc})") from None
    return np.frombuffer(packed, dtype="<u4").reshape(height, width) & np.uint32(MAX_SEGMENT_ID)


def write_panoptic_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write segment ids [H,W] as a COCO panoptic PNG."""
    Image.fromarray(id2rgb(ids)).save(path, format="PNG")


def segments_geometry(ids: np.ndarray, segment_ids: Iterable[int]) -> dict[int, dict]:
    """Pixel area and COCO bbox [x, y, w, h] of each listed segment id in an id map (zeros when absent)."""
    from scipy import ndimage

    present, dense = np.unique(np.asarray(ids), return_inverse=True)
    # Labels 1..n so that find_objects returns one slice per distinct id, in sorted order.
    dense = dense.reshape(np.shape(ids)) + 1
    areas = np.bincount(dense.ravel(), minlength=len(present) + 1)
    boxes = ndimage.find_objects(dense)
    out = {}
    for sid in segment_ids:
        sid = int(sid)
        index = int(np.searchsorted(present, sid))
        if index >= len(present) or present[index] != sid:
            out[sid] = {"area": 0, "bbox": [0, 0, 0, 0]}
            continue
        rows, cols = boxes[index]
        out[sid] = {"area": int(areas[index + 1]),
                    "bbox": [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]}
    return out


class PanopticPredictionWriter:
    """Writes `<pred_dir>/panoptic/<stem>.png` per image and `predictions.json` on close().

    `segments_info` entries need `id` and `category_id` (the RAW dataset category id); `score` and
    `isthing` are kept when given, `area` and `bbox` are computed from the PNG.
    """

    def __init__(self, pred_dir: str | os.PathLike, categories: Sequence[dict] | None = None):
        self.folder = Path(pred_dir) / PANOPTIC_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.categories = list(categories or [])
        self.annotations: list[dict] = []

    def add(self, image_id, file_name: str, panoptic_seg: np.ndarray, segments_info: Sequence[dict]) -> dict:
        png_name = Path(file_name).stem + ".png"
        ids = np.asarray(panoptic_seg)
        write_panoptic_png(self.folder / png_name, ids)
        geometry = segments_geometry(ids, [s["id"] for s in segments_info])
        segments = []
        for segment in segments_info:
            entry = {"id": int(segment["id"]), "category_id": int(segment["category_id"])}
            entry.update(geometry[entry["id"]])
            entry["iscrowd"] = 0
            for key in ("isthing", "score"):
                if key in segment:
                    entry[key] = segment[key] if key == "isthing" else float(segment[key])
            if entry["area"] > 0:  # panopticapi rejects JSON segments absent from the PNG
                segments.append(entry)
        annotation = {"image_id": image_id, "file_name": png_name, "segments_info": segments}
        self.annotations.append(annotation)
        return annotation

    def close(self) -> Path:
        path = self.folder / PANOPTIC_JSON
        write_json_atomic(path, {"annotations": self.annotations, "categories": self.categories})
        return path


# ---------------------------------------------------------------------------------------------- instance JSON


def encode_instances(image_id, masks: np.ndarray, scores: Sequence[float], category_ids: Sequence[int]) -> list[dict]:
    """Instance masks bool [N,H,W] -> COCO results entries with RLE (counts decoded to str)."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, dtype=np.uint8)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N,H,W], got shape {masks.shape}")
    if not (len(masks) == len(scores) == len(category_ids)):
        raise ValueError(f"{len(masks)} masks, {len(scores)} scores and {len(category_ids)} category ids differ")
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    results = []
    for rle, score, category_id in zip(rles, scores, category_ids, strict=True):
        results.append({
            "image_id": image_id,
            "category_id": int(category_id),
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "score": float(score),
        })
    return results


def write_instance_results(pred_dir: str | os.PathLike, results: Sequence[dict]) -> Path:
    path = Path(pred_dir) / INSTANCE_DIR / INSTANCE_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, list(results))
    return path


def read_instance_results(path: str | os.PathLike) -> list[dict]:
    """Read a COCO results JSON (list of {image_id, category_id, segmentation RLE, score}); checks each entry."""
    return check_instance_results(read_json(path), str(path))


def check_instance_results(results, source: str = "instance results") -> list[dict]:
    """Each entry must be {image_id, category_id, segmentation: {size, counts}, score}; DataError otherwise."""
    if not isinstance(results, list):
        raise DataError(f"{source}: expected a list of instance results, got {type(results).__name__}")
    for index, entry in enumerate(results):
        missing = [k for k in ("image_id", "category_id", "segmentation", "score")
                   if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DataError(f"{source}: result #{index} misses {', '.join(missing)}")
        segmentation = entry["segmentation"]
        if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
            raise DataError(f"{source}: result #{index} (image_id {entry['image_id']}) needs an RLE segmentation "
                            "{size, counts}")
    return results


# ---------------------------------------------------------------------------------------------- semantic PNG


def write_semantic_png(path: str | os.PathLike, label_ids: np.ndarray) -> None:
    """Raw category id per pixel; uint8 when every id fits, else 16-bit PNG."""
    label_ids = np.asarray(label_ids)
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 65535):
        raise ValueError(f"semantic ids must lie in 0..65535, got {label_ids.min()}..{label_ids.max()}")
    if not label_ids.size or label_ids.max() <= 255:
        Image.fromarray(label_ids.astype(np.uint8), mode="L").save(path, format="PNG")
    else:
        Image.fromarray(label_ids.astype(np.uint16)).save(path, format="PNG")


def read_semantic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (8 or 16 bit, single channel) into int64 [H,W]; DataError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(f"{path}: a semantic label PNG must have one channel, got mode {image.mode}")
            return np.asarray(image).astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"{path}: semantic label PNG not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read semantic label PNG ({exc})") from None


# ---------------------------------------------------------------------------------------------- JSON helpers


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from None


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    """Write JSON through a temp file + rename so a killed writer never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
