"""`m2f gen_trt_engine`: spec checks and the missing-TensorRT path everywhere; real engines where TensorRT runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from m2f_trainer.cli import main
from m2f_trainer.errors import SpecError
from m2f_trainer.export.tensorrt import INSTALL_HINT, EngineBuildSettings

SPEC = Path(__file__).resolve().parents[2] / "examples" / "specs" / "tao_coco_panoptic_swin_tiny.yaml"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _write_onnx(path: Path, batch: int | str = "batch") -> Path:
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["inputs", "w"], ["feat"], name="/conv", pads=[1, 1, 1, 1]),
         helper.make_node("Softmax", ["feat"], ["pred_masks"], name="/head/softmax", axis=1)],
        "tiny",
        [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("pred_masks", TensorProto.FLOAT, [batch, 4, 32, 32])],
        initializer=[weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_missing_onnx_file_field_names_the_field(capsys):
    assert main(["gen_trt_engine", "-e", str(SPEC)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: gen_trt_engine.onnx_file: required (the ONNX file written by `m2f export`)"]


def test_onnx_file_not_found_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    assert main(["gen_trt_engine", "-e", str(SPEC), f"gen_trt_engine.onnx_file={missing}"]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the missing-TensorRT path cannot run")
def test_without_tensorrt_exits_2_with_install_hint(tmp_path, capsys):
    onnx_file = _write_onnx(tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    code = main(["gen_trt_engine", "-e", str(SPEC), f"gen_trt_engine.onnx_file={onnx_file}",
                 f"gen_trt_engine.trt_engine={engine}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {INSTALL_HINT}"]
    assert not engine.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int8"}, "gen_trt_engine.tensorrt.data_type: 'int8' is not one of fp32, fp16"),
        ({"min_batch": 2, "opt_batch": 1, "max_batch": 4}, "min_batch_size <= opt_batch_size"),
        ({"min_batch": 1, "opt_batch": 8, "max_batch": 4}, "got 1, 8, 4"),
    ],
)
def test_build_settings_reject_bad_values(tmp_path, kwargs, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        EngineBuildSettings(onnx_file=tmp_path / "m.onnx", engine_file=tmp_path / "m.engine", **kwargs)


def test_timing_cache_defaults_next_to_the_engine(tmp_path):
    settings = EngineBuildSettings(onnx_file=tmp_path / "m.onnx", engine_file=tmp_path / "out" / "m.engine")
    assert settings.resolved_timing_cache == tmp_path / "out" / "m.engine.timing.cache"


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed (optional extra `tensorrt`)")
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_engine_matches_onnxruntime(tmp_path, precision):
    if not _cuda_available():
        pytest.skip("no CUDA device: TensorRT needs a GPU")
    import onnxruntime as ort

    from m2f_trainer.export.tensorrt import TensorRTRunner

    onnx_file = _write_onnx(tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    assert main(["gen_trt_engine", "-e", str(SPEC), f"gen_trt_engine.onnx_file={onnx_file}",
                 f"gen_trt_engine.trt_engine={engine}", f"gen_trt_engine.tensorrt.data_type={precision}",
                 "gen_trt_engine.tensorrt.max_batch_size=4", "gen_trt_engine.tensorrt.opt_batch_size=2"]) == 0
    summary = json.loads((tmp_path / "model.engine.json").read_text())
    assert summary["profile"]["inputs"] == [[1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]]
    assert (tmp_path / "model.engine.timing.cache").stat().st_size > 0

    images = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(onnx_file)).run(None, {"inputs": images})[0]
    got = TensorRTRunner(engine)(images)["pred_masks"]
    np.testing.assert_allclose(got, expected, atol=1e-3 if precision == "FP32" else 1e-2)
