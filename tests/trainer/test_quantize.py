"""`m2f quantize`: a torchao INT8 checkpoint that evaluate / inference load, and an INT8 QDQ ONNX calibrated on images."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from m2f_spec import load_spec
from m2f_trainer.cli import main
from m2f_trainer.data import synthesize
from m2f_trainer.model import build_model, load_model_checkpoint, save_model_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset and an (untrained, seeded) tiny checkpoint of its spec."""
    root = tmp_path_factory.mktemp("quantize")
    spec = synthesize("coco_panoptic", root / "data", num_images=3, size=64)
    torch.manual_seed(0)
    model = build_model(load_spec(spec))
    checkpoint = root / "model.pth"
    save_model_checkpoint(checkpoint, model.state_dict(), model.model_config, epoch=3)
    return spec, checkpoint, root


@pytest.mark.parametrize("mode", ["weight_only_ptq", "static_ptq"])
def test_torchao_checkpoint_loads_and_predicts_like_the_float_model(setup, mode):
    spec, checkpoint, root = setup
    results = root / f"ao-{mode}"
    assert main(["quantize", "-e", str(spec), f"results_dir={results}", f"quantize.model_path={checkpoint}",
                 f"quantize.mode={mode}", "quantize.skip_names=[decoder.class_embed]"]) == 0
    summary = json.loads((results / "quantize" / "quantize_summary.json").read_text())
    quantized = results / "quantize" / "model_int8.pth"
    assert summary["quantized_model"] == str(quantized) and summary["quantizer"] == "torchao"

    model, payload = load_model_checkpoint(quantized)
    plan = payload["quantization"]["plan"]
    assert "decoder.class_embed" not in plan and len(plan) == summary["layers"] > 5
    assert set(plan.values()) == {"int8_weight_only" if mode == "weight_only_ptq" else "int8_dynamic_activation_int8_weight"}
    assert payload["epoch"] == 3 and "optimizer_states" not in payload
    reference, _ = load_model_checkpoint(checkpoint)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model.eval()(images), reference.eval()(images)
    # INT8 weights (per channel) move mask logits by a small fraction of their spread.
    spread = theirs["pred_masks"].std().item()
    assert (ours["pred_masks"] - theirs["pred_masks"]).abs().mean().item() < 0.05 * spread
    assert torch.equal(ours["pred_logits"].argmax(-1), theirs["pred_logits"].argmax(-1)) or mode == "static_ptq"

    # The checkpoint is a model like any other for evaluate and inference.
    assert main(["evaluate", "-e", str(spec), f"results_dir={results}", f"evaluate.checkpoint={quantized}"]) == 0
    assert "PQ" in json.loads((results / "evaluate" / "metrics.json").read_text())
    assert main(["inference", "-e", str(spec), f"results_dir={results}", f"inference.checkpoint={quantized}"]) == 0
    assert len(list((results / "inference" / "overlays").glob("*.png"))) == 3


@pytest.fixture(scope="module")
def onnx_model(setup):
    """The FP32 ONNX of the checkpoint, 64x64 input, dynamic batch."""
    spec, checkpoint, root = setup
    assert main(["export", "-e", str(spec), f"results_dir={root / 'onnx'}", f"export.checkpoint={checkpoint}",
                 "export.input_height=64", "export.input_width=64"]) == 0
    return root / "onnx" / "export" / "model.onnx"


