"""Transforms keep image and masks aligned (checked on pixels), crop/resize sizes, padding and collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from m2f_trainer.data import collate
from m2f_trainer.data.coco_instance import CocoInstanceDataset
from m2f_trainer.data.coco_panoptic import CocoPanopticDataset
from m2f_trainer.data.transforms import (
    DEFAULT_PIXEL_MEAN,
    DEFAULT_PIXEL_STD,
    build_test_transforms,
    build_train_transforms,
    shortest_edge_size,
    tao_train_min_sizes,
)

HEIGHT, WIDTH = 64, 96
# (category id, colour, (top, bottom, left, right)); later regions paint over earlier ones.
REGIONS = [
    (1, (250, 20, 20), (0, 64, 0, 96)),  # background stuff
    (2, (20, 20, 250), (8, 40, 8, 30)),  # left thing
    (3, (240, 240, 20), (20, 60, 60, 90)),  # right thing
    (4, (20, 230, 230), (36, 58, 20, 50)),  # overlaps the left thing's corner region
    (5, (230, 20, 230), (0, 4, 92, 96)),  # tiny corner thing: often cropped away
]
VOID = (30, 200, 30)  # a strip that belongs to no segment
VOID_ROWS = (44, 50)


def _paint(folder: Path) -> tuple[Path, list[np.ndarray]]:
    """A lossless PNG image, the visible mask of each region, and both annotation formats."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    owner = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    for index, (_, colour, (top, bottom, left, right)) in enumerate(REGIONS, start=1):
        image[top:bottom, left:right] = colour
        owner[top:bottom, left:right] = index
    image[VOID_ROWS[0] : VOID_ROWS[1], :] = VOID
    owner[VOID_ROWS[0] : VOID_ROWS[1], :] = 0
    (folder / "images").mkdir(parents=True)
    Image.fromarray(image).save(folder / "images" / "a.png")
    masks = [owner == index for index in range(1, len(REGIONS) + 1)]
    categories = [{"id": c, "name": f"c{c}", "isthing": int(c != 1)} for c, _, _ in REGIONS]
    images = [{"id": 1, "file_name": "a.png", "height": HEIGHT, "width": WIDTH}]
    segment_ids = [100 + 7 * i for i in range(len(REGIONS))]
    panoptic_png = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    segments = []
    for segment_id, mask, (category_id, _, _) in zip(segment_ids, masks, REGIONS, strict=True):
        panoptic_png[mask] = (segment_id % 256, segment_id // 256, 0)
        segments.append({"id": segment_id, "category_id": category_id, "iscrowd": 0, "area": int(mask.sum())})
    (folder / "panoptic").mkdir()
    Image.fromarray(panoptic_png).save(folder / "panoptic" / "a.png")
    (folder / "panoptic.json").write_text(json.dumps({
        "images": images, "categories": categories,
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}],
    }))
    instances = []
    for number, (mask, (category_id, _, _)) in enumerate(zip(masks, REGIONS, strict=True), start=1):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        instances.append({"id": number, "image_id": 1, "category_id": category_id, "iscrowd": 0,
                          "segmentation": {"counts": rle["counts"].decode(), "size": [HEIGHT, WIDTH]}})
    (folder / "instances.json").write_text(json.dumps({"images": images, "categories": categories,
                                                         "annotations": instances}))
    return folder, masks


@pytest.fixture(scope="module")
def painted(tmp_path_factory) -> Path:
    folder, _ = _paint(tmp_path_factory.mktemp("painted"))
    return folder


def _dataset(folder: Path, layout: str, transforms):
    if layout == "panoptic":
        return CocoPanopticDataset(folder / "panoptic.json", folder / "panoptic", folder / "images",
                                   contiguous_id=True, transforms=transforms)
    return CocoInstanceDataset(folder / "instances.json", folder / "images", contiguous_id=True, transforms=transforms)


