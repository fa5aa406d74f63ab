"""ONNX export of the export wrapper: trace, fold constants, check, verify parity in onnxruntime, publish.

Exporter choice (torch 2.14): the TorchScript exporter (``dynamo=False``). The torch.export-based
exporter (torch's default since 2.9) only emits opset >= 18 — asked for 17 (TAO's default) it warns and
keeps 18, because its Split-18 nodes cannot be down-converted — and it takes ~10x longer on this model.
The TorchScript exporter emits exactly the requested opset; onnxscript's optimizer then folds the
constants and shape arithmetic it leaves behind (fold_constants), so output shapes are static except
for the batch.

Below opset 16 (GridSample's) the deformable attention is traced with its gather-based bilinear sampler
(``gather_sampling``), and below opset 14 (where the exporter's symbolic for scaled_dot_product_attention
starts) the decoder's attention is exported by ``_sdpa_before_opset_14``; the parity gate judges those
graphs like any other.

Nothing is written at ``onnx_file`` unless every check passes: the graph is built in a temporary file
next to it and moved into place last.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from m2f_trainer.errors import SpecError
from m2f_trainer.export.parity import ParityReport, compare_attention, compare_outputs, parity_inputs
from m2f_trainer.export.wrappers import (
    ATTENTION_OUTPUT_PREFIX,
    INPUT_NAME,
    ExportWrapper,
    WithAttentionDecisions,
    probe_attention,
)
from m2f_trainer.model.ms_deform_attn import gather_sampling

log = logging.getLogger(__name__)

# GridSample (the deformable attention of the pixel decoder) entered the default domain in opset 16; below
# it the attention samples with Gather and index arithmetic instead.
GRID_SAMPLE_OPSET = 16
# The TorchScript exporter's symbolic for scaled_dot_product_attention (the decoder's attention) starts here;
# below it _sdpa_before_opset_14 is registered for the export.
SDPA_OPSET = 14
# The exporter has no einsum (mask embedding x mask features) before opset 12.
MIN_OPSET = 12
# The TorchScript exporter's newest opset in torch 2.14.
MAX_OPSET = 20
# Batch traced for a dynamic-batch graph and used by its parity run: > 1, so nothing specialises on 1.
DYNAMIC_TRACE_BATCH = 2


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with PyTorch: the export failed (exit 1)."""


@dataclass(frozen=True)
class ExportSettings:
    onnx_file: Path
    input_size: tuple[int, int]  # (height, width)
    batch_size: int = -1  # -1: dynamic
    opset_version: int = 17
    parity_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset_version <= MAX_OPSET:
            raise SpecError(
                f"export.opset_version: {self.opset_version} is outside {MIN_OPSET}..{MAX_OPSET} (the ONNX "
                f"opsets the exporter supports for this model)"
            )
        if self.batch_size == 0 or self.batch_size < -1:
            raise SpecError(f"export.batch_size: {self.batch_size} must be -1 (dynamic) or a positive batch")
        height, width = self.input_size
        if height % 32 or width % 32:
            raise SpecError(
                f"export.input_height / export.input_width: {height}x{width} must be multiples of 32 "
                "(the backbone's coarsest stride)"
            )

    @property
    def dynamic(self) -> bool:
        return self.batch_size == -1

    @property
    def parity_file(self) -> Path:
        return self.onnx_file.with_name(self.onnx_file.name + ".parity.json")


@torch.onnx.symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
def _sdpa_before_opset_14(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                          enable_gqa=False):
    """softmax(q k^T / sqrt(d) + bias) v in opset-12 ops, for the decoder's call: float bias or none, no
    causal mask, default scale (dropout is 0 in eval). The same graph as torch's opset-14 symbolic."""
    if is_causal or enable_gqa or not scale.node().mustBeNone():
        raise ExportError("scaled_dot_product_attention with is_causal, enable_gqa or scale: no export below opset 14")
    if not attn_mask.node().mustBeNone() and attn_mask.type().scalarType() not in ("Float", "Half", "BFloat16"):
        raise ExportError("scaled_dot_product_attention with a boolean mask: no export below opset 14")
    rank = key.type().dim()
    perm = [*range(rank - 2), rank - 1, rank - 2]
    head_dim = g.op("Gather", g.op("Shape", query), g.op("Constant", value_t=torch.tensor(-1)), axis_i=0)
    # 1 / sqrt(sqrt(d)) on q and on k, as torch's math kernel, rather than 1 / sqrt(d) on the product.
    scale = g.op("Sqrt", g.op("Div", g.op("Constant", value_t=torch.tensor(1.0)),
                              g.op("Sqrt", g.op("Cast", head_dim, to_i=torch.onnx.TensorProtoDataType.FLOAT))))
    logits = g.op("MatMul", g.op("Mul", query, scale), g.op("Mul", g.op("Transpose", key, perm_i=perm), scale))
    if not attn_mask.node().mustBeNone():
        logits = g.op("Add", logits, attn_mask)
    # Softmax before opset 13 normalises over all axes from `axis` on: on the last axis that is the same.
    return g.op("MatMul", g.op("Softmax", logits, axis_i=-1), value)


