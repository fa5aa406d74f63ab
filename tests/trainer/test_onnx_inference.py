"""`m2f evaluate` / `m2f inference` with `onnx_file`: the same predictions and metrics as the checkpoint they came
from, on the synthetic set of every mode; plus the runner's batching and size checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_backend import assert_instances_match, assert_label_maps_match, assert_panoptic_dirs_match  # noqa: E402
from test_export_onnx import SIZE, make_case  # noqa: E402

from m2f_trainer.cli import main  # noqa: E402
from m2f_trainer.errors import UserError  # noqa: E402
from m2f_trainer.export.onnx_export import ExportSettings, export_onnx  # noqa: E402
from m2f_trainer.export.onnx_runner import ExportedModelRunner, OnnxRunner, predictions_from_exported  # noqa: E402
from m2f_trainer.export.wrappers import OUTPUT_NAMES, ExportWrapper  # noqa: E402
from m2f_trainer.model import load_model_checkpoint  # noqa: E402

TINY = ["model.mask_former.dec_layers=2"]
METRIC_TOL = 1e-2
FIT_STEPS = 10  # enough for every mode's metrics to be above zero (non-vacuous equality) at default thresholds


def _export(root: Path, mode: str, batch_size: int = -1, fit_steps: int = 0) -> tuple[Path, Path, Path]:
    spec, checkpoint = make_case(root, mode, fit_steps)
    model, _ = load_model_checkpoint(checkpoint)
    onnx_file = root / f"{mode}_{batch_size}.onnx"
    export_onnx(ExportWrapper(model, mode, (SIZE, SIZE)), ExportSettings(onnx_file, (SIZE, SIZE), batch_size))
    return spec, checkpoint, onnx_file


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path, Path]]:
    root = tmp_path_factory.mktemp("onnx_inference")
    return {mode: _export(root, mode, fit_steps=FIT_STEPS) for mode in OUTPUT_NAMES}


def _run(command: str, spec: Path, model_field: str, results: Path, *extra: str) -> None:
    code = main([command, "-e", str(spec), model_field, f"{command}.results_dir={results}", *TINY, *extra])
    assert code == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(OUTPUT_NAMES))
def test_evaluate_onnx_gives_the_checkpoints_metrics(exported, tmp_path, mode):
    spec, checkpoint, onnx_file = exported[mode]
    _run("evaluate", spec, f"evaluate.checkpoint={checkpoint}", tmp_path / "torch")
    _run("evaluate", spec, f"evaluate.onnx_file={onnx_file}", tmp_path / "onnx")
    ours = _flat(json.loads((tmp_path / "onnx" / "metrics.json").read_text()))
    theirs = _flat(json.loads((tmp_path / "torch" / "metrics.json").read_text()))
    assert ours.keys() == theirs.keys() and len(theirs) > 3
    # Metrics are computed from predictions that may differ by a few boundary pixels and by tied-score swaps
    # (cross_backend): one flipped pixel moves a small segment's IoU by ~5e-3 on these 64x64 images, so
    # metrics agree within 1e-2 (one point); counts and names exactly.
    for name, value in theirs.items():
        assert ours[name] == (pytest.approx(value, abs=METRIC_TOL) if isinstance(value, float) else value), name
    primary = {"panoptic": "PQ", "instance": "AP", "semantic": "mIoU"}[mode]
    assert theirs[primary] > 0  # the fitted model gets something right: the comparison is not vacuous


def _flat(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(OUTPUT_NAMES))
def test_inference_onnx_writes_the_checkpoints_predictions(exported, tmp_path, mode):
    """Same images, categories and masks; scores within 1e-4 (see cross_backend for what rounding may move)."""
    spec, checkpoint, onnx_file = exported[mode]
    _run("inference", spec, f"inference.checkpoint={checkpoint}", tmp_path / "torch")
    _run("inference", spec, f"inference.onnx_file={onnx_file}", tmp_path / "onnx")
    if mode == "panoptic":
        assert assert_panoptic_dirs_match(tmp_path / "onnx" / "panoptic", tmp_path / "torch" / "panoptic") > 0
    elif mode == "instance":
        ours, theirs = (json.loads((tmp_path / side / "instance" / "instances.json").read_text())
                        for side in ("onnx", "torch"))
        assert len(theirs) > 0 and {e["image_id"] for e in ours} == {e["image_id"] for e in theirs}
        assert_instances_match(ours, theirs)
    else:
        pngs = sorted((tmp_path / "torch" / "semantic").glob("*.png"))
        assert len(pngs) == 2
        for png in pngs:
            assert_label_maps_match(np.asarray(Image.open(tmp_path / "onnx" / "semantic" / png.name)),
                                    np.asarray(Image.open(png)), png.name)
    assert sorted(p.name for p in (tmp_path / "onnx" / "overlays").iterdir()) == ["000001.png", "000002.png"]


def test_static_batch_graph_takes_any_batch_and_smaller_images(tmp_path):
    """A batch-2 graph runs batches of 1 and 3 (filled / split) and pads 32x48 images to its 64x64 input."""
    _, checkpoint, onnx_file = _export(tmp_path, "semantic", batch_size=2)
    runner = ExportedModelRunner(OnnxRunner(onnx_file))
    assert (runner.input_size, runner.batch_size, runner.mode) == ((SIZE, SIZE), 2, "semantic")
    model, _ = load_model_checkpoint(checkpoint)
    wrapper = ExportWrapper(model.eval(), "semantic", (SIZE, SIZE))
    images = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    outputs = runner(images)
    padded = torch.nn.functional.pad(images, (0, SIZE - 48, 0, SIZE - 32))
    with torch.no_grad():
        (expected,) = wrapper(padded)
    assert outputs["pred_masks"].shape == (3, 5, SIZE, SIZE)
    # onnxruntime vs PyTorch on fresh inputs: the export's parity tolerance (1e-3), which a masked-attention
    # decision flipped by rounding may use up (the gate replays those; this direct comparison cannot).
    torch.testing.assert_close(outputs["pred_masks"], expected, atol=1e-3, rtol=0)
    one = runner(images[:1])["pred_masks"]
    torch.testing.assert_close(one, expected[:1], atol=1e-3, rtol=0)
    with pytest.raises(UserError, match="96x64 images does not fit the exported input 64x64"):
        runner(torch.zeros(1, 3, 96, 64))


def test_exported_outputs_of_another_mode_are_rejected():
    outputs = {"pred_masks": torch.zeros(1, 5, 64, 64)}
    with pytest.raises(UserError, match="are those of semantic mode, but model.mode is panoptic"):
        predictions_from_exported(outputs, [(64, 64)], [(64, 64)], "panoptic", torch.zeros(5, dtype=torch.bool))


def test_panoptic_at_another_size_resizes_mask_logits_like_postprocess():
    """Exported probabilities resized to the original size match postprocess on the logits they came from."""
    from m2f_trainer.export.wrappers import panoptic_outputs
    from m2f_trainer.model.postprocess import postprocess

    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(1, 6, 4, generator=generator) * 4
    mask_logits = torch.randn(1, 6, 16, 16, generator=generator) * 3
    upsampled = torch.nn.functional.interpolate(mask_logits, size=(64, 64), mode="bilinear", align_corners=False)
    exported = {k: v for k, v in panoptic_outputs(class_logits, upsampled).items() if not k.startswith("_")}
    is_thing = torch.tensor([True, False, True])
    ours = predictions_from_exported(exported, [(48, 64)], [(37, 50)], "panoptic", is_thing, 0.3, 0.5)
    theirs = postprocess({"pred_logits": class_logits, "pred_masks": mask_logits}, [(48, 64)], [(37, 50)],
                         "panoptic", 3, object_mask_threshold=0.3, overlap_threshold=0.5, thing_classes=is_thing,
                         padded_size=(64, 64))
    (seg, info), (ref_seg, ref_info) = ours[0]["panoptic_seg"], theirs[0]["panoptic_seg"]
    assert info and [s["category_id"] for s in info] == [s["category_id"] for s in ref_info]
    assert (seg != ref_seg).float().mean() < 0.002  # float32 logit round trip: at most a few boundary pixels


@pytest.mark.parametrize("command", ["inference", "evaluate"])
def test_unreadable_onnx_file_names_the_field(tmp_path, capsys, command):
    from m2f_trainer.data.synth import synthesize

    spec = synthesize("coco_panoptic", tmp_path / "data", num_images=1, size=(SIZE, SIZE))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    for path, reason in ((tmp_path / "missing.onnx", "ONNX file not found"), (garbage, "onnxruntime cannot load it")):
        code = main([command, "-e", str(spec), f"{command}.onnx_file={path}", f"{command}.results_dir={tmp_path / 'out'}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert err[-1].startswith(f"error: {command}.onnx_file: ") and reason in err[-1] and "Traceback" not in err
