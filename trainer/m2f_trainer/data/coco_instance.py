"""COCO instance loader: instance json (polygons, RLE, iscrowd) through pycocotools."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from m2f_trainer.data.base import (
    ImageRecord,
    RawAnnotation,
    SegmentationDataset,
    json_label_map,
    positive_int,
)
from m2f_trainer.data.io import read_json, resolve
from m2f_trainer.data.label_map import LabelMap
from m2f_trainer.errors import DataError


def _segmentation_problem(segmentation: object) -> str | None:
    """Why pycocotools could not decode this segmentation, or None when it can."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "an empty polygon list"
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                return "a polygon with fewer than 3 points or an odd number of coordinates"
        return None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return None
    return f"segmentation of type {type(segmentation).__name__} (expected polygons or RLE)"


# The annotation keys load_annotation reads: serialize() keeps these only (bbox, area... would only
# grow the buffer).
LOADED_KEYS = ("id", "category_id", "iscrowd", "segmentation")


def _segmentation_to_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """uint8 [H,W]: pycocotools' COCO.annToMask without the COCO index (polygons, uncompressed or compressed RLE)."""
    if isinstance(segmentation, list):  # polygon parts of one object merge into one RLE
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


class CocoInstanceDataset(SegmentationDataset):
    """One sample per image of ``instance_json``; one mask per annotation (masks may overlap)."""

    kind = "coco"
    per_image_fields = ("records", "annotations")

    def __init__(
        self,
        instance_json: str | Path,
        img_dir: str | Path,
        *,
        contiguous_id: bool = True,
        label_map: LabelMap | None = None,
        transforms: Callable[[dict], dict] | None = None,
        drop_crowd: bool = False,
        mode: str = "panoptic",
        strict: bool = True,
    ):
        self.instance_json = Path(instance_json)
        self.img_dir = Path(img_dir)
        source = str(self.instance_json)
        content = read_json(self.instance_json, "instance json")
        if not isinstance(content, dict) or "images" not in content:
            raise DataError(f"instance json {source} needs an 'images' list")
        content.setdefault("annotations", [])
        label_map = json_label_map(content, label_map, contiguous_id, source, "instance json")
        super().__init__(label_map, transforms, drop_crowd, mode)
        self._validate(content, source, strict)
        self.coco = COCO()
        self.coco.dataset = content
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco.createIndex()
        # Annotations of records[i]: pycocotools' own lists, so the default layout adds no copies.
        self.annotations: list[list[dict]] = []
        for image_id in sorted(self.coco.imgs):
            if image_id in self._bad_images:
                continue
            image = self.coco.imgs[image_id]
            self.records.append(
                ImageRecord(image_id, resolve(image["file_name"], self.img_dir), image.get("height"), image.get("width"))
            )
            self.annotations.append(self.coco.imgToAnns.get(image_id, []))

    def serialize(self) -> None:
        if not self.serialized:
            self.annotations = [[{k: a[k] for k in LOADED_KEYS if k in a} for a in image] for image in self.annotations]
        # Loading needs nothing else from the json or pycocotools' index (COCOeval reads the file itself).
        self.coco = None
        super().serialize()

    def _validate(self, content: dict, source: str, strict: bool) -> None:
        self._bad_images: set = set()
        image_ids = set()
        for image in content["images"]:
            image_id = image.get("id") if isinstance(image, dict) else None
            if not positive_int(image_id) or "file_name" not in image:
                self._report(f"{source}: image {image_id!r} needs an integer id > 0 and a file_name", strict)
                continue
            image_ids.add(image_id)
        content["images"] = [i for i in content["images"] if isinstance(i, dict) and i.get("id") in image_ids]
        annotation_ids = set()
        valid = []
        for annotation in content["annotations"]:
            annotation_id, image_id = annotation.get("id"), annotation.get("image_id")
            category_id = annotation.get("category_id")
            problem = None
            if not positive_int(annotation_id):
                problem = f"annotation id {annotation_id!r} (image id {image_id}) must be an integer > 0"
            elif annotation_id in annotation_ids:
                problem = f"annotation id {annotation_id} appears twice"
            elif image_id not in image_ids:
                problem = f"annotation id {annotation_id} refers to image id {image_id!r}, which is not in 'images'"
            elif not positive_int(category_id):
                problem = f"category id {category_id!r} of annotation id {annotation_id} must be > 0"
            elif category_id not in self.label_map:
                problem = (
                    f"category id {category_id} of annotation id {annotation_id} is not in the label map "
                    f"{self.label_map.source}"
                )
            elif (why := _segmentation_problem(annotation.get("segmentation"))) is not None:
                problem = f"annotation id {annotation_id} (image id {image_id}) has {why}"
            if problem is not None:
                self._report(f"{source}: {problem}", strict)
                if image_id in image_ids:
                    self._bad_images.add(image_id)
                continue
            annotation_ids.add(annotation_id)
            valid.append(annotation)
        content["annotations"] = valid

    def load_annotation(self, index: int, height: int, width: int) -> RawAnnotation:
        record, annotations = self.records[index], self.annotations[index]
        if not annotations:
            return RawAnnotation(
                torch.zeros(0, dtype=torch.int64),
                torch.zeros(0, dtype=torch.bool),
                masks=torch.zeros((0, height, width), dtype=torch.uint8),
            )
        try:
            with warnings.catch_warnings():
                # pycocotools' cython decoder trips numpy 2's copy-keyword deprecation; harmless.
                warnings.simplefilter("ignore", DeprecationWarning)
                masks = np.stack(
                    [_segmentation_to_mask(a["segmentation"], record.height, record.width) for a in annotations]
                )
        except Exception as exc:  # pycocotools raises bare exceptions on malformed RLE
            raise DataError(f"{self.instance_json}: cannot decode a mask of image id {record.image_id}: {exc}") from None
        if masks.shape[1:] != (height, width):
            raise DataError(
                f"{self.instance_json}: masks of image id {record.image_id} are {masks.shape[1]}x{masks.shape[2]} "
                f"but image {record.image_path} is {height}x{width}"
            )
        labels = torch.tensor([self.label_map.class_of(a["category_id"]) for a in annotations], dtype=torch.int64)
        is_crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in annotations], dtype=torch.bool)
        return RawAnnotation(
            labels, is_crowd, masks=torch.from_numpy(masks), segment_ids=[a["id"] for a in annotations]
        )
