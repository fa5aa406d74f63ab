"""Batching: zero-pad images to a common size that is a multiple of 32; masks pad with False, sem_seg with 255."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

from m2f_trainer.data.label_map import IGNORE_INDEX

SIZE_DIVISIBILITY = 32


def padded_size(sizes: list[tuple[int, int]], divisor: int = SIZE_DIVISIBILITY) -> tuple[int, int]:
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def collate(batch: list[dict], size_divisibility: int = SIZE_DIVISIBILITY) -> tuple[torch.Tensor, list[dict], list[dict]]:
    """Samples -> (images [B,3,Hp,Wp], targets [{labels, masks, is_crowd, sem_seg}], metas).

    Images pad with 0 after normalisation (detectron2's ImageList); masks pad with False so padding
    is never a segment; sem_seg pads with the ignore index.
    """
    if not batch:
        raise ValueError("collate needs at least one sample")
    height, width = padded_size([tuple(s["image"].shape[-2:]) for s in batch], size_divisibility)
    images = batch[0]["image"].new_zeros((len(batch), 3, height, width))
    targets, metas = [], []
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