@contextmanager
def _opset_before_14_attention(opset_version: int) -> Iterator[None]:
    """Registers `_sdpa_before_opset_14` for this opset during the block only: the registration is global."""
    name = "aten::scaled_dot_product_attention"
    torch.onnx.register_custom_op_symbolic(name, _sdpa_before_opset_14, opset_version)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, opset_version)


def _trace_to_onnx(
    wrapper: ExportWrapper | WithAttentionDecisions, example: torch.Tensor, path: Path, settings: ExportSettings
) -> None:
    names = list(wrapper.output_names)
    dynamic_axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if settings.dynamic else None
    # The exporter puts the module back into the mode it found it in, recursively: a module left in
    # training mode here would switch the model to training mode for the parity run that follows.
    wrapper.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about Python ints taken from static shapes are expected: shapes are fixed
        # at export time except for the batch.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        opset = settings.opset_version
        with gather_sampling(opset < GRID_SAMPLE_OPSET), (
            _opset_before_14_attention(opset) if opset < SDPA_OPSET else nullcontext()
        ):
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=names, dynamic_axes=dynamic_axes,
                do_constant_folding=True, export_params=True,
            )


def _optimize_and_check(path: Path):
    import onnx
    import onnx_ir
    import onnxscript.optimizer

    for name in ("onnx_ir", "onnxscript"):  # they log every folded / deduplicated value at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    # Constant folding only: onnxscript's full optimize() adds pattern rewrites that take minutes on a
    # Swin-T graph (~15k nodes) for nothing TensorRT or onnxruntime would not do themselves.
    ir_model = onnx_ir.serde.deserialize_model(onnx.load(str(path)))
    onnxscript.optimizer.fold_constants(ir_model)
    onnxscript.optimizer.remove_unused_nodes(ir_model)
    model = onnx_ir.serde.serialize_model(ir_model)
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the exported graph fails the ONNX checker: {first_line}") from exc
    onnx.save(model, str(path))
    return model


def _declare_static_batch(path: Path, batch_size: int) -> None:
    """The tracer leaves output batch dims symbolic even for a static batch; declare them."""
    import onnx

    model = onnx.load(str(path))
    for output in model.graph.output:
        first = output.type.tensor_type.shape.dim[0]
        if not first.HasField("dim_value"):
            first.dim_value = batch_size
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _check_published(path: Path, images: torch.Tensor, verified: dict[str, np.ndarray]) -> None:
    """The published graph must reproduce the verified graph's outputs bit for bit."""
    published = _run_onnx(path, images)
    differing = [name for name, value in verified.items() if not np.array_equal(published[name], value)]
    if differing:
        raise ExportError(f"the graph without the attention outputs no longer reproduces the verified outputs "
                          f"({', '.join(differing)})")


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ExportError(f"onnxruntime cannot load the exported graph: {str(exc).splitlines()[0]}") from exc


def _run_onnx(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    session = _ort_session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: images.numpy()}), strict=True))


