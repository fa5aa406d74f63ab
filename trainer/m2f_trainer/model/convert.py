"""`m2f convert-checkpoint`: HuggingFace or detectron2 Mask2Former weights -> this project's checkpoint."""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2f_trainer.errors import UserError
from m2f_trainer.model.checkpoint_io import save_model_checkpoint

# --------------------------------------------------------------------------------------------- HF

_HF_SWIN = "model.pixel_level_module.encoder."
_HF_PIXEL = "model.pixel_level_module.decoder."
_HF_TRANSFORMER = "model.transformer_module."

# (pattern, replacement) per part, applied to HF names (relative to the part) once q/k/v have been fused;
# the first match wins. A callable replacement computes the new prefix from the match (shifted indices).
_Rules = list[tuple[str, str | Callable[[re.Match[str]], str]]]
_HF_SWIN_RULES: _Rules = [
    # Swin (HF's own implementation -> timm names; HF downsamples at the end of stage i, timm at the start of i+1)
    (r"embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (r"embeddings\.norm\.", "backbone.patch_embed.norm."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"backbone.layers.\1.blocks.\2.norm1."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"backbone.layers.\1.blocks.\2.norm2."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.qkv\.", r"backbone.layers.\1.blocks.\2.attn.qkv."),
    (
        r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table",
        r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"backbone.layers.\1.blocks.\2.attn.proj."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"backbone.layers.\1.blocks.\2.mlp.fc1."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"backbone.layers.\1.blocks.\2.mlp.fc2."),
    (r"encoder\.layers\.(\d+)\.downsample\.", lambda m: f"backbone.layers.{int(m[1]) + 1}.downsample."),
    (r"hidden_states_norms\.stage(\d+)\.", lambda m: f"backbone.norm{int(m[1]) - 1}."),
]
_HF_PIXEL_RULES: _Rules = [
    (r"input_projections\.(\d+)\.(\d)\.", r"pixel_decoder.input_proj.\1.\2."),
    (r"level_embed$", "pixel_decoder.transformer.level_embed"),
    (r"encoder\.layers\.(\d+)\.self_attn\.", r"pixel_decoder.transformer.encoder.layers.\1.self_attn."),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"pixel_decoder.transformer.encoder.layers.\1.norm1."),
    (r"encoder\.layers\.(\d+)\.fc1\.", r"pixel_decoder.transformer.encoder.layers.\1.linear1."),
    (r"encoder\.layers\.(\d+)\.fc2\.", r"pixel_decoder.transformer.encoder.layers.\1.linear2."),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"pixel_decoder.transformer.encoder.layers.\1.norm2."),
    (r"mask_projection\.", "pixel_decoder.mask_features."),
    (r"(adapter|layer)_(\d+)\.0\.", r"pixel_decoder.\1_\2."),
    (r"(adapter|layer)_(\d+)\.1\.", r"pixel_decoder.\1_\2.norm."),
]
_HF_TRANSFORMER_RULES: _Rules = [
    (r"queries_embedder\.", "decoder.query_embed."),
    (r"queries_features\.", "decoder.query_feat."),
    (r"input_projections\.(\d+)\.", r"decoder.input_proj.\1."),
    (r"level_embed\.", "decoder.level_embed."),
    (r"decoder\.layers\.(\d+)\.cross_attn\.", r"decoder.transformer_cross_attention_layers.\1.multihead_attn."),
    (r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"decoder.transformer_cross_attention_layers.\1.norm."),
    (r"decoder\.layers\.(\d+)\.self_attn\.in_proj_", r"decoder.transformer_self_attention_layers.\1.self_attn.in_proj_"),
    (r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"decoder.transformer_self_attention_layers.\1.self_attn.out_proj."),
    (r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"decoder.transformer_self_attention_layers.\1.norm."),
    (r"decoder\.layers\.(\d+)\.fc1\.", r"decoder.transformer_ffn_layers.\1.linear1."),
    (r"decoder\.layers\.(\d+)\.fc2\.", r"decoder.transformer_ffn_layers.\1.linear2."),
    (r"decoder\.layers\.(\d+)\.final_layer_norm\.", r"decoder.transformer_ffn_layers.\1.norm."),
    (r"decoder\.layernorm\.", "decoder.decoder_norm."),
    (r"decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.", r"decoder.mask_embed.layers.\1."),
]
# The same relative name means different things in each part: each part has its own rules.
_HF_PARTS: tuple[tuple[str, _Rules], ...] = (
    (_HF_SWIN, _HF_SWIN_RULES),
    (_HF_PIXEL, _HF_PIXEL_RULES),
    (_HF_TRANSFORMER, _HF_TRANSFORMER_RULES),
)

