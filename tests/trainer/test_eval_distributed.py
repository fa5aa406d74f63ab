"""Two gloo ranks each score half the images; all_gather() gives every rank the single-process result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _panoptic_synth import write_synthetic_panoptic  # noqa: E402

from m2f_trainer.evaluation.formats import read_panoptic_png  # noqa: E402
from m2f_trainer.evaluation.panoptic import PQAccumulator, pq_compute  # noqa: E402
from m2f_trainer.evaluation.semantic import SemanticConfusion  # noqa: E402

RANK_SCRIPT = r"""
import json, sys
import numpy as np
import torch.distributed as dist
from m2f_trainer.evaluation.formats import read_panoptic_png
from m2f_trainer.evaluation.panoptic import PQAccumulator
from m2f_trainer.evaluation.semantic import SemanticConfusion

rank, world, files_json, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", rank=rank, world_size=world)
files = json.loads(files_json)
gt = json.load(open(files["gt_json_file"]))
pred = {a["image_id"]: a for a in json.load(open(files["pred_json_file"]))["annotations"]}
pq, confusion = PQAccumulator(), SemanticConfusion(4)
rng = np.random.default_rng(rank)
for ann in gt["annotations"][rank::world]:
    p = pred[ann["image_id"]]
    pq.update(read_panoptic_png(files["gt_folder"] + "/" + ann["file_name"]), ann["segments_info"],
              read_panoptic_png(files["pred_folder"] + "/" + p["file_name"]), p["segments_info"])
    labels = np.arange(4 * 6).reshape(4, 6) % 4
    confusion.update((labels + rank) % 4, labels)
merged_pq, merged_confusion = pq.all_gather(), confusion.all_gather()
json.dump({"pq": merged_pq.compute(gt["categories"]), "matrix": merged_confusion.matrix.tolist(),
           "num_images": merged_pq.num_images}, open(out, "w"))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_all_gather_across_two_gloo_ranks(tmp_path, repo_root):
    pytest.importorskip("torch")
    files = write_synthetic_panoptic(tmp_path / "data", num_images=6, height=48, width=64, seed=5)
    files_json = json.dumps({k: str(v) for k, v in files.items()})
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(repo_root / "trainer"), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), "2", files_json, str(tmp_path / f"{rank}.json")],
                              env=env) for rank in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    outputs = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert outputs[0] == outputs[1]  # every rank holds the same merged result

    expected = json.loads(json.dumps(pq_compute(**files)))  # JSON turns the int category keys into str
    assert outputs[0]["num_images"] == 6
    for group in ("All", "Things", "Stuff"):
        assert outputs[0]["pq"][group]["n"] == expected[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert outputs[0]["pq"][group][key] == pytest.approx(expected[group][key], rel=1e-12)

    single = SemanticConfusion(4)
    labels = np.arange(24).reshape(4, 6) % 4
    for rank in range(2):
        for _ in range(3):
            single.update((labels + rank) % 4, labels)
    assert outputs[0]["matrix"] == single.matrix.tolist()


def test_not_distributed_gathers_itself(tmp_path):
    files = write_synthetic_panoptic(tmp_path, num_images=2, height=32, width=40, seed=1)
    gt = json.loads(Path(files["gt_json_file"]).read_text())
    pred = json.loads(Path(files["pred_json_file"]).read_text())["annotations"]
    accumulator = PQAccumulator()
    for ann, p in zip(gt["annotations"], pred, strict=True):
        accumulator.update(read_panoptic_png(files["gt_folder"] / ann["file_name"]), ann["segments_info"],
                           read_panoptic_png(files["pred_folder"] / p["file_name"]), p["segments_info"])
    assert accumulator.all_gather().compute(gt["categories"]) == pq_compute(**files)
