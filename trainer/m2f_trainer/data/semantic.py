"""Semantic loader (dataset type ``ade``): JSONL image/mask pairs or ADE20k-style folder pairs.

Mask PNGs hold raw category ids per pixel (8-bit); 0 (ADE20k's "other") and 255 are unlabelled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from m2f_trainer.data.base import ImageRecord, RawAnnotation, SegmentationDataset, segment_map_dtype
from m2f_trainer.data.io import list_images, read_label_png, resolve
from m2f_trainer.data.label_map import IGNORE_INDEX, LabelMap
from m2f_trainer.errors import DataError

UNLABELLED_VALUES = (0, IGNORE_INDEX)
# Accepted key pairs of a JSONL line: TAO's documented one and the ADE20k .odgt one.
JSONL_KEYS = (("img_path", "mask_path"), ("img", "segm"))


class SemanticDataset(SegmentationDataset):
    """One segment per class present in the mask.

    Pairs come from ``annot_file`` (JSONL, one ``{"img_path": ..., "mask_path": ...}`` per line;
    relative paths resolve against ``root_dir``, or the JSONL's folder when root_dir is empty), or,
    without annot_file, from ``img_dir``: every image under it pairs with the PNG at the same path with
    the ``images`` folder replaced by ``annotations`` (ADEChallengeData2016 layout).
    """

    kind = "ade"

    def __init__(
        self,
        label_map: LabelMap,
        annot_file: str | Path | None = None,
        *,
        root_dir: str | Path | None = None,
        img_dir: str | Path | None = None,
        transforms: Callable[[dict], dict] | None = None,
        mode: str = "semantic",
        strict: bool = True,
    ):
        super().__init__(label_map, transforms, drop_crowd=False, mode=mode)
        self.root_dir = Path(root_dir) if root_dir else None
        if annot_file:
            self._index_jsonl(Path(annot_file), strict)
        elif img_dir:
            self._index_folders(resolve(img_dir, self.root_dir))
        else:
            raise DataError("semantic data needs annot_file (JSONL) or img_dir (ADE20k images/annotations folders)")
        # Pixel value -> class lookup; unknown values map to -1 and are reported per file.
        self._class_of_value = torch.full((256,), -1, dtype=torch.int64)
        for raw_id in label_map.raw_ids:
            if raw_id < 256:
                self._class_of_value[raw_id] = label_map.class_of(raw_id)

    def _index_jsonl(self, annot_file: Path, strict: bool) -> None:
        base = self.root_dir or annot_file.parent
        try:
            lines = annot_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"annotation file {annot_file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"annotation file {annot_file} is not readable: {exc}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                self._report(f"{annot_file}:{number}: not a JSON object: {exc}", strict)
                continue
            keys = next((k for k in JSONL_KEYS if isinstance(entry, dict) and all(x in entry for x in k)), None)
            if keys is None:
                self._report(f"{annot_file}:{number}: expected keys 'img_path' and 'mask_path'", strict)
                continue
            image_path = resolve(entry[keys[0]], base)
            # The path as written (less its suffix) identifies the image: stems may repeat across folders.
            self.records.append(
                ImageRecord(str(Path(entry[keys[0]]).with_suffix("")), image_path, extra={"mask_file": str(resolve(entry[keys[1]], base))})
            )
        if not self.records and not self.problems:
            raise DataError(f"annotation file {annot_file} lists no image/mask pairs")

    def _index_folders(self, img_dir: Path) -> None:
        if "images" not in img_dir.parts:
            raise DataError(
                f"img_dir {img_dir} has no 'images' folder to pair with 'annotations'; give an annot_file instead"
            )
        position = len(img_dir.parts) - 1 - img_dir.parts[::-1].index("images")
        for image_path in list_images(img_dir):
            parts = list(image_path.parts)
            parts[position] = "annotations"
            mask_path = Path(*parts).with_suffix(".png")
            image_id = str(image_path.relative_to(img_dir).with_suffix(""))
            self.records.append(ImageRecord(image_id, image_path, extra={"mask_file": str(mask_path)}))
        if not self.records:
            raise DataError(f"image folder {img_dir} holds no images")

    def load_annotation(self, index: int, height: int, width: int) -> RawAnnotation:
        mask_path = Path(self.records[index].extra["mask_file"])
        mask = read_label_png(mask_path)
        if tuple(mask.shape) != (height, width):
            raise DataError(
                f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but image "
                f"{self.records[index].image_path} is {height}x{width}"
            )
        present = torch.bincount(mask.flatten(), minlength=256).nonzero().flatten()
        values = [v for v in present.tolist() if v not in UNLABELLED_VALUES]
        unknown = [v for v in values if self._class_of_value[v] < 0]
        if unknown:
            raise DataError(
                f"mask {mask_path} has value {unknown[0]}, which is not a category of {self.label_map.source}"
            )
        dtype = segment_map_dtype(len(values))
        lookup = torch.zeros(256, dtype=dtype)
        lookup[torch.tensor(values, dtype=torch.int64)] = torch.arange(1, len(values) + 1, dtype=dtype)
        segment_map = torch.from_numpy(lookup.numpy()[mask.numpy()])
        labels = self._class_of_value[torch.tensor(values, dtype=torch.int64)]
        return RawAnnotation(
            labels, torch.zeros(len(values), dtype=torch.bool), segment_map=segment_map, segment_ids=values
        )

