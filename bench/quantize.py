"""INT8 (QDQ, `m2f quantize` backend modelopt.onnx) vs FP32 ONNX of a model fine-tuned on the two real COCO images.

The model is the overfit recipe of tests/trainer/test_train_overfit_coco.py (resnet18, 64 queries, 250 steps at
full resolution; ~6 min on 2 cores, or pass --checkpoint). Both graphs take 640x640 inputs with a dynamic batch;
the INT8 one is calibrated on the two images. Reported: file size, onnxruntime CPU latency (median of
--iterations runs at batch 1 and 4, the two models taking turns, --threads intra-op threads), and PQ of each
through `m2f evaluate`.
The closing line's ratio is INT8 / FP32 latency at batch 1 (target <= 0.6; PQ drop target <= 1 point).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "coco_panoptic_sample"
sys.path.insert(0, str(REPO / "tests" / "trainer"))

from test_train_overfit_coco import overfit_spec  # noqa: E402  (the recipe lives with its test)

from m2f_trainer.cli import main as m2f  # noqa: E402

INPUT = 640


def run(*argv: str) -> None:
    if m2f(list(argv)) != 0:
        raise SystemExit(f"bench: `m2f {' '.join(argv[:1])}` failed")


def latencies(paths: dict[str, Path], batch: int, threads: int, iterations: int) -> dict[str, float]:
    """Median ms per model; the models take turns each iteration, so a busy machine slows both alike."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in paths.items()}
    images = np.random.default_rng(0).normal(size=(batch, 3, INPUT, INPUT)).astype(np.float32)
    feeds = {name: {s.get_inputs()[0].name: images} for name, s in sessions.items()}
    for name, session in sessions.items():
        session.run(None, feeds[name])  # warm-up: allocations and kernel selection
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(iterations):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, help="an overfit checkpoint (skips the ~6 min training)")
    parser.add_argument("--work-dir", type=Path, help="keep the artifacts here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        print(f"bench: skipped, {SAMPLE} is absent (the two real COCO images)")
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "overfit.yaml"
    raw = overfit_spec(SAMPLE, work / "results")
    raw["dataset"]["test"] = {"img_dir": str(SAMPLE / "images"), "batch_size": 1, "num_workers": 0}
    spec.write_text(yaml.safe_dump(raw))

    checkpoint = args.checkpoint
    if checkpoint is None:
        print("bench: training the overfit model (250 steps)...", flush=True)
        run("train", "-e", str(spec))
        checkpoint = work / "results" / "train" / "mask2former_model_latest.pth"
    run("export", "-e", str(spec), f"export.checkpoint={checkpoint}", f"export.input_height={INPUT}",
        f"export.input_width={INPUT}", f"export.onnx_file={work / 'fp32.onnx'}")
    run("quantize", "-e", str(spec), f"quantize.model_path={work / 'fp32.onnx'}", "quantize.backend=modelopt.onnx",
        "quantize.mode=static_ptq", f"quantize.results_dir={work / 'quantize'}",
        f"dataset.quant_calibration_dataset.images_dir={SAMPLE / 'images'}")
    models = {"fp32": work / "fp32.onnx", "int8": work / "quantize" / "fp32.int8.onnx"}

    rows = {}
    for name, path in models.items():
        out = work / f"evaluate-{name}"
        run("evaluate", "-e", str(spec), f"evaluate.onnx_file={path}", f"evaluate.results_dir={out}")
        pq = json.loads((out / "metrics.json").read_text())["PQ"]
        rows[name] = {"size_mb": path.stat().st_size / 2**20, "pq": 100 * pq}
    for batch in (1, 4):
        for name, ms in latencies(models, batch, args.threads, args.iterations).items():
            rows[name][f"b{batch}_ms"] = ms
    print(f"{'model':<6} {'size MB':>8} {'PQ':>6} {'batch 1 ms':>11} {'batch 4 ms':>11}")
    for name, row in rows.items():
        print(f"{name:<6} {row['size_mb']:>8.1f} {row['pq']:>6.2f} {row['b1_ms']:>11.1f} {row['b4_ms']:>11.1f}")
    fp32, int8 = rows["fp32"], rows["int8"]
    print(f"bench: quantize int8_pq={int8['pq']:.2f} fp32_pq={fp32['pq']:.2f} pq_drop={fp32['pq'] - int8['pq']:.2f} "
          f"size_ratio={int8['size_mb'] / fp32['size_mb']:.3f} b4_ratio={int8['b4_ms'] / fp32['b4_ms']:.3f} "
          f"ratio={int8['b1_ms'] / fp32['b1_ms']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
