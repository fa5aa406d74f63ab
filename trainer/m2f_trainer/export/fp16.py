"""FP16 ONNX graphs with FP32 islands, for TensorRT's strongly typed networks.

TensorRT 11 removed weakly typed networks (BuilderFlag.FP16, per-layer precision): a tensor's type is
whatever the ONNX graph declares. An FP16 engine therefore needs an FP16 graph, in which the numerically
sensitive parts stay FP32 — the same islands that TAO deploy pins to FP32 in weakly typed FP16 engines
and that the PyTorch model runs in FP32 under autocast: masked cross-attention, the deformable-attention
sampling of the pixel decoder, and the post-processing (softmax, top-k, reductions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import onnx

# Op types kept in FP32 wherever they occur: softmax/reductions overflow or lose mass in FP16, top-k
# ranks scores that differ in the 4th digit, grid_sample is the deformable-attention core.
FP32_OP_TYPES: frozenset[str] = frozenset(
    {"Softmax", "LogSoftmax", "TopK", "ReduceMean", "ReduceSum", "ReduceMax", "GridSample", "Einsum", "Erf"}
)
# Node-name patterns (the torch exporter names nodes after module paths) of the cross-attention layers,
# the post-processing head, and the deformable-attention core itself: the nodes directly in a pixel-decoder
# `self_attn` scope (not in its projections), which below opset 16 are the gather-based bilinear sampling.
FP32_NAME_PATTERN = re.compile(
    r"cross_attn|cross_attention|postprocess|post_process|pixel_decoder/.*/self_attn/[A-Za-z]+(_\d+)?$",
    re.IGNORECASE,
)


def keep_fp32(node_name: str, op_type: str) -> bool:
    """Whether a node (or TensorRT layer, named after its node) must compute in FP32."""
    return op_type in FP32_OP_TYPES or bool(FP32_NAME_PATTERN.search(node_name or ""))


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    return [node.name for node in model.graph.node if keep_fp32(node.name, node.op_type)]


def convert_to_mixed_fp16(model: onnx.ModelProto, extra_fp32_nodes: Iterable[str] = ()) -> onnx.ModelProto:
    """Return an FP16 copy of ``model`` with FP32 islands and FP32 graph inputs/outputs.

    Inputs and outputs keep their FP32 types (casts are inserted inside the graph) so that every runner
    — onnxruntime, TensorRT, the evaluation code — feeds and reads the same dtypes for both precisions.
    """
    from onnxconverter_common import float16

    unnamed = [i for i, node in enumerate(model.graph.node) if not node.name]
    if unnamed:
        # The block list matches by name: give anonymous nodes stable names first.
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for i in unnamed:
            model.graph.node[i].name = f"{model.graph.node[i].op_type}_{i}"
    block = sorted(set(fp32_node_names(model)) | set(extra_fp32_nodes))
    return float16.convert_float_to_float16(
        model, keep_io_types=True, node_block_list=block, disable_shape_infer=False
    )
