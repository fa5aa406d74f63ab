"""COCO panoptic loader: panoptic json + PNG segment ids (rgb2id) + images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from m2f_trainer.data.base import (
    ImageRecord,
    RawAnnotation,
    SegmentationDataset,
    json_label_map,
    positive_int,
    segment_map_dtype,
)
from m2f_trainer.data.io import read_json, read_panoptic_png, resolve
from m2f_trainer.data.label_map import LabelMap
from m2f_trainer.errors import DataError

# The segments_info keys load_annotation and audit read.
LOADED_KEYS = ("id", "category_id", "iscrowd")


class CocoPanopticDataset(SegmentationDataset):
    """One sample per annotation of ``panoptic_json``; segments come from its PNG in ``panoptic_dir``.

    Categories come from ``label_map`` when given, otherwise from the json's own ``categories``.
    Every category id, image id and segment id must be > 0; a segment whose category is unknown,
    or an annotation whose image is missing, is an error naming the json file and the id.
    """

    kind = "coco_panoptic"
    per_image_fields = ("records", "segments")

    def __init__(
        self,
        panoptic_json: str | Path,
        panoptic_dir: str | Path,
        img_dir: str | Path,
        *,
        contiguous_id: bool = True,
        label_map: LabelMap | None = None,
        transforms: Callable[[dict], dict] | None = None,
        drop_crowd: bool = False,
        mode: str = "panoptic",
        strict: bool = True,
    ):
        self.panoptic_json = Path(panoptic_json)
        self.panoptic_dir = Path(panoptic_dir)
        self.img_dir = Path(img_dir)
        content = read_json(self.panoptic_json, "panoptic json")
        source = str(self.panoptic_json)
        if not isinstance(content, dict) or "annotations" not in content or "images" not in content:
            raise DataError(f"panoptic json {source} needs 'images' and 'annotations' lists")
        label_map = json_label_map(content, label_map, contiguous_id, source, "panoptic json")
        super().__init__(label_map, transforms, drop_crowd, mode)
        self._index(content, source, strict)

    def _index(self, content: dict, source: str, strict: bool) -> None:
        images: dict[int, dict] = {}
        for image in content["images"]:
            image_id = image.get("id") if isinstance(image, dict) else None
            if not positive_int(image_id):
                self._report(f"{source}: image id {image_id!r} must be an integer > 0", strict)
                continue
            images[image_id] = image
        self.segments: list[list[dict]] = []
        for annotation in content["annotations"]:
            image_id = annotation.get("image_id")
            if image_id not in images:
                self._report(f"{source}: annotation for image id {image_id!r} has no entry in 'images'", strict)
                continue
            segments = annotation.get("segments_info", [])
            seen = [s.get("id") for s in segments]
            duplicates = sorted({i for i in seen if seen.count(i) > 1}, key=str)
            if duplicates:
                self._report(f"{source}: segment id {duplicates[0]} appears twice in image id {image_id}", strict)
                continue
            if not all(self._segment_ok(segment, image_id, source, strict) for segment in segments):
                continue
            image = images[image_id]
            png_name = annotation.get("file_name") or Path(image["file_name"]).with_suffix(".png").name
            self.records.append(
                ImageRecord(
                    image_id=image_id,
                    image_path=resolve(image["file_name"], self.img_dir),
                    height=image.get("height"),
                    width=image.get("width"),
                    extra={"panoptic_file": str(resolve(png_name, self.panoptic_dir))},
                )
            )
            self.segments.append(segments)

    def serialize(self) -> None:
        if not self.serialized:
            # Loading and audit read these keys only; bbox and area would only grow the buffer.
            self.segments = [[{k: s[k] for k in LOADED_KEYS if k in s} for s in image] for image in self.segments]
        super().serialize()

    def _segment_ok(self, segment: dict, image_id: int, source: str, strict: bool) -> bool:
        segment_id, category_id = segment.get("id"), segment.get("category_id")
        if not positive_int(segment_id):
            self._report(f"{source}: segment id {segment_id!r} of image id {image_id} must be > 0", strict)
            return False
        if not positive_int(category_id):
            self._report(
                f"{source}: category id {category_id!r} of segment {segment_id} (image id {image_id}) must be > 0",
                strict,
            )
            return False
        if category_id not in self.label_map:
            self._report(
                f"{source}: category id {category_id} of segment {segment_id} (image id {image_id}) "
                f"is not in the label map {self.label_map.source}",
                strict,
            )
            return False
        return True

    def load_annotation(self, index: int, height: int, width: int) -> RawAnnotation:
        record, segments = self.records[index], self.segments[index]
        png_path = Path(record.extra["panoptic_file"])
        ids = read_panoptic_png(png_path)
        if tuple(ids.shape) != (height, width):
            raise DataError(
                f"panoptic PNG {png_path} is {ids.shape[0]}x{ids.shape[1]} but image "
                f"{record.image_path} is {height}x{width}"
            )
        segment_ids = np.array([s["id"] for s in segments], dtype=np.int64)
        # Map raw segment ids (up to 256^3) onto 1..N; ids absent from segments_info stay void (0).
        order = np.argsort(segment_ids)
        flat = ids.numpy().ravel()
        position = np.searchsorted(segment_ids[order], flat).clip(max=max(len(segments) - 1, 0))
        if len(segments):
            compact = np.where(segment_ids[order][position] == flat, order[position] + 1, 0)
        else:
            compact = np.zeros(flat.shape, dtype=np.int64)
        segment_map = torch.from_numpy(compact.reshape(height, width)).to(segment_map_dtype(len(segments)))
        labels = torch.tensor([self.label_map.class_of(s["category_id"]) for s in segments], dtype=torch.int64)
        is_crowd = torch.tensor([bool(s.get("iscrowd", 0)) for s in segments], dtype=torch.bool)
        return RawAnnotation(labels, is_crowd, segment_map=segment_map, segment_ids=segment_ids.tolist())

    def audit(self, index: int) -> list[str]:
        """PNG segments missing from segments_info and listed segments without pixels.

        Training treats the first as void and drops the second, but COCO's pq_compute rejects both.
        """
        record, segments = self.records[index], self.segments[index]
        png_path = record.extra["panoptic_file"]
        present = set(np.unique(read_panoptic_png(Path(png_path)).numpy()).tolist()) - {0}
        listed = {s["id"] for s in segments}
        problems = [
            f"panoptic PNG {png_path} has segment id {segment_id} that segments_info of image id "
            f"{record.image_id} does not list"
            for segment_id in sorted(present - listed)
        ]
        problems += [
            f"{self.panoptic_json}: segment id {segment_id} of image id {record.image_id} has no pixels in {png_path}"
            for segment_id in sorted(listed - present)
        ]
        return problems
