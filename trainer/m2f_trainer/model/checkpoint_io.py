"""This project's model checkpoint layout: `{"state_dict": Mask2Former state, "model_config": {...}}`."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from m2f_trainer.errors import UserError


def save_model_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], model_config: dict, **extra: Any) -> None:
    """Write the layout that `load_model_checkpoint` and `m2f convert-checkpoint` agree on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": dict(state_dict), "model_config": dict(model_config), **extra}, path)


def read_model_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check the layout; Lightning-style `model.` prefixes on the keys are removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = _load(path)
    except Exception as exc:  # corrupt file or not a torch checkpoint
        raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "model_config" not in payload:
        raise UserError(f"{path} is not an m2f checkpoint: expected keys 'state_dict' and 'model_config'")
    state = payload["state_dict"]
    if state and all(k.startswith("model.") for k in state):
        payload["state_dict"] = {k.removeprefix("model."): v for k, v in state.items()}
    return payload


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # An `m2f quantize` checkpoint holds torchao tensors: torchao must be imported to allow them.
        from m2f_trainer.export.quantize_torchao import import_torchao_tensor_types

        if "torchao" in str(exc) and import_torchao_tensor_types():
            return torch.load(path, map_location="cpu", weights_only=True)
        if "torchao" in str(exc):
            raise UserError(f"{path} is a torchao-quantized checkpoint: pip install 'mask2former-trainer[quantize]'") from None
        raise


def load_model_checkpoint(path: str | Path, *, strict: bool = True):
    """Rebuild the Mask2Former described by the checkpoint's model_config and load its weights (a quantized
    checkpoint's layers are quantized the same way first, `quantization.plan`)."""
    from m2f_trainer.model.mask2former import build_model_from_config

    payload = read_model_checkpoint(path)
    model = build_model_from_config(payload["model_config"])
    quantization = payload.get("quantization")
    if quantization:
        from m2f_trainer.export.quantize_torchao import apply_plan

        apply_plan(model, quantization["plan"])
    result = model.load_state_dict(payload["state_dict"], strict=False, assign=bool(quantization))
    if strict and (result.missing_keys or result.unexpected_keys):
        raise UserError(
            f"checkpoint {path} does not match its model_config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model, payload