def verify_parity(
    wrapper: ExportWrapper, path: Path, images: torch.Tensor, settings: ExportSettings, device: torch.device
) -> tuple[ParityReport, dict[str, np.ndarray]]:
    """Run the graph at ``path`` (the wrapper's outputs plus ``_attention_<i>``) and PyTorch on ``images``;
    where the attention decisions differ, PyTorch replays onnxruntime's (see parity.py). Returns the report
    and onnxruntime's named outputs."""
    ort_outputs = _run_onnx(path, images)
    names = list(ort_outputs)
    attention_names = [n for n in names if n.startswith(ATTENTION_OUTPUT_PREFIX)]
    ort_decisions = [ort_outputs.pop(n) for n in attention_names]
    with torch.no_grad(), probe_attention(wrapper.model) as probe:
        torch_outputs = wrapper.outputs_with_internals(images.to(device))
    layers = len(ort_decisions)
    attention = compare_attention(probe.logits[:layers], probe.decisions[:layers], ort_decisions,
                                  settings.parity_tolerance)
    if attention.flipped:
        # One early flip moves every later logit a little, so later layers are judged in the replay: there
        # each layer's logits come from the same earlier decisions as onnxruntime's.
        direct = compare_outputs(wrapper.mode, torch_outputs, ort_outputs, settings.parity_tolerance)
        imposed = [torch.from_numpy(d).to(device) for d in ort_decisions]
        with torch.no_grad(), probe_attention(wrapper.model, imposed=imposed) as replay:
            torch_outputs = wrapper.outputs_with_internals(images.to(device))
        direct_flipped = attention.flipped
        attention = compare_attention(replay.logits[:layers], replay.decisions[:layers], ort_decisions,
                                      settings.parity_tolerance)
        attention.replayed, attention.direct_flipped = True, direct_flipped
        attention.direct_max_abs_diff = {o.name: o.max_abs_diff for o in direct.outputs if o.dtype == "float32"}
    report = compare_outputs(wrapper.mode, torch_outputs, ort_outputs, settings.parity_tolerance)
    report.attention = attention
    return report, ort_outputs


def _drop_attention_outputs(path: Path) -> None:
    """Publishable graph: the verified one without the ``_attention_<i>`` outputs (nothing else changes
    but the removal of nodes that only fed them)."""
    import onnx
    import onnx_ir
    import onnxscript.optimizer

    ir_model = onnx_ir.serde.deserialize_model(onnx.load(str(path)))
    kept = [v for v in ir_model.graph.outputs if not v.name.startswith(ATTENTION_OUTPUT_PREFIX)]
    ir_model.graph.outputs.clear()
    ir_model.graph.outputs.extend(kept)
    onnxscript.optimizer.remove_unused_nodes(ir_model)
    model = onnx_ir.serde.serialize_model(ir_model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _write_json(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)


def export_onnx(wrapper: ExportWrapper, settings: ExportSettings, device: torch.device | str = "cpu") -> ParityReport:
    """Export, check, run the parity gate and move the ONNX to ``settings.onnx_file``; the parity report is
    written to ``<onnx>.parity.json`` whether it passed or not. Raises ExportError (no ONNX left behind)."""
    device = torch.device(device)
    wrapper = wrapper.to(device).eval()
    target = settings.onnx_file
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        example_batch = DYNAMIC_TRACE_BATCH if settings.dynamic else settings.batch_size
        example = torch.zeros(example_batch, 3, *settings.input_size, device=device)
        log.info("exporting %s mode, input %s x 3 x %d x %d, opset %d", wrapper.mode,
                 "batch" if settings.dynamic else settings.batch_size, *settings.input_size, settings.opset_version)
        if settings.opset_version < GRID_SAMPLE_OPSET:
            log.info("opset %d has no GridSample (opset %d): deformable attention exported with gather-based "
                     "bilinear sampling", settings.opset_version, GRID_SAMPLE_OPSET)
        _trace_to_onnx(WithAttentionDecisions(wrapper), example, tmp, settings)
        _optimize_and_check(tmp)
        images = parity_inputs(example_batch, settings.input_size)
        report, verified = verify_parity(wrapper, tmp, images, settings, device)
        _write_json(settings.parity_file, {**report.to_dict(), "onnx_file": str(target)})
        if not report.passed:
            raise ExportError(
                f"onnxruntime disagrees with PyTorch beyond export.parity_tolerance={settings.parity_tolerance:g} "
                f"({report.failure_text()}); no ONNX written, see {settings.parity_file}"
            )
        _drop_attention_outputs(tmp)
        _check_published(tmp, images, verified)
        if not settings.dynamic:
            _declare_static_batch(tmp, settings.batch_size)
        os.replace(tmp, target)
        return report
    finally:
        tmp.unlink(missing_ok=True)


def onnx_io_summary(path: Path) -> list[str]:
    """`name dtype [dims]` of every graph input and output (dims by name where dynamic)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(value) -> str:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return f"{value.name} {np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name} {dims}"

    return [f"input  {describe(v)}" for v in model.graph.input] + [f"output {describe(v)}" for v in model.graph.output]
