"""Image + mask transforms on torchvision.transforms.v2 / tv_tensors (detectron2-style resize and crop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# TAO's defaults (ImageNet statistics on the 0-1 scale).
DEFAULT_PIXEL_MEAN = (0.485, 0.456, 0.406)
DEFAULT_PIXEL_STD = (0.229, 0.224, 0.225)


def _spatial_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for item in flat_inputs:
        if isinstance(item, tv_tensors.Image | tv_tensors.Mask):
            height, width = F.get_size(item)
            return height, width
    raise TypeError("the transform needs a tv_tensors.Image or tv_tensors.Mask input")


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output size that scales the short side to ``short_edge`` unless the long side would pass ``max_size``."""
    scale = short_edge / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


class ResizeShortestEdge(v2.Transform):
    """Resize so the short side is a length drawn from ``short_edge_lengths``, capping the long side.

    Unlike ``v2.Resize(size, max_size)`` it accepts ``max_size == short edge`` (TAO's test default
    640/640) and draws the length from a list (multi-scale training).
    """

    def __init__(self, short_edge_lengths: Sequence[int], max_size: int):
        super().__init__()
        if not short_edge_lengths:
            raise ValueError("short_edge_lengths must not be empty")
        self.short_edge_lengths = [int(s) for s in short_edge_lengths]
        self.max_size = int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _spatial_size(flat_inputs)
        choice = int(torch.randint(len(self.short_edge_lengths), ()))
        return {"size": list(shortest_edge_size(height, width, self.short_edge_lengths[choice], self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # Masks dispatch to nearest-neighbour resizing whatever the interpolation argument says.
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


class RandomCropAtMost(v2.Transform):
    """Random crop of ``size`` [h, w], shrunk to the image where the image is smaller.

    Padding is left to ``collate`` (zeros after normalisation, to a multiple of 32), so a sample is
    always unpadded and ``image_size`` stays the real content size.
    """

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _spatial_size(flat_inputs)
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _normalise(pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pixel_mean), std=list(pixel_std))]


def _pre_resize(target_size: Sequence[int] | None) -> list[v2.Transform]:
    # TAO resizes every image to target_size with PIL, whose size argument is (width, height).
    if not target_size:
        return []
    width, height = (target_size[0], target_size[0]) if len(target_size) == 1 else target_size[:2]
    return [v2.Resize((int(height), int(width)), antialias=True)]


def build_train_transforms(
    min_sizes: Sequence[int],
    max_size: int,
    crop_size: Sequence[int],
    pixel_mean: Sequence[float] = DEFAULT_PIXEL_MEAN,
    pixel_std: Sequence[float] = DEFAULT_PIXEL_STD,
    *,
    flip_prob: float = 0.5,
    lsj_scale_range: tuple[float, float] | None = None,
    target_size: Sequence[int] | None = None,
) -> v2.Compose:
    """Multi-scale (or large-scale-jitter) resize, random crop, horizontal flip, normalisation.

    With ``lsj_scale_range`` (e.g. (0.1, 2.0)) the image is scaled to fit ``crop_size`` times a factor
    drawn from the range (Mask2Former's LSJ recipe) instead of the shortest-edge resize.
    """
    if lsj_scale_range is not None:
        resize: v2.Transform = v2.ScaleJitter(
            target_size=(int(crop_size[0]), int(crop_size[1])), scale_range=tuple(lsj_scale_range), antialias=True
        )
    else:
        resize = ResizeShortestEdge(min_sizes, max_size)
    return v2.Compose(
        [
            *_pre_resize(target_size),
            resize,
            RandomCropAtMost(crop_size),
            v2.RandomHorizontalFlip(flip_prob),
            *_normalise(pixel_mean, pixel_std),
        ]
    )


def build_test_transforms(
    min_size: int,
    max_size: int,
    pixel_mean: Sequence[float] = DEFAULT_PIXEL_MEAN,
    pixel_std: Sequence[float] = DEFAULT_PIXEL_STD,
    *,
    target_size: Sequence[int] | None = None,
) -> v2.Compose:
    """Deterministic shortest-edge resize and normalisation (evaluation, inference)."""
    return v2.Compose(
        [*_pre_resize(target_size), ResizeShortestEdge([min_size], max_size), *_normalise(pixel_mean, pixel_std)]
    )


def tao_train_min_sizes(train_min_size: Sequence[int], crop_size: Sequence[int]) -> list[int]:
    """TAO's reading of ``augmentation.train_min_size``.

    A list of two or more lengths is used as given; a single length ``s`` (or none: the smaller crop
    side) becomes TAO's multi-scale range ``s/2, s/2+64, ... <= 2s+63``, as TAO's data loader does.
    """
    if len(train_min_size) > 1:
        return [int(s) for s in train_min_size]
    size = int(train_min_size[0]) if train_min_size else int(min(crop_size))
    return list(range(size // 2, size * 2 + 64, 64))
