"""Training step of our Mask2Former vs HF transformers' port: forward + backward + AdamW, same architecture.

Swin-T backbone, 384x384, batch 2, 100 queries, 133 classes, 9 decoder layers (10 prediction sets). Ours runs
with activation checkpointing (the issue's target configuration): `ours_ckpt` with the default selective policy,
`ours_full` recomputing every layer, `ours` without; HF with its defaults. Both get the same
surrogate loss over all prediction sets (cross-entropy on random labels + BCE on random masks), so that the
model, not the matcher, is measured (bench/criterion_step.py measures the criterion). Each variant runs in its
own subprocess so that peak memory (CUDA: max_memory_allocated; CPU: peak RSS growth, see _run_worker) is its own.
Usage: python bench/model_step.py [--device cuda|cpu] [--precision fp32|bf16] [--iters N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SWIN_T = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7}
# HF's Mask2FormerForUniversalSegmentation refuses gradient_checkpointing_enable(), so HF runs without it.
VARIANTS = ("ours_ckpt", "ours_full", "ours", "hf")


def build(variant: str, args):
    if variant.startswith("ours"):
        sys.path.insert(0, str(REPO / "trainer"))
        from m2f_trainer.model import build_model_from_config

        model = build_model_from_config({
            "backbone": {"kind": "swin", **SWIN_T, "pretrain_img_size": args.size, "drop_path_rate": 0.3},
            "num_classes": args.classes, "num_queries": args.queries,
        })
        model.set_activation_checkpoint(variant != "ours", "full" if variant == "ours_full" else "selective")

        def step(images):
            out = model(images)
            return [(out["pred_logits"], out["pred_masks"])] + [
                (a["pred_logits"], a["pred_masks"]) for a in out["aux_outputs"]
            ]

        return model, step

    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=args.size,
        drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(backbone_config=swin, num_labels=args.classes, num_queries=args.queries)
    model = Mask2FormerForUniversalSegmentation(config)

    def step(images):
        out = model(pixel_values=images, output_auxiliary_logits=True)
        sets = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in out.auxiliary_logits]
        return sets + [(out.class_queries_logits, out.masks_queries_logits)]

    return model, step


def surrogate_loss(sets, labels, mask_targets):
    loss = 0.0
    for logits, masks in sets:
        loss = loss + F.cross_entropy(logits.float().flatten(0, 1), labels)
        loss = loss + F.binary_cross_entropy_with_logits(masks.float(), mask_targets)
    return loss


def worker(variant: str, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, forward = build(variant, args)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.classes + 1, (args.batch * args.queries,), device=device)
    mask_targets = (torch.rand(args.batch, args.queries, args.size // 4, args.size // 4, device=device) > 0.5).float()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def train_step():
        with autocast:
            loss = surrogate_loss(forward(images), labels, mask_targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.warmup):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        loss = train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux; growth over the model build approximates the step's peak
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"variant": variant, "time_ms": 1000 * statistics.median(times), "peak_mb": peak_mb,
            "loss": float(loss), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _run_worker(variant: str, args, iters: int | None = None, env: dict | None = None) -> dict | None:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant]
    for name in ("device", "precision", "size", "batch", "queries", "classes", "iters", "warmup"):
        value = iters if name == "iters" and iters is not None else getattr(args, name)
        command += [f"--{name}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--classes", type=int, default=133)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.iters = args.iters or (20 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0

    results = {}
    for variant in args.variants.split(","):
        result = _run_worker(variant, args)
        if result is None:
            return 1
        if not cuda:
            # glibc keeps freed blocks for reuse, so RSS overstates what is live. A fixed mmap threshold maps
            # every large tensor on its own and unmaps it when freed, which makes peak RSS the live peak; it
            # also page-faults every allocation, so only the memory of this second run is used.
            memory = _run_worker(variant, args, iters=1, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
            if memory is None:
                return 1
            result["peak_mb"] = memory["peak_mb"]
        results[variant] = r = result
        print(f"{variant:10s} time {r['time_ms']:9.1f} ms  peak {r['peak_mb']:9.1f} MiB  "
              f"params {r['params_m']:.1f}M  loss {r['loss']:.3f}")

    ours, peer = results.get("ours_ckpt"), results.get("hf")
    if not ours or not peer:
        return 0
    time_ratio = ours["time_ms"] / peer["time_ms"]
    mem_ratio = ours["peak_mb"] / peer["peak_mb"] if peer["peak_mb"] > 0 else float("nan")
    extra = ""
    if "ours_full" in results:
        extra += f" full_time_ratio={results['ours_full']['time_ms'] / peer['time_ms']:.3f}"
        extra += f" full_mem_ratio={results['ours_full']['peak_mb'] / peer['peak_mb']:.3f}"
    if "ours" in results:
        extra += f" nockpt_time_ratio={results['ours']['time_ms'] / peer['time_ms']:.3f}"
        extra += f" nockpt_mem_ratio={results['ours']['peak_mb'] / peer['peak_mb']:.3f}"
    print(
        f"bench: model_step device={args.device} precision={args.precision} time_ms={ours['time_ms']:.1f} "
        f"hf_time_ms={peer['time_ms']:.1f} peak_mb={ours['peak_mb']:.0f} hf_peak_mb={peer['peak_mb']:.0f} "
        f"mem_ratio={mem_ratio:.3f}{extra} ratio={time_ratio:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
