"""TAO's documented sample spec, unchanged on disk, runs validate, train, evaluate, inference, export (opset 12) and
quantize; the command lines override data paths only, plus the sizes (and the fp16 precision) a 2-core CPU run
can afford."""

from __future__ import annotations

import json

import onnx
import pytest

from m2f_trainer.cli import main
from m2f_trainer.data import synthesize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(repo_root, tmp_path_factory):
    spec = repo_root / "examples" / "specs" / "tao_coco_panoptic_swin_tiny.yaml"
    data = synthesize("coco_panoptic", tmp_path_factory.mktemp("tao") / "data", num_images=4, size=64).parent
    results = data.parent / "results"
    paths = [
        f"results_dir={results}", f"data.label_map={data / 'label_map.json'}",
        *(f"data.{split}.{key}={data / value}" for split in ("train", "val")
          for key, value in (("panoptic_json", "annotations/panoptic.json"), ("panoptic_dir", "panoptic"),
                             ("img_dir", "images"))),
        f"data.test.img_dir={data / 'images'}", f"data.quant_calibration_dataset.images_dir={data / 'images'}",
        "model.backbone.pretrained_weights=null",  # no download here: the Swin-T starts from random weights
        f"quantize.model_path={results / 'export' / 'model.onnx'}", f"quantize.results_dir={results / 'quantize'}",
    ]
    cpu_budget = [
        "data.augmentation.train_min_size=[64]", "data.augmentation.train_max_size=128",
        "data.augmentation.train_crop_size=[64, 64]", "data.augmentation.test_min_size=64",
        "data.augmentation.test_max_size=128", "data.val.target_size=[64, 64]", "data.train.batch_size=2",
        "data.train.num_workers=0", "data.val.num_workers=0", "train.num_epochs=1", "train.iters_per_epoch=1",
        "train.validation_interval=1", "train.metrics_port=0", "export.input_height=64", "export.input_width=64",
        "train.precision=fp32",  # the sample's fp16 needs a GPU (exit 2 says so on a CPU)
        "data.quant_calibration_dataset.max_images=2",  # each calibration image is a pass over Swin-T's graph
    ]

    def m2f(task: str, *extra: str) -> int:
        return main([task, "-e", str(spec), *paths, *cpu_budget, *extra])

    return m2f, results


def test_every_task_runs_from_the_tao_sample(run, capsys):
    m2f, results = run
    assert m2f("validate") == 0
    printed = capsys.readouterr().out
    assert "opset_version: 12" in printed and "backend: modelopt.onnx" in printed

    assert m2f("train") == 0
    checkpoint = results / "train" / "mask2former_model_latest.pth"
    assert checkpoint.is_file()
    assert m2f("evaluate", f"evaluate.checkpoint={checkpoint}") == 0
    assert "PQ" in json.loads((results / "evaluate" / "metrics.json").read_text())
    assert m2f("inference", f"inference.checkpoint={checkpoint}") == 0
    assert len(list((results / "inference" / "overlays").glob("*.png"))) == 4

    onnx_file = results / "export" / "model.onnx"
    assert m2f("export", f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}") == 0
    model = onnx.load(str(onnx_file), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [12]
    assert "GridSample" not in {node.op_type for node in model.graph.node}

    assert m2f("quantize") == 0
    int8 = results / "quantize" / "model.int8.onnx"
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(int8)).graph.node}
