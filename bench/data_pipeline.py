"""Benchmark: training-transform throughput on the real COCO panoptic sample at a 1024 crop.

Ours: m2f_trainer.data (one uint8 segment map through torchvision.transforms.v2, binary masks
built after the crop). Peer, in the same run: the naive per-mask pipeline (PIL decode and resize,
one full-resolution binary mask per segment resized with PIL and cropped / flipped with numpy, numpy
normalisation), as mask-first loaders do. Both draw the same TAO multi-scale sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from m2f_trainer.data.coco_panoptic import CocoPanopticDataset
from m2f_trainer.data.transforms import (
    DEFAULT_PIXEL_MEAN,
    DEFAULT_PIXEL_STD,
    build_train_transforms,
    shortest_edge_size,
    tao_train_min_sizes,
)

REPO = Path(__file__).resolve().parents[1]
CROP = (1024, 1024)
MAX_SIZE = 2560


def default_sample_dir() -> Path:
    override = os.environ.get("M2F_COCO_SAMPLE")
    return Path(override) if override else REPO.parent / "shared" / "data" / "coco_panoptic_sample"


def run_ours(sample: Path, iterations: int) -> float:
    transforms = build_train_transforms(tao_train_min_sizes([CROP[0]], CROP), MAX_SIZE, CROP)
    dataset = CocoPanopticDataset(
        sample / "panoptic_val.json", sample / "panoptic", sample / "images",
        contiguous_id=True, transforms=transforms, drop_crowd=True,
    )
    torch.manual_seed(0)
    dataset[0]  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for index in range(iterations):
        sample_out = dataset[index % len(dataset)]
        assert sample_out["masks"].shape[1:] == sample_out["image"].shape[1:]
    return iterations / (time.perf_counter() - start)


class NaivePipeline:
    """Per-mask PIL / numpy pipeline: the peer."""

    def __init__(self, sample: Path):
        content = json.loads((sample / "panoptic_val.json").read_text())
        images = {i["id"]: i for i in content["images"]}
        order = sorted(c["id"] for c in content["categories"])
        self.items = [
            (sample / "images" / images[a["image_id"]]["file_name"], sample / "panoptic" / a["file_name"],
             [s for s in a["segments_info"] if not s["iscrowd"]])
            for a in content["annotations"]
        ]
        self.class_of = {raw: index for index, raw in enumerate(order)}
        self.sizes = tao_train_min_sizes([CROP[0]], CROP)
        self.mean = np.array(DEFAULT_PIXEL_MEAN, dtype=np.float32)
        self.std = np.array(DEFAULT_PIXEL_STD, dtype=np.float32)

    def __call__(self, index: int, rng: random.Random) -> dict:
        image_path, png_path, segments = self.items[index % len(self.items)]
        image = Image.open(image_path).convert("RGB")
        rgb = np.asarray(Image.open(png_path).convert("RGB"), dtype=np.uint32)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        masks = [ids == s["id"] for s in segments]
        height, width = shortest_edge_size(image.height, image.width, rng.choice(self.sizes), MAX_SIZE)
        image = image.resize((width, height), Image.BILINEAR)
        masks = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((width, height), Image.NEAREST)) for m in masks]
        crop_h, crop_w = min(CROP[0], height), min(CROP[1], width)
        top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
        pixels = np.asarray(image)[top : top + crop_h, left : left + crop_w]
        masks = [m[top : top + crop_h, left : left + crop_w] for m in masks]
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
            masks = [m[:, ::-1] for m in masks]
        normalised = ((pixels.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)
        kept = [(m, s) for m, s in zip(masks, segments, strict=True) if m.any()]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(normalised)),
            "masks": torch.from_numpy(np.stack([m for m, _ in kept]).astype(bool)),
            "labels": torch.tensor([self.class_of[s["category_id"]] for _, s in kept]),
        }


def run_peer(sample: Path, iterations: int) -> float:
    pipeline, rng = NaivePipeline(sample), random.Random(0)
    pipeline(0, rng)
    start = time.perf_counter()
    for index in range(iterations):
        out = pipeline(index, rng)
        assert out["masks"].shape[1:] == out["image"].shape[1:]
    return iterations / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=default_sample_dir())
    parser.add_argument("--repeats", type=int, default=50, help="passes over the 2 sample images")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (PIL uses one)")
    args = parser.parse_args()
    if not (args.sample / "panoptic_val.json").is_file():
        print(f"error: COCO panoptic sample not found at {args.sample} (set M2F_COCO_SAMPLE)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    iterations = 2 * args.repeats
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores, torch threads {torch.get_num_threads()}; {iterations} samples, crop {CROP}")
    ours = run_ours(args.sample, iterations)
    peer = run_peer(args.sample, iterations)
    print(f"ours (v2 segment map): {ours:.2f} images/s")
    print(f"peer (naive per-mask PIL/numpy): {peer:.2f} images/s")
    print(f"bench: data_pipeline images_per_s={ours:.2f} peer_images_per_s={peer:.2f} cores={cores} ratio={ours / peer:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