# transformers >= 5 names (runtime modules) -> the legacy names that save_pretrained / the Hub use.
_HF_V5_ALIASES = [
    (".swin.embeddings.", ".embeddings."),
    (".swin.encoder.", ".encoder."),
    (".attention.q_proj.", ".attention.self.query."),
    (".attention.k_proj.", ".attention.self.key."),
    (".attention.v_proj.", ".attention.self.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".attention.relative_position_bias.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
]


def _fuse(state: dict[str, torch.Tensor], parts: tuple[str, str, str], fused: str) -> dict[str, torch.Tensor]:
    """Concatenate separate q/k/v projections (HF) into one in_proj/qkv tensor (timm, nn.MultiheadAttention)."""
    out = dict(state)
    for key in list(state):
        for kind in ("weight", "bias"):
            suffix = f"{parts[0]}.{kind}"
            if key.endswith(suffix):
                stem = key[: -len(suffix)]
                names = [f"{stem}{p}.{kind}" for p in parts]
                if all(n in state for n in names):
                    out[f"{stem}{fused.format(kind=kind)}"] = torch.cat([state[n] for n in names], 0)
                    for n in names:
                        out.pop(n, None)
    return out


def convert_hf_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF Mask2FormerForUniversalSegmentation names -> ours. Returns (state_dict, skipped keys)."""
    normalized = {}
    for key, value in state.items():
        for old, new in _HF_V5_ALIASES:
            key = key.replace(old, new)
        normalized[key] = value
    normalized = _fuse(normalized, ("attention.self.query", "attention.self.key", "attention.self.value"), "attention.self.qkv.{kind}")
    normalized = _fuse(normalized, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.in_proj_{kind}")

    converted, skipped = {}, []
    for key, value in normalized.items():
        if key.startswith("class_predictor."):
            converted["decoder.class_embed." + key.removeprefix("class_predictor.")] = value
            continue
        new = next((_apply_rules(key.removeprefix(p), rules) for p, rules in _HF_PARTS if key.startswith(p)), None)
        if new is None:
            skipped.append(key)
            continue
        converted[new] = value
    return converted, skipped


def _apply_rules(rest: str, rules: _Rules) -> str | None:
    for pattern, replacement in rules:
        match = re.match(pattern, rest)
        if match:
            head = replacement(match) if callable(replacement) else match.expand(replacement)
            return head + rest[match.end():]
    return None


def model_config_from_hf(config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    backbone = config.get("backbone_config") or {}
    if backbone.get("model_type", "swin") != "swin":
        raise UserError(
            f"convert-checkpoint: HF backbone {backbone.get('model_type')!r} is not supported; only Swin is"
        )
    if backbone.get("use_absolute_embeddings"):
        raise UserError("convert-checkpoint: HF Swin with use_absolute_embeddings=True is not supported")
    if config.get("encoder_layers") is None:
        raise UserError("convert-checkpoint: config.json has no encoder_layers: not a Mask2Former config")
    heads = config.get("num_attention_heads", 8)
    return {
        "backbone": {
            "kind": "swin",
            "embed_dim": backbone.get("embed_dim", 96),
            "depths": list(backbone.get("depths", [2, 2, 6, 2])),
            "num_heads": list(backbone.get("num_heads", [3, 6, 12, 24])),
            "window_size": backbone.get("window_size", 7),
            "pretrain_img_size": backbone.get("image_size", 224),
            "patch_size": backbone.get("patch_size", 4),
            "mlp_ratio": backbone.get("mlp_ratio", 4.0),
            "drop_path_rate": backbone.get("drop_path_rate", 0.3),
            "ape": False,
        },
        "num_classes": state["class_predictor.weight"].shape[0] - 1,
        "num_queries": config.get("num_queries", 100),
        "hidden_dim": config.get("hidden_dim", 256),
        "nheads": heads,
        "dim_feedforward": config.get("dim_feedforward", 2048),
        "decoder_layers": config.get("decoder_layers", 10) - 1,
        "pre_norm": bool(config.get("pre_norm", False)),
        "enforce_input_proj": bool(config.get("enforce_input_projection", False)),
        "dropout": float(config.get("dropout", 0.0)),
        "conv_dim": config.get("feature_size", 256),
        "mask_dim": config.get("mask_feature_size", 256),
        "norm": "GN",
        "common_stride": config.get("common_stride", 4),
        "transformer_enc_layers": config.get("encoder_layers", 6),
        "transformer_nheads": heads,
        "transformer_dim_feedforward": config.get("encoder_feedforward_dim", 1024),
        "transformer_n_points": 4,
        "transformer_in_levels": 3,
    }


def read_hf(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"convert-checkpoint: {config_path} not found (expected a save_pretrained directory)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"convert-checkpoint: {config_path} is not valid JSON: {exc}") from exc
    safetensors_path, bin_path = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors_path.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(
                f"convert-checkpoint: reading {safetensors_path} needs the safetensors package (pip install safetensors)"
            ) from None
        state = load_file(str(safetensors_path))
    elif bin_path.is_file():
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
    else:
        raise UserError(f"convert-checkpoint: no model.safetensors or pytorch_model.bin in {directory}")
    if "class_predictor.weight" not in state:
        raise UserError(f"convert-checkpoint: {directory} is not a Mask2FormerForUniversalSegmentation checkpoint")
    return state, config


# ------------------------------------------------------------------------------------- detectron2


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """detectron2 model-zoo .pkl files hold numpy arrays in dicts; refuse anything else (pickle runs code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")


def read_detectron2(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".pkl":
        try:
            with path.open("rb") as handle:
                payload = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise UserError(f"convert-checkpoint: cannot read {path}: {exc}") from exc
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or not a torch file
            raise UserError(f"convert-checkpoint: cannot read {path}: {exc}") from exc
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"convert-checkpoint: {path} holds no state dict")
    return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in state.items()}


def convert_detectron2_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    converted, skipped = {}, []
    for key, value in state.items():
        if key.startswith("backbone."):
            if key.endswith(("relative_position_index", "attn_mask")):
                skipped.append(key)  # buffers rebuilt at runtime
                continue
            # The original Swin downsamples at the end of stage i, timm at the start of stage i+1.
            new = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
            converted[new] = value
        elif key.startswith("sem_seg_head.pixel_decoder."):
            converted["pixel_decoder." + key.removeprefix("sem_seg_head.pixel_decoder.")] = value
        elif key.startswith("sem_seg_head.predictor."):
            converted["decoder." + key.removeprefix("sem_seg_head.predictor.")] = value
        else:
            skipped.append(key)
    if "backbone.patch_embed.proj.weight" not in converted:
        raise UserError(
            "convert-checkpoint: only Swin-backbone detectron2 checkpoints are supported "
            "(no backbone.patch_embed.proj.weight found)"
        )
    return converted, skipped


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def model_config_from_detectron2(state: dict[str, torch.Tensor], nheads: int) -> dict[str, Any]:
    """Architecture read off the tensor shapes (detectron2 stores no config in the weights)."""
    num_stages = _count(state, r"backbone\.layers\.(\d+)\.")
    depths = [_count(state, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(num_stages)]
    heads = [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(num_stages)]
    table_rows = state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (int(round(table_rows**0.5)) + 1) // 2
    embed_dim = state["backbone.patch_embed.proj.weight"].shape[0]
    ape = state.get("backbone.absolute_pos_embed")
    levels = _count(state, r"pixel_decoder\.input_proj\.(\d+)\.")
    offsets = state["pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0]
    enc_points = offsets // (nheads * levels * 2)
    return {
        "backbone": {
            "kind": "swin", "embed_dim": embed_dim, "depths": depths, "num_heads": heads, "window_size": window,
            "pretrain_img_size": (ape.shape[-1] * 4) if ape is not None else 224,
            "patch_size": state["backbone.patch_embed.proj.weight"].shape[-1], "ape": ape is not None,
        },
        "num_classes": state["decoder.class_embed.weight"].shape[0] - 1,
        "num_queries": state["decoder.query_feat.weight"].shape[0],
        "hidden_dim": state["decoder.query_feat.weight"].shape[1],
        "nheads": nheads,
        "dim_feedforward": state["decoder.transformer_ffn_layers.0.linear1.weight"].shape[0],
        "decoder_layers": _count(state, r"decoder\.transformer_ffn_layers\.(\d+)\."),
        "pre_norm": False,
        "enforce_input_proj": isinstance(state.get("decoder.input_proj.0.weight"), torch.Tensor),
        "conv_dim": state["pixel_decoder.mask_features.weight"].shape[1],
        "mask_dim": state["pixel_decoder.mask_features.weight"].shape[0],
        "norm": "GN",
        "common_stride": 4,
        "transformer_enc_layers": _count(state, r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\."),
        "transformer_nheads": nheads,
        "transformer_dim_feedforward": state["pixel_decoder.transformer.encoder.layers.0.linear1.weight"].shape[0],
        "transformer_n_points": enc_points,
        "transformer_in_levels": levels,
    }


# ------------------------------------------------------------------------------------------- CLI


def convert(source: str, input_path: Path, output: Path, *, nheads: int = 8, pre_norm: bool = False) -> dict:
    """Convert and verify that every tensor lands in a freshly built model; returns the model_config."""
    from m2f_trainer.model.mask2former import build_model_from_config

    if source == "hf":
        if not input_path.is_dir():
            raise UserError(f"convert-checkpoint: --input {input_path} must be a HF save_pretrained directory")
        raw, config = read_hf(input_path)
        state, skipped = convert_hf_state_dict(raw)
        model_config = model_config_from_hf(config, raw)
    else:
        if not input_path.is_file():
            raise UserError(f"convert-checkpoint: --input {input_path} not found")
        state, skipped = convert_detectron2_state_dict(read_detectron2(input_path))
        model_config = model_config_from_detectron2(state, nheads)
        model_config["pre_norm"] = pre_norm
    model = build_model_from_config(model_config)
    expected = model.state_dict()
    result = model.load_state_dict(state, strict=False)
    mismatched = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if result.missing_keys or result.unexpected_keys or mismatched:
        raise UserError(
            f"convert-checkpoint: {input_path} does not map onto the model: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}, wrong shape {mismatched[:8]}"
        )
    save_model_checkpoint(
        output, OrderedDict((k, v.contiguous()) for k, v in model.state_dict().items()), model.model_config,
        converted_from={"source": source, "path": str(input_path), "skipped_keys": skipped},
    )
    return model.model_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="m2f convert-checkpoint", description=__doc__)
    parser.add_argument("--source", required=True, choices=("hf", "detectron2"))
    parser.add_argument("--input", required=True, type=Path, help="HF directory or detectron2 .pkl/.pth")
    parser.add_argument("--output", required=True, type=Path, help="output model.pth")
    parser.add_argument("--nheads", type=int, default=8, help="detectron2 only: attention heads (not in the weights)")
    parser.add_argument("--pre-norm", action="store_true", help="detectron2 only: the decoder was trained pre-norm")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    model_config = convert(args.source, args.input, args.output, nheads=args.nheads, pre_norm=args.pre_norm)
    print(
        f"converted {args.source} checkpoint {args.input} -> {args.output} "
        f"({model_config['num_classes']} classes, {model_config['num_queries']} queries)"
    )
    return 0
