"""CPU inference: PyTorch eager vs onnxruntime on the same exported graph (model + in-graph post-processing).

Both sides run the export wrapper of one model at the export size: eager under torch.inference_mode with
torch's intra-op threads = available cores; onnxruntime through OnnxRunner (graph optimisations ALL,
intra-op threads = available cores). Latency is the median of --iters timed runs after --warmup runs, per
batch size; throughput is images per second at that median. The final line's ratio is onnxruntime over
eager latency at batch 1 (lower is better for onnxruntime; the target is <= 0.7).

Default model: the synthetic panoptic spec's tiny Mask2Former (timm resnet18 backbone, 16 queries) at
256x256; --spec / --height / --width / --mode choose another (e.g. examples/specs/*.yaml at 544x960).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from m2f_spec import load_spec
from m2f_trainer.data.synth import synthesize
from m2f_trainer.export.onnx_export import ExportSettings, export_onnx
from m2f_trainer.export.onnx_runner import OnnxRunner, available_cores
from m2f_trainer.export.wrappers import ExportWrapper
from m2f_trainer.model import build_model


def timed(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of one call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, help="experiment spec (default: the synthetic panoptic spec)")
    parser.add_argument("--mode", choices=("panoptic", "instance", "semantic"), help="default: the spec's")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    cores = available_cores()
    torch.set_num_threads(cores)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.spec or synthesize("coco_panoptic", Path(tmp) / "synth", num_images=1, size=(64, 64))
        cfg = load_spec(spec)
        mode = args.mode or cfg.model.mode
        torch.manual_seed(0)
        size = (args.height, args.width)
        wrapper = ExportWrapper(build_model(cfg).eval(), mode, size, cfg.model.test_topk_per_image).eval()
        onnx_file = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(wrapper, ExportSettings(onnx_file, size, batch_size=-1))
        print(f"exported {mode} model at {args.height}x{args.width} in {time.perf_counter() - start:.1f} s "
              f"(parity gate passed); {cores} cores")
        runner = OnnxRunner(onnx_file, intra_op_threads=cores)

        results = {}
        generator = torch.Generator().manual_seed(0)
        for batch in args.batches:
            images = torch.randn(batch, 3, *size, generator=generator)
            array = images.numpy()

            def eager(images=images):
                with torch.inference_mode():
                    wrapper(images)

            def ort(array=array):
                runner(array)

            eager_ms = timed(eager, args.warmup, args.iters)
            ort_ms = timed(ort, args.warmup, args.iters)
            results[batch] = (eager_ms, ort_ms)
            print(f"batch {batch}: eager {eager_ms:8.1f} ms ({batch / eager_ms * 1e3:6.1f} img/s)   "
                  f"onnxruntime {ort_ms:8.1f} ms ({batch / ort_ms * 1e3:6.1f} img/s)   ratio {ort_ms / eager_ms:.2f}")

    first, last = args.batches[0], args.batches[-1]
    eager_ms, ort_ms = results[first]
    eager_last, ort_last = results[last]
    print(
        f"bench: inference eager_ms={eager_ms:.1f} ort_ms={ort_ms:.1f} "
        f"eager_b{last}_ms={eager_last:.1f} ort_b{last}_ms={ort_last:.1f} "
        f"eager_b{last}_ips={last / eager_last * 1e3:.1f} ort_b{last}_ips={last / ort_last * 1e3:.1f} "
        f"ratio={ort_ms / eager_ms:.2f}"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