def test_onnx_static_ptq_writes_a_calibrated_qdq_model(setup, onnx_model):
    spec, checkpoint, root = setup
    results = root / "onnx"
    fp32 = onnx_model
    assert main(["quantize", "-e", str(spec), f"results_dir={results}", f"quantize.model_path={fp32}",
                 "quantize.backend=modelopt.onnx", "quantize.mode=static_ptq", "quantize.algorithm=entropy",
                 f"dataset.quant_calibration_dataset.images_dir={spec.parent / 'images'}"]) == 0
    int8 = results / "quantize" / "model.int8.onnx"
    graph = onnx.load(str(int8)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    # Symmetric scales (zero point 0) as TensorRT requires.
    zero_points = [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(not np.any(z) for z in zero_points)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size

    import onnxruntime as ort

    image = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    outputs = [dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: image}), strict=True))
               for s in (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8))]
    assert np.abs(outputs[0]["pred_masks"] - outputs[1]["pred_masks"]).mean() < 0.05  # probabilities in [0, 1]
    assert main(["evaluate", "-e", str(spec), f"results_dir={results}", f"evaluate.onnx_file={int8}"]) == 0


@pytest.mark.parametrize("overrides, field", [
    ([], "quantize.model_path: required"),
    (["quantize.model_path=/nowhere/model.pth"], "quantize.model_path: /nowhere/model.pth does not exist"),
    (["quantize.backend=modelopt.pytorch", "quantize.model_path={checkpoint}"], "quantize.backend: modelopt.pytorch needs a CUDA GPU"),
    (["quantize.backend=modelopt.onnx", "quantize.model_path={checkpoint}"], "quantize.model_path: backend modelopt.onnx quantizes an .onnx"),
    (["quantize.model_path={checkpoint}", "quantize.layers=[{module_name: 'decoder.*', weights: {dtype: fp8_e4m3fn}}]"],
     "quantize.layers[0].weights.dtype: fp8_e4m3fn needs a GPU"),
    (["quantize.model_path={checkpoint}", "quantize.skip_names=['*']"], "quantize: no Linear layer is left"),
    (["quantize.device=tpu"], "quantize.device: 'tpu' is not one of"),
    (["quantize.model_path={checkpoint}", "quantize.backend_kwargs={a: 1}"], "quantize.backend_kwargs: backend torchao reads none"),
    (["quantize.backend=modelopt.onnx", "quantize.mode=static_ptq", "quantize.model_path={onnx}",
      "dataset.quant_calibration_dataset.images_dir={images}", "dataset.augmentation.test_min_size=96"],
     "dataset.augmentation.test_min_size / test_max_size: calibration images become 96x96, larger than"),
])
def test_bad_quantize_settings_exit_2_naming_the_field(setup, request, capsys, overrides, field):
    spec, checkpoint, root = setup
    onnx = request.getfixturevalue("onnx_model") if any("{onnx}" in o for o in overrides) else None
    argv = [o.replace("{checkpoint}", str(checkpoint)).replace("{onnx}", str(onnx))
            .replace("{images}", str(spec.parent / "images")) for o in overrides]
    assert main(["quantize", "-e", str(spec), f"results_dir={root / 'bad'}", *argv]) == 2
    err = capsys.readouterr().err.strip()
    # One error line (log lines of the work done before the problem may precede it), no traceback.
    assert err.splitlines()[-1].startswith("error: ") and field in err.splitlines()[-1] and "Traceback" not in err, err


@pytest.mark.parametrize("shape, message", [
    ([4, 3, 64, 64], "has a fixed batch of 4; export it with export.batch_size -1 (dynamic) or 1"),
    (["batch", 3, "height", "width"], "has a dynamic image size"),
])
def test_models_calibration_cannot_feed_are_refused_in_one_line(tmp_path, shape, message):
    """Calibration feeds one image of the model's fixed size at a time: a graph that cannot take that is a
    UserError naming quantize.model_path, before any calibration work."""
    import onnx
    from onnx import TensorProto, helper

    from m2f_trainer.errors import UserError
    from m2f_trainer.export.quantize_onnx import onnx_input

    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UserError, match="quantize.model_path: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        onnx_input(path)
    one = tmp_path / "one.onnx"
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    for dim, size in zip(graph.input[0].type.tensor_type.shape.dim[2:], (64, 64), strict=True):
        dim.dim_value = size
    onnx.save(helper.make_model(graph), str(one))
    assert onnx_input(one) == ("images", (64, 64))
