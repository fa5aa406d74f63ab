"""Panoptic post-processing time: our postprocess vs HF's Mask2FormerImageProcessor on the same outputs.

COCO-like: 100 queries, 133 classes, mask logits at 96x96 upsampled to HF's fixed 384x384 (ours: padded =
image = original size 384x384, so both do the same resizing work). HF loops over queries with several host
synchronisations each; ours computes the areas of all queries at once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Mask2FormerImageProcessor

from m2f_trainer.model.postprocess import postprocess

SIZE = 384


def make_outputs(batch: int, queries: int, classes: int, device: torch.device) -> dict:
    """Half of the queries confidently predict one of 20 Voronoi regions each (as after training)."""
    generator = torch.Generator().manual_seed(0)
    side = SIZE // 4
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).float()
    pred_masks = torch.randn(batch, queries, side, side, generator=generator) - 6
    pred_logits = torch.randn(batch, queries, classes + 1, generator=generator)
    for image in range(batch):
        centers = torch.rand(20, 2, generator=generator) * side
        region = torch.cdist(grid.view(-1, 2), centers).argmin(1).view(side, side)
        for query in range(0, queries, 2):
            pred_masks[image, query] = torch.where(region == (query // 2) % 20, 6.0, -6.0)
            pred_logits[image, query, torch.randint(0, classes, (1,), generator=generator)] += 9
    return {"pred_logits": pred_logits.to(device), "pred_masks": pred_masks.to(device)}


def measure(step, device: torch.device, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--classes", type=int, default=133)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    outputs = make_outputs(args.batch, args.queries, args.classes, device)
    stuff = set(range(80, args.classes))
    thing_classes = set(range(min(80, args.classes)))
    processor = Mask2FormerImageProcessor()
    hf_outputs = type("Outputs", (), {"class_queries_logits": outputs["pred_logits"],
                                      "masks_queries_logits": outputs["pred_masks"]})()
    sizes = [(SIZE, SIZE)] * args.batch

    def ours():
        results = postprocess(outputs, sizes, sizes, "panoptic", args.classes, object_mask_threshold=0.8,
                              overlap_threshold=0.8, thing_classes=thing_classes, padded_size=(SIZE, SIZE))
        return sum(len(r["panoptic_seg"][1]) for r in results)

    def theirs():
        results = processor.post_process_panoptic_segmentation(
            hf_outputs, threshold=0.8, overlap_mask_area_threshold=0.8, label_ids_to_fuse=stuff)
        return sum(len(r["segments_info"]) for r in results)

    print(f"segments per batch: ours {ours()}, hf {theirs()} (HF counts repeated fused entries)")
    our_ms, their_ms = [], []
    for _ in range(3):  # interleaved so that machine noise hits both alike
        our_ms.append(measure(ours, device, args.repeats))
        their_ms.append(measure(theirs, device, args.repeats))
    our_time, their_time = min(our_ms), min(their_ms)
    print(f"device={device} batch={args.batch} queries={args.queries} classes={args.classes} size={SIZE}")
    print(f"bench: postprocess_panoptic time_ms={our_time:.2f} peer_time_ms={their_time:.2f} "
          f"ratio={our_time / their_time:.3f}")


if __name__ == "__main__":
    main()
