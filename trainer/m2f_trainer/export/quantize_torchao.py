"""INT8 post-training quantization of the PyTorch model with torchao, and the plan a checkpoint keeps to reload it.

torchao quantizes `nn.Linear` layers (the transformer parts and a Swin backbone; convolutions stay in floating
point). `weight_only_ptq` stores INT8 weights dequantized on the fly; `static_ptq` also runs the matmuls in
INT8 with activation scales computed per batch (torchao's dynamic-activation INT8), so no calibration images
are needed. The checkpoint stores the quantized tensors and a plan (module name -> scheme); loading applies
the plan to a freshly built model before the weights, so `m2f evaluate` / `m2f inference` read it like any
checkpoint.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from m2f_trainer.errors import SpecError, UserError

WEIGHT_ONLY = "int8_weight_only"
DYNAMIC_ACTIVATION = "int8_dynamic_activation_int8_weight"
SCHEMES = (WEIGHT_ONLY, DYNAMIC_ACTIVATION)


def matches(name: str, pattern: str) -> bool:
    """A module name against a TAO layer name: a glob, the module itself or a module under it."""
    return fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern.rstrip(".") + ".")


def layer_plan(model: nn.Module, spec: Any) -> dict[str, str]:
    """Module name -> scheme for every Linear layer the `quantize` section asks to quantize.

    The first `layers` entry matching a module decides its data types (null takes the mode's default);
    `skip_names` always win; fp8 needs a GPU and is refused naming the entry.
    """
    default = DYNAMIC_ACTIVATION if spec.mode == "static_ptq" else WEIGHT_ONLY
    for index, layer in enumerate(spec.layers):
        for part in ("weights", "activations"):
            tensor = getattr(layer, part)
            if tensor is not None and tensor.dtype.startswith("fp8"):
                raise SpecError(f"quantize.layers[{index}].{part}.dtype: {tensor.dtype} needs a GPU with FP8 (and "
                                "backend modelopt.pytorch); use int8 or native here")
    plan: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(matches(name, p) for p in spec.skip_names):
            continue
        scheme = default
        layer = next((entry for entry in spec.layers if matches(name, entry.module_name)), None)
        if layer is not None:
            if layer.weights is not None and layer.weights.dtype == "native":
                continue
            if layer.activations is not None:
                scheme = DYNAMIC_ACTIVATION if layer.activations.dtype == "int8" else WEIGHT_ONLY
        plan[name] = scheme
    if not plan:
        raise SpecError("quantize: no Linear layer is left to quantize (check quantize.layers and quantize.skip_names)")
    return plan


def apply_plan(model: nn.Module, plan: dict[str, str]) -> nn.Module:
    """Quantize `model` in place as the plan says (torchao's quantize_, one pass per scheme)."""
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError as exc:
        raise UserError("torchao is not installed: pip install 'mask2former-trainer[quantize]'") from exc
    unknown = sorted(set(plan.values()) - set(SCHEMES))
    if unknown:
        raise UserError(f"unknown quantization scheme(s) {unknown}: this trainer knows {', '.join(SCHEMES)}")
    configs = {WEIGHT_ONLY: Int8WeightOnlyConfig, DYNAMIC_ACTIVATION: Int8DynamicActivationInt8WeightConfig}
    for scheme, config in configs.items():
        chosen = {name for name, s in plan.items() if s == scheme}
        if chosen:
            quantize_(model, config(), filter_fn=lambda _module, fqn, chosen=chosen: fqn in chosen)
    return model


def import_torchao_tensor_types() -> bool:
    """Importing torchao registers its tensor types as safe for `torch.load(weights_only=True)`."""
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return False
    return True