def _pixels(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(DEFAULT_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(DEFAULT_PIXEL_STD).view(3, 1, 1)
    return (image * std + mean) * 255


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    # Beyond the border counts as outside: a crop edge may cut right next to a blended region edge.
    inverted = nnf.pad((~mask).float()[None, None], (radius,) * 4, value=1.0)
    grown = nnf.max_pool2d(inverted, 2 * radius + 1, stride=1)[0, 0] > 0
    return ~grown


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return nnf.max_pool2d(mask.float()[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def _near(pixels: torch.Tensor, colour: tuple[int, int, int], tolerance: float) -> torch.Tensor:
    return (pixels - torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)).abs().amax(0) <= tolerance


def _assert_aligned(sample: dict) -> None:
    pixels = _pixels(sample["image"])
    colour_of_class = {index: colour for index, (_, colour, _) in enumerate(REGIONS)}
    assert sample["masks"].flatten(1).any(1).all(), "empty masks must be dropped"
    for mask, label in zip(sample["masks"], sample["labels"].tolist(), strict=True):
        colour = colour_of_class[label]
        inside = _erode(mask, 2)
        # Away from edges (where bilinear resizing blends colours) a mask covers exactly its colour...
        assert _near(pixels, colour, 12)[inside].all(), f"class {label}: mask interior has other colours"
        # ...and its colour appears nowhere outside the mask.
        assert not (_near(pixels, colour, 4) & ~_dilate(mask, 2)).any(), f"class {label}: colour outside its mask"
    union = sample["masks"].any(0)
    assert not (_near(pixels, VOID, 4) & _erode(union, 2)).any(), "void pixels inside a segment"
    assert (sample["sem_seg"][_near(pixels, VOID, 4) & ~_dilate(union, 2)] == 255).all()


@pytest.mark.parametrize("layout", ["panoptic", "instance"])
@pytest.mark.parametrize("lsj", [None, (0.3, 1.6)])
def test_train_transforms_keep_masks_on_their_pixels(painted, layout, lsj):
    transforms = build_train_transforms([48, 64, 96, 128], 200, [56, 72], lsj_scale_range=lsj)
    dataset = _dataset(painted, layout, transforms)
    torch.manual_seed(0)
    sizes, flipped, segment_counts = set(), set(), set()
    for _ in range(16):
        sample = dataset[0]
        _assert_aligned(sample)
        height, width = sample["image"].shape[1:]
        assert height <= 56 and width <= 72 and sample["meta"]["image_size"] == (height, width)
        sizes.add((height, width))
        segment_counts.add(len(sample["labels"]))
        labels = sample["labels"].tolist()
        if 1 in labels and 2 in labels:  # left thing vs right thing: which side is it on now?
            columns = torch.arange(width, dtype=torch.float32)
            left_x = (sample["masks"][labels.index(1)].float().sum(0) * columns).sum() / sample["masks"][labels.index(1)].sum()
            right_x = (sample["masks"][labels.index(2)].float().sum(0) * columns).sum() / sample["masks"][labels.index(2)].sum()
            flipped.add(bool(left_x > right_x))
    assert flipped == {True, False}, "horizontal flip never (or always) happened"
    assert len(segment_counts) > 1, "cropping never dropped a segment"
    if lsj is None:
        assert (56, 72) in sizes  # images larger than the crop are cut to exactly the crop size
    assert len(sizes) > 1


def test_test_transforms_resize_short_side_with_cap(painted):
    dataset = _dataset(painted, "panoptic", build_test_transforms(32, 40))
    sample = dataset[0]
    assert sample["image"].shape[1:] == (27, 40)  # short side 32 would make the long side 48 > 40
    assert sample["meta"]["orig_size"] == (HEIGHT, WIDTH)
    _assert_aligned(sample)
    sample = _dataset(painted, "panoptic", build_test_transforms(128, 128))[0]  # TAO: min == max allowed
    assert sample["image"].shape[1:] == (85, 128)
    sample = _dataset(painted, "panoptic", build_test_transforms(32, 2560, target_size=[48, 48]))[0]
    assert sample["image"].shape[1:] == (32, 32)


def test_normalisation_uses_pixel_mean_and_std(painted):
    mean, std = (0.5, 0.25, 0.1), (0.5, 0.2, 0.3)
    sample = _dataset(painted, "panoptic", build_test_transforms(64, 96, mean, std))[0]
    red = torch.tensor([250, 20, 20]) / 255.0
    expected = (red - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(sample["image"][:, 62, 2], expected, atol=1e-5)


def test_tao_train_min_size_expansion():
    assert tao_train_min_sizes([1024], [1024, 1024]) == list(range(512, 2049, 64))
    assert tao_train_min_sizes([], [640, 512]) == list(range(256, 1025, 64))
    assert tao_train_min_sizes([480, 512, 640], [640, 640]) == [480, 512, 640]


def test_collate_pads_to_multiple_of_32_with_neutral_values(painted):
    dataset = _dataset(painted, "panoptic", build_test_transforms(50, 70))
    small = _dataset(painted, "instance", build_test_transforms(30, 100))
    first, second = dataset[0], small[0]
    assert first["image"].shape[1:] == (47, 70) and second["image"].shape[1:] == (30, 45)
    images, targets, metas = collate([first, second])
    assert images.shape == (2, 3, 64, 96)
    assert [m["image_size"] for m in metas] == [(47, 70), (30, 45)]
    for position, sample in enumerate((first, second)):
        height, width = sample["image"].shape[1:]
        assert torch.equal(images[position, :, :height, :width], sample["image"])
        outside = torch.ones(64, 96, dtype=torch.bool)
        outside[:height, :width] = False
        assert (images[position][:, outside] == 0).all()
        masks, sem_seg = targets[position]["masks"], targets[position]["sem_seg"]
        assert masks.shape[1:] == (64, 96) and masks.dtype == torch.bool
        assert torch.equal(masks[:, :height, :width], sample["masks"]) and not masks[:, outside].any()
        assert (sem_seg[outside] == 255).all() and torch.equal(sem_seg[:height, :width], sample["sem_seg"])
        assert torch.equal(targets[position]["labels"], sample["labels"])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(16, 2048), st.integers(16, 4096))
def test_shortest_edge_size_properties(height, width, short_edge, max_size):
    out_h, out_w = shortest_edge_size(height, width, short_edge, max_size)
    capped = max(height, width) * short_edge / min(height, width) > max_size
    # the long side never passes the cap; uncapped, the short side is exactly the drawn length
    assert max(out_h, out_w) <= max_size
    if not capped:
        assert min(out_h, out_w) == short_edge
    # both sides are the same scale of the input, up to rounding (and at least one pixel)
    scale = max_size / max(height, width) if capped else short_edge / min(height, width)
    assert abs(out_h - height * scale) <= 0.5 or out_h == 1
    assert abs(out_w - width * scale) <= 0.5 or out_w == 1
