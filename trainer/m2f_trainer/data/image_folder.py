"""Unlabelled image folder (``dataset.test.img_dir``): samples for inference, with no segments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from m2f_trainer.data.base import ImageRecord, RawAnnotation, SegmentationDataset
from m2f_trainer.data.io import list_images
from m2f_trainer.data.label_map import LabelMap
from m2f_trainer.errors import DataError


class ImageFolderDataset(SegmentationDataset):
    """Unlabelled images (``dataset.test.img_dir`` for inference): samples carry no segments."""

    kind = "images"

    def __init__(self, img_dir: str | Path, label_map: LabelMap, transforms: Callable[[dict], dict] | None = None):
        super().__init__(label_map, transforms)
        self.img_dir = Path(img_dir)
        # Relative path less its suffix: the stem for a flat folder, unique across subfolders.
        self.records = [ImageRecord(str(p.relative_to(self.img_dir).with_suffix("")), p) for p in list_images(self.img_dir)]
        if not self.records:
            raise DataError(f"image folder {self.img_dir} holds no images")

    def load_annotation(self, index: int, height: int, width: int) -> RawAnnotation:
        return RawAnnotation(
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.bool),
            segment_map=torch.zeros((height, width), dtype=torch.uint8),
        )
