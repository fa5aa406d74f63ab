"""Batching: zero-pad images to a common size that is a multiple of 32; masks pad with False, sem_seg with 255."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as nnf

from m2f_trainer.data.base import SkippedSample
from m2f_trainer.data.label_map import IGNORE_INDEX

SIZE_DIVISIBILITY = 32


def padded_size(sizes: list[tuple[int, int]], divisor: int = SIZE_DIVISIBILITY) -> tuple[int, int]:
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


class BatchMetas(list):
    """A batch's metas (a plain list to its users) plus ``skipped``: the SkippedSamples collate dropped.

    The count travels with the batch because collate runs in the DataLoader workers, which are other
    processes; the attribute survives pickling to the main process and pin_memory's copy.
    """

    def __init__(self, metas: Iterable[dict] = (), skipped: Iterable[SkippedSample] = ()):
        super().__init__(metas)
        self.skipped = list(skipped)


def collate(
    batch: list[dict],
    size_divisibility: int = SIZE_DIVISIBILITY,
    fixed_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[dict], BatchMetas]:
    """Samples -> (images [B,3,Hp,Wp], targets [{labels, masks, is_crowd, sem_seg}], metas: BatchMetas).

    Images pad with 0 after normalisation (detectron2's ImageList); masks pad with False so padding
    is never a segment; sem_seg pads with the ignore index. ``fixed_size`` [H, W] (training with
    ``augmentation.fixed_padding``) pads to at least that size rounded up, so every batch has one
    shape; a larger sample still widens its batch rather than being cut. SkippedSamples (training
    with ``dataset.skip_corrupt``) are dropped and listed in ``metas.skipped``; when all are, the
    batch is empty (B = 0) and the training step passes over it.
    """
    if not batch:
        raise ValueError("collate needs at least one sample")
    skipped = [s for s in batch if isinstance(s, SkippedSample)]
    batch = [s for s in batch if not isinstance(s, SkippedSample)]
    sizes = [tuple(s["image"].shape[-2:]) for s in batch]
    if fixed_size is not None:
        sizes.append((int(fixed_size[0]), int(fixed_size[1])))
    height, width = padded_size(sizes or [(size_divisibility, size_divisibility)], size_divisibility)
    dtype = batch[0]["image"].dtype if batch else torch.float32
    images = torch.zeros((len(batch), 3, height, width), dtype=dtype)
    targets, metas = [], BatchMetas(skipped=skipped)
    for position, sample in enumerate(batch):
        h, w = sample["image"].shape[-2:]
        images[position, :, :h, :w] = sample["image"]
        pad = (0, width - w, 0, height - h)
        targets.append(
            {
                "labels": sample["labels"],
                "masks": nnf.pad(sample["masks"], pad, value=False),
                "is_crowd": sample["is_crowd"],
                "sem_seg": nnf.pad(sample["sem_seg"], pad, value=IGNORE_INDEX),
            }
        )
        metas.append(sample["meta"])
    return images, targets, metas
