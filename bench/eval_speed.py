"""PQ throughput: m2f's pq_compute vs panopticapi's algorithm (one process) on the same synthetic 640x480 data.

Usage: python bench/eval_speed.py [--images 200] [--repeats 3] [--workers N]
Ends with: bench: eval_speed images_per_s=... peer_images_per_s=... cores=N ratio=<ours/peer>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "trainer"), str(REPO / "tests" / "trainer")]

from _panoptic_synth import write_synthetic_panoptic  # noqa: E402  (shared with the tests)
from _panopticapi_reference import reference_pq_compute  # noqa: E402  (panopticapi's algorithm)

from m2f_trainer.evaluation.panoptic import available_cores, default_num_workers, pq_compute  # noqa: E402


def best_times(runs: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Best wall and CPU time (this process only) of each run, interleaved round by round so that
    load changes on a shared machine hit all runs alike."""
    best = dict.fromkeys(runs, float("inf"))
    best_cpu = dict.fromkeys(runs, float("inf"))
    results = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
            best_cpu[name] = min(best_cpu[name], time.process_time() - start_cpu)
    return best, best_cpu, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="worker processes for ours (default: one per core)")
    args = parser.parse_args()
    cores = available_cores()
    workers = args.workers or default_num_workers(args.images)

    with tempfile.TemporaryDirectory(prefix="m2f-eval-bench-") as tmp:
        start = time.perf_counter()
        files = write_synthetic_panoptic(Path(tmp), args.images, height=480, width=640, seed=0)
        print(f"generated {args.images} synthetic 640x480 GT + perturbed predictions in "
              f"{time.perf_counter() - start:.1f} s (seed 0)")
        best, cpu, results = best_times({
            "peer": lambda: reference_pq_compute(**files),
            "single": lambda: pq_compute(**files, num_workers=1),
            "ours": lambda: pq_compute(**files, num_workers=workers),
        }, args.repeats)
    peer_s, single_s, ours_s = best["peer"], best["single"], best["ours"]
    peer, single, ours = results["peer"], results["single"], results["ours"]

    if not (ours == single == peer):
        print("error: results differ from panopticapi's algorithm", file=sys.stderr)
        return 1
    peer_ips, single_ips, ours_ips = (args.images / t for t in (peer_s, single_s, ours_s))
    print(f"PQ {100 * ours['All']['pq']:.2f}  SQ {100 * ours['All']['sq']:.2f}  RQ {100 * ours['All']['rq']:.2f}  "
          f"(identical to the peer's)")
    print(f"cores: {cores}  best of {args.repeats} runs")
    per_image = {name: 1000 * cpu[name] / args.images for name in ("peer", "single")}
    print(f"peer  panopticapi algorithm, 1 process : {peer_ips:8.1f} images/s  "
          f"(CPU {per_image['peer']:.2f} ms/image)")
    print(f"ours  pq_compute, in-process           : {single_ips:8.1f} images/s  ({single_ips / peer_ips:.2f}x; "
          f"CPU {per_image['single']:.2f} ms/image)")
    print(f"ours  pq_compute, {workers:2d} worker processes : {ours_ips:8.1f} images/s  ({ours_ips / peer_ips:.2f}x)")
    print(f"bench: eval_speed images_per_s={ours_ips:.1f} peer_images_per_s={peer_ips:.1f} "
          f"in_process_images_per_s={single_ips:.1f} cores={cores} ratio={ours_ips / peer_ips:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
