"""Matching + losses (forward and backward) of our SetCriterion vs HF transformers' Mask2FormerLoss, same inputs.

COCO-panoptic-like step: batch 2, 100 queries, 133 classes, 10 prediction sets (final + 9 aux), mask logits at
1/4 of a 384x384 input, 15 ground-truth segments per image, 12544 points. Both sides get the original's
weights (class 2, mask 5, dice 5, no-object 0.1) and their native target format (ours bool, HF float).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from m2f_trainer.model.criterion import SetCriterion

WEIGHTS = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def make_inputs(args, device):
    generator = torch.Generator().manual_seed(0)
    mask_size = args.image_size // 4

    def prediction_set():
        logits = torch.randn(args.batch, args.queries, args.classes + 1, generator=generator)
        masks = torch.randn(args.batch, args.queries, mask_size, mask_size, generator=generator)
        return {"pred_logits": logits.to(device).requires_grad_(), "pred_masks": masks.to(device).requires_grad_()}

    outputs = prediction_set()
    outputs["aux_outputs"] = [prediction_set() for _ in range(args.aux)]
    targets = []
    for _ in range(args.batch):
        # Disjoint segments: each pixel of a coarse grid belongs to one of `segments` ids.
        segment_map = torch.randint(0, args.segments, (args.image_size // 16,) * 2, generator=generator)
        segment_map = segment_map.repeat_interleave(16, 0).repeat_interleave(16, 1)
        masks = segment_map[None] == torch.arange(args.segments)[:, None, None]
        labels = torch.randint(0, args.classes, (args.segments,), generator=generator)
        targets.append({"labels": labels.to(device), "masks": masks.to(device)})
    return outputs, targets


def leaves(outputs):
    sets = [outputs, *outputs["aux_outputs"]]
    return [t for s in sets for t in (s["pred_logits"], s["pred_masks"])]


def timed(step, device, warmup: int, iterations: int) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times) * 1000, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--classes", type=int, default=133)
    parser.add_argument("--segments", type=int, default=15)
    parser.add_argument("--aux", type=int, default=9)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    outputs, targets = make_inputs(args, device)
    hf_mask_labels = [t["masks"].float() for t in targets]
    hf_class_labels = [t["labels"] for t in targets]
    hf_aux = [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
              for a in outputs["aux_outputs"]]

    ours = SetCriterion(args.classes).to(device)
    config = Mask2FormerConfig(num_labels=args.classes, class_weight=2.0, mask_weight=5.0, dice_weight=5.0)
    theirs = Mask2FormerLoss(config, weight_dict={}).to(device)

    def our_step():
        loss = sum(ours(outputs, targets).values())
        torch.autograd.grad(loss, leaves(outputs))

    def their_step():
        raw = theirs(outputs["pred_masks"], outputs["pred_logits"], hf_mask_labels, hf_class_labels, hf_aux)
        loss = sum(value * WEIGHTS[_base_name(key)] for key, value in raw.items())
        torch.autograd.grad(loss, leaves(outputs))

    # Same seed, same random points (both draw them in the original's order): the terms must agree.
    torch.manual_seed(0)
    our_terms = ours(outputs, targets)
    torch.manual_seed(0)
    their_terms = theirs(outputs["pred_masks"], outputs["pred_logits"], hf_mask_labels, hf_class_labels, hf_aux)
    their_weighted = {key.replace("loss_cross_entropy", "loss_ce"): value * WEIGHTS[_base_name(key)]
                      for key, value in their_terms.items()}
    difference = max(abs(our_terms[key] - their_weighted[key]).item() for key in our_terms)
    print(f"parity: {len(our_terms)} loss terms, max |ours - hf| = {difference:.2e}")

    # Interleave the two measurements so that machine noise hits both alike.
    our_ms, their_ms, our_peak, their_peak = [], [], 0.0, 0.0
    for _ in range(3):
        ms, peak = timed(our_step, device, args.warmup, args.iterations)
        our_ms.append(ms)
        our_peak = max(our_peak, peak)
        ms, peak = timed(their_step, device, args.warmup, args.iterations)
        their_ms.append(ms)
        their_peak = max(their_peak, peak)
    our_time, their_time = min(our_ms), min(their_ms)
    print(f"device={device} batch={args.batch} queries={args.queries} classes={args.classes} "
          f"segments={args.segments} prediction_sets={args.aux + 1} image={args.image_size}")
    memory = ""
    if device.type == "cuda":
        memory = f" peak_mib={our_peak:.0f} peer_peak_mib={their_peak:.0f} mem_ratio={our_peak / their_peak:.3f}"
    print(f"bench: criterion_step time_ms={our_time:.2f} peer_time_ms={their_time:.2f}{memory} "
          f"ratio={our_time / their_time:.3f}")


def _base_name(key: str) -> str:
    name = key.rsplit("_", 1)[0] if key[-1].isdigit() else key
    return {"loss_cross_entropy": "loss_ce"}.get(name, name)


if __name__ == "__main__":
    main()
