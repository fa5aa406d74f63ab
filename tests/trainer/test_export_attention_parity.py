"""The parity gate's masked-attention rule: decisions that two backends cut differently on the knife edge
are replayed, decisions cut differently away from it fail the export.

A backend that rounds differently at the cut is emulated by moving the graph's ``sigmoid < 0.5`` threshold:
onnxruntime then masks the keys whose logit lies between 0 and the moved cut, which PyTorch keeps.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from test_export_onnx import SIZE, make_case

from m2f_trainer.export import onnx_export
from m2f_trainer.export.onnx_export import ExportError, ExportSettings, export_onnx
from m2f_trainer.export.parity import compare_attention
from m2f_trainer.export.wrappers import ExportWrapper
from m2f_trainer.model import load_model_checkpoint

TOLERANCE = 0.05  # knife edge: |logit| <= 4 x 0.05 = 0.2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    _, path = make_case(tmp_path_factory.mktemp("attention_case"), "semantic")
    return path


def _move_attention_cut(path, logit: float) -> int:
    """Replace the 0.5 of every ``Less(sigmoid, 0.5)`` by sigmoid(logit); returns how many were moved."""
    model = onnx.load(str(path))
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute[0].name == "value"})
    moved = 0
    for node in model.graph.node:
        if node.op_type == "Less" and node.input[1] in constants:
            value = onnx.numpy_helper.to_array(constants[node.input[1]])
            if value.size == 1 and float(value) == 0.5:
                name = f"moved_cut_{moved}"
                cut = np.asarray(1 / (1 + math.exp(-logit)), dtype=value.dtype).reshape(value.shape)
                model.graph.initializer.append(onnx.numpy_helper.from_array(cut, name))
                node.input[1] = name
                moved += 1
    onnx.save(model, str(path))
    return moved


def _export_with_cut_at(monkeypatch, checkpoint, tmp_path, logit: float):
    moved = []
    original = onnx_export._optimize_and_check

    def optimize_then_move_the_cut(path):
        original(path)
        moved.append(_move_attention_cut(path, logit))

    monkeypatch.setattr(onnx_export, "_optimize_and_check", optimize_then_move_the_cut)
    model, _ = load_model_checkpoint(checkpoint)
    wrapper = ExportWrapper(model, "semantic", (SIZE, SIZE))
    settings = ExportSettings(onnx_file=tmp_path / "model.onnx", input_size=(SIZE, SIZE), batch_size=-1,
                              parity_tolerance=TOLERANCE)
    return settings, moved, lambda: export_onnx(wrapper, settings)


def test_flips_on_the_knife_edge_are_replayed(monkeypatch, checkpoint, tmp_path):
    settings, moved, export = _export_with_cut_at(monkeypatch, checkpoint, tmp_path, logit=0.1)
    report = export()
    assert moved == [1]  # one masked-attention layer in the tiny decoder
    attention = report.attention
    assert attention.flipped > 0 and 0 < attention.largest_flipped_logit <= 0.1
    assert report.passed
    # The replay is what made it pass: compared directly the outputs are further apart than after it.
    direct = attention.direct_max_abs_diff["pred_masks"]
    assert direct > report.outputs[0].max_abs_diff
    saved = json.loads(settings.parity_file.read_text())
    assert saved["attention"]["replayed"] is True and saved["attention"]["flipped"] == attention.flipped
    # The published graph has exactly TAO's outputs; the decisions were a verification-only output.
    assert [o.name for o in onnx.load(str(settings.onnx_file)).graph.output] == ["pred_masks"]


def test_flips_away_from_the_knife_edge_fail_the_export(monkeypatch, checkpoint, tmp_path):
    settings, _, export = _export_with_cut_at(monkeypatch, checkpoint, tmp_path, logit=1.0)
    with pytest.raises(ExportError, match=r"attention decisions flipped, one at \|logit\| [0-9.]+ > 0\.2\)"):
        export()
    assert not settings.onnx_file.exists()
    assert json.loads(settings.parity_file.read_text())["passed"] is False


@pytest.mark.parametrize(
    ("logits", "ours", "theirs", "tolerance", "flipped", "passed"),
    [
        ([0.3, -0.2], [False, True], [False, True], 1e-3, 0, True),  # same cut
        ([0.003, -0.2], [False, True], [True, True], 1e-3, 1, True),  # within 4 x tolerance of 0
        ([0.005, -0.2], [False, True], [True, True], 1e-3, 1, False),  # beyond it
        ([1e-9, -0.2], [False, True], [True, True], 0.0, 1, False),  # tolerance 0 excuses nothing
    ],
)
def test_compare_attention(logits, ours, theirs, tolerance, flipped, passed):
    parity = compare_attention([torch.tensor([logits])], [torch.tensor([ours])], [np.array([theirs])], tolerance)
    assert (parity.decisions, parity.flipped, parity.passed) == (2, flipped, passed)


@pytest.mark.slow
def test_random_init_swin_t_exports_with_a_dynamic_batch(tmp_path, capsys):
    """The case that used to fail the gate: TAO's Swin-T sample spec, random weights, dynamic batch at 320 px
    (2.3e-3 on pred_masks before the replay, from a handful of flipped decisions)."""
    from pathlib import Path

    from m2f_spec import load_spec
    from m2f_trainer.cli import main
    from m2f_trainer.model import build_model, save_model_checkpoint

    spec = Path(__file__).parents[2] / "examples" / "specs" / "tao_coco_panoptic_swin_tiny.yaml"
    overrides = ["model.backbone.pretrained_weights=null", f"results_dir={tmp_path}"]
    torch.manual_seed(0)
    model = build_model(load_spec(spec, overrides))
    checkpoint = tmp_path / "swin_t_random.pth"
    save_model_checkpoint(checkpoint, model.state_dict(), model.model_config)
    onnx_file = tmp_path / "swin_t.onnx"
    code = main(["export", "-e", str(spec), *overrides, f"export.checkpoint={checkpoint}",
                 f"export.onnx_file={onnx_file}", "export.input_height=320", "export.input_width=320",
                 "export.batch_size=-1", "export.on_cpu=true",
                 "export.opset_version=17"])  # the GridSample graph; the sample itself now asks for opset 12
    assert code == 0, capsys.readouterr().err
    parity = json.loads(onnx_file.with_name(onnx_file.name + ".parity.json").read_text())
    assert parity["passed"] and parity["attention"]["decisions"] == 2 * 100 * 9 * (10 * 10 + 20 * 20 + 40 * 40) // 3
    assert max(o["max_abs_diff"] for o in parity["outputs"].values()) <= 1e-4
