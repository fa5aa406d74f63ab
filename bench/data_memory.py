"""Host memory of a training DataLoader: dataset.dataset_type serialized vs default on a large COCO instance json.

The json lists --images images (default 50000) of 32x32 pixels with 2-4 instances each, annotated like
COCO's own files (polygons / RLE, bbox, area; coco_url, license... per image); the image files
repeat 16 synthetic ones, so disk and decoding stay cheap. Each variant runs in a fresh process:
build the train dataset (pycocotools index for default, serialized buffers for serialized), then
--iterations batches from a DataLoader with --workers forked workers. Memory is PSS from
/proc/<pid>/smaps_rollup summed over the main process and its workers (shared pages counted once),
read after the last batch while the workers are alive. A baseline run (default, 16 images) gives the
part every run pays (interpreter, torch, worker start-up), so ``*_over_baseline_mib`` is what the
annotations cost.

Usage: python bench/data_memory.py [--images 50000] [--iterations 200] [--workers 4] [--batch-size 2]
Ends with: bench: data_memory pss_serialized_mib=... pss_default_mib=... ratio=<serialized/default>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BASE_IMAGES = 16
VARIANTS = ("serialized", "default", "baseline")


def pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def write_dataset(out: Path, images: int) -> Path:
    """A COCO instance json of ``images`` entries over BASE_IMAGES synthetic files; returns its spec.yaml."""
    from m2f_trainer.data import synthesize

    spec_path = synthesize("coco", out, num_images=BASE_IMAGES, seed=0, size=(32, 32))
    base = json.loads((out / "annotations" / "instances.json").read_text())
    per_image: dict[int, list[dict]] = {}
    for annotation in base["annotations"]:
        per_image.setdefault(annotation["image_id"], []).append(annotation)
    content = {"images": [], "annotations": [], "categories": base["categories"]}
    for index in range(images):
        source = base["images"][index % BASE_IMAGES]
        image_id = index + 1
        content["images"].append({
            **source, "id": image_id, "license": 1, "date_captured": "2013-11-14 16:28:13",
            "coco_url": f"http://images.cocodataset.org/train2017/{image_id:012d}.jpg",
            "flickr_url": f"http://farm4.staticflickr.com/3153/{image_id:012d}_c4c9a0a2a6_z.jpg",
        })
        for annotation in per_image.get(source["id"], []):
            content["annotations"].append({**annotation, "id": len(content["annotations"]) + 1, "image_id": image_id})
    (out / "annotations" / "big.json").write_text(json.dumps(content))
    spec = yaml.safe_load(spec_path.read_text())
    big = out / "big.yaml"
    spec["dataset"]["train"]["instance_json"] = "annotations/big.json"
    big.write_text(yaml.safe_dump(spec, sort_keys=False))
    return big


def run_variant(spec: Path, variant: str, iterations: int, workers: int, batch_size: int) -> dict:
    """In this (fresh) process: build the train loader of ``variant`` and measure PSS after ``iterations`` batches."""
    import torch

    from m2f_spec import load_spec
    from m2f_trainer.data import M2FDataModule

    torch.set_num_threads(1)
    if variant == "baseline":  # the 16-image json synthesize wrote next to the big one
        spec = spec.with_name("spec.yaml")
    cfg = load_spec(spec, [
        f"dataset.dataset_type={'serialized' if variant == 'serialized' else 'default'}", f"dataset.train.num_workers={workers}",
        f"dataset.train.batch_size={batch_size}", "dataset.pin_memory=false",
    ])
    start = time.perf_counter()
    module = M2FDataModule(cfg)
    dataset = module.dataset("train")
    build_s = time.perf_counter() - start
    built_mib = pss_mib(os.getpid())
    loader = module.train_dataloader()
    start = time.perf_counter()
    batches = iter(loader)
    for _ in range(iterations):
        try:
            next(batches)
        except StopIteration:  # the baseline's epoch is shorter than --iterations
            batches = iter(loader)
            next(batches)
    loop_s = time.perf_counter() - start
    workers_pss = [pss_mib(pid) for pid in child_pids(os.getpid())]
    main_pss = pss_mib(os.getpid())
    return {
        "variant": variant, "images": len(dataset), "build_s": build_s, "loop_s": loop_s, "built_mib": built_mib,
        "main_mib": main_pss, "workers_mib": workers_pss, "total_mib": main_pss + sum(workers_pss),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement (child process)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        result = run_variant(args.spec, args.variant, args.iterations, args.workers, args.batch_size)
        print("result: " + json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="m2f-memory-bench-") as tmp:
        start = time.perf_counter()
        spec = write_dataset(Path(tmp), args.images)
        size_mib = (Path(tmp) / "annotations" / "big.json").stat().st_size / 2**20
        print(f"generated a COCO instance json of {args.images} images ({size_mib:.1f} MiB) in "
              f"{time.perf_counter() - start:.1f} s; {args.iterations} iterations, batch {args.batch_size}, "
              f"{args.workers} workers")
        results = {}
        for variant in VARIANTS:
            # A fresh interpreter per variant: freed Python objects of one would blur the other's numbers.
            command = [sys.executable, __file__, "--variant", variant, "--spec", str(spec),
                       "--iterations", str(args.iterations), "--workers", str(args.workers),
                       "--batch-size", str(args.batch_size)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("result: ")]
            if done.returncode or not lines:
                print(done.stdout + done.stderr, file=sys.stderr)
                return 1
            result = results[variant] = json.loads(lines[-1][len("result: "):])
            workers = " + ".join(f"{w:.0f}" for w in result["workers_mib"])
            print(f"{variant}: PSS {result['total_mib']:.0f} MiB = main {result['main_mib']:.0f} + workers {workers} "
                  f"(main after building the dataset: {result['built_mib']:.0f} MiB; build {result['build_s']:.1f} s, "
                  f"{args.iterations} batches {result['loop_s']:.1f} s)")
    serialized, default = results["serialized"]["total_mib"], results["default"]["total_mib"]
    baseline = results["baseline"]["total_mib"]
    print(f"annotations' share (PSS over the baseline): serialized {serialized - baseline:.0f} MiB, "
          f"default {default - baseline:.0f} MiB")
    print(f"bench: data_memory pss_serialized_mib={serialized:.0f} pss_default_mib={default:.0f} "
          f"serialized_over_baseline_mib={serialized - baseline:.0f} default_over_baseline_mib={default - baseline:.0f} "
          f"images={args.images} workers={args.workers} ratio={serialized / default:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
