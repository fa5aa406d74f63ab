"""FP16 ONNX conversion for strongly typed TensorRT: FP32 islands, FP32 I/O, numbers close to FP32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from m2f_trainer.export.fp16 import convert_to_mixed_fp16, fp32_node_names, keep_fp32


def _graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv.weight")
    query = numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "query")
    nodes = [
        helper.make_node("Conv", ["inputs", "conv.weight"], ["feat"], name="/backbone/conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat"], ["act"], name="/backbone/relu"),
        helper.make_node("Reshape", ["act", "flat_shape"], ["flat"], name="/flatten"),
        helper.make_node("MatMul", ["flat", "query"], ["scores"],
                         name="/decoder/transformer_cross_attention_layers.0/MatMul"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="/head/softmax", axis=-1),
        helper.make_node("Mul", ["probs", "probs"], ["pred_masks"], name="/head/square"),
    ]
    shape = numpy_helper.from_array(np.array([1, 8, 64], dtype=np.int64), "flat_shape")
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("pred_masks", TensorProto.FLOAT, [1, 8, 16])],
        initializer=[weight, query, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(
    ("name", "op_type", "expected"),
    [
        ("/decoder/transformer_cross_attention_layers.3/MatMul", "MatMul", True),
        ("/decoder/cross_attn/Add", "Add", True),
        ("/head/postprocess/Mul", "Mul", True),
        ("/any/Softmax", "Softmax", True),
        ("/any/TopK", "TopK", True),
        ("/pixel_decoder/GridSample", "GridSample", True),
        # below opset 16 the deformable core is gather-based bilinear sampling; its projections stay FP16
        ("/model/pixel_decoder/transformer/encoder/layers.0/self_attn/Gather_3", "Gather", True),
        ("/model/pixel_decoder/transformer/encoder/layers.1/self_attn/Floor", "Floor", True),
        ("/model/pixel_decoder/transformer/encoder/layers.0/self_attn/value_proj/MatMul", "MatMul", False),
        ("/decoder/self_attention_layers.0/MatMul", "MatMul", False),
        ("/backbone/conv", "Conv", False),
        ("", "Relu", False),
    ],
)
def test_keep_fp32_table(name, op_type, expected):
    assert keep_fp32(name, op_type) is expected


def test_mixed_fp16_keeps_islands_and_io_types():
    model = _graph()
    assert fp32_node_names(model) == ["/decoder/transformer_cross_attention_layers.0/MatMul", "/head/softmax"]
    mixed = convert_to_mixed_fp16(model)
    onnx.checker.check_model(mixed)

    initializers = {init.name: init.data_type for init in mixed.graph.initializer}
    assert initializers["conv.weight"] == TensorProto.FLOAT16  # converted
    assert initializers["query"] == TensorProto.FLOAT  # feeds the FP32 cross-attention island
    assert mixed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert mixed.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # Each island is fed through a Cast back to FP32.
    casts_to_fp32 = [n for n in mixed.graph.node if n.op_type == "Cast"
                     and helper.get_attribute_value(n.attribute[0]) == TensorProto.FLOAT]
    assert casts_to_fp32


def test_mixed_fp16_runs_close_to_fp32_in_onnxruntime():
    model = _graph()
    inputs = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mixed = ort.InferenceSession(convert_to_mixed_fp16(model).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    expected = reference.run(None, {"inputs": inputs})[0]
    got = mixed.run(None, {"inputs": inputs})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=2e-2)


def test_unnamed_nodes_are_named_before_blocking():
    model = _graph()
    for node in model.graph.node:
        node.name = ""
    mixed = convert_to_mixed_fp16(model)
    softmax = next(n for n in mixed.graph.node if n.op_type == "Softmax")
    assert softmax.name == "Softmax_4"
    # The softmax input is FP32: produced by a Cast inserted in front of the island.
    producer = next(n for n in mixed.graph.node if softmax.input[0] in n.output)
    assert producer.op_type == "Cast"
