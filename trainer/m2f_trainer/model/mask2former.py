"""Mask2Former assembly, the model_config that describes its architecture, and build_model(cfg)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from m2f_spec.model_rules import check_model, freeze_names_text, freeze_targets
from m2f_trainer.errors import SpecError
from m2f_trainer.model.backbone import (
    EFFICIENTVIT_MODELS,
    SWIN_PRESETS,
    build_backbone,
    load_backbone_weights,
)
from m2f_trainer.model.pixel_decoder import DECODER_LEVELS, MSDeformAttnPixelDecoder
from m2f_trainer.model.transformer_decoder import MultiScaleMaskedTransformerDecoder

# What `activation_checkpoint` recomputes. Every recomputed layer costs about the same on a launch-bound GPU,
# but the memory it frees differs 10x (Swin-T, 384 px, fp32: an encoder layer 138 MiB, a stride-4 Swin block
# 113, stride 8: 57, stride 16: 32, stride 32: 16, a decoder round 10). `selective` stops at stride 8.
CHECKPOINT_POLICIES = ("selective", "full")
SELECTIVE_MAX_STRIDE = 8


def _backbone_max_stride(policy: str) -> int | None:
    return None if policy == "full" else SELECTIVE_MAX_STRIDE

# model_config defaults: the published Mask2Former recipe (docs/model.md documents every key).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "num_queries": 100,
    "hidden_dim": 256,
    "nheads": 8,
    "dim_feedforward": 2048,
    "decoder_layers": 9,
    "pre_norm": False,
    "enforce_input_proj": False,
    "dropout": 0.0,
    "conv_dim": 256,
    "mask_dim": 256,
    "norm": "GN",
    "common_stride": 4,
    "transformer_enc_layers": 6,
    "transformer_dim_feedforward": 1024,
    "transformer_n_points": 4,
    "transformer_in_levels": 3,
}


class Mask2Former(nn.Module):
    """backbone -> pixel decoder -> masked-attention decoder.

    `model(images [B,3,H,W])` (normalised, padded to a multiple of 32) returns
    `{"pred_logits": [B,Q,K+1], "pred_masks": [B,Q,H/4,W/4], "aux_outputs": [{...}] * decoder_layers}`.
    """

    def __init__(self, backbone: nn.Module, pixel_decoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        features = self.backbone(images)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        predictions = self.decoder(multi_scale_features, mask_features)
        class_logits, mask_logits = predictions[-1]
        return {
            "pred_logits": class_logits,
            "pred_masks": mask_logits,
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]],
        }

    def set_activation_checkpoint(self, enabled: bool, policy: str = "selective") -> None:
        """Recompute in backward. `selective`: the deformable encoder layers and the backbone's stride-4 and
        stride-8 stages; `full`: every backbone block, encoder layer and decoder round (docs/model.md)."""
        if policy not in CHECKPOINT_POLICIES:
            raise ValueError(f"activation checkpoint policy {policy!r}: expected one of {CHECKPOINT_POLICIES}")
        self.backbone.set_activation_checkpoint(enabled, max_stride=_backbone_max_stride(policy))
        self.pixel_decoder.transformer.encoder.activation_checkpoint = enabled
        self.decoder.activation_checkpoint = enabled and policy == "full"

    def freeze(self, prefixes: list[str] | tuple[str, ...], field: str = "train.freeze") -> list[str]:
        """Stop gradients of parameters under any of the module names (TAO's names translated, see
        m2f_spec.model_rules.FREEZE_ALIASES); returns the frozen parameter names."""
        names = [name for name, _ in self.named_parameters()]

        def under(name: str, prefix: str) -> bool:
            return name == prefix or name.startswith(prefix + ".")

        targets = []
        for index, prefix in enumerate(prefixes):
            translated = freeze_targets(prefix)
            if not any(under(name, t) for name in names for t in translated):
                raise SpecError(f"{field}[{index}]: {prefix!r} matches no parameter of this model; use "
                                f"{freeze_names_text()}")
            targets += translated
        frozen = []
        for name, param in self.named_parameters():
            if any(under(name, t) for t in targets):
                param.requires_grad_(False)
                frozen.append(name)
        return frozen


def build_model_from_config(model_config: dict[str, Any]) -> Mask2Former:
    """Build from a model_config dict (the `model_config` of a checkpoint); only sizes differ between variants."""
    config = {**DEFAULT_MODEL_CONFIG, **model_config}
    # As the original (MSDeformAttnPixelDecoder.from_config): the encoder uses the decoder's head count.
    config.setdefault("transformer_nheads", config["nheads"])
    backbone = build_backbone(config["backbone"])
    levels = config["transformer_in_levels"]
    pixel_decoder = MSDeformAttnPixelDecoder(
        list(backbone.channels), list(backbone.strides), conv_dim=config["conv_dim"], mask_dim=config["mask_dim"],
        norm=config["norm"], transformer_enc_layers=config["transformer_enc_layers"],
        transformer_nheads=config["transformer_nheads"],
        transformer_dim_feedforward=config["transformer_dim_feedforward"],
        transformer_n_points=config["transformer_n_points"], transformer_dropout=config["dropout"],
        transformer_in_levels=levels, common_stride=config["common_stride"],
    )
    decoder = MultiScaleMaskedTransformerDecoder(
        config["conv_dim"], num_classes=config["num_classes"], hidden_dim=config["hidden_dim"],
        num_queries=config["num_queries"], nheads=config["nheads"], dim_feedforward=config["dim_feedforward"],
        dec_layers=config["decoder_layers"], pre_norm=config["pre_norm"], mask_dim=config["mask_dim"],
        enforce_input_project=config["enforce_input_proj"], num_feature_levels=DECODER_LEVELS,
    )
    model = Mask2Former(backbone, pixel_decoder, decoder)
    model.model_config = config  # saved next to the weights so a checkpoint rebuilds its own architecture
    return model


def model_config_from_spec(cfg: Any) -> dict[str, Any]:
    """Translate the experiment spec's TAO fields (cfg.model.*) into a model_config."""
    problems: list[str] = []
    check_model(cfg, lambda path, message: problems.append(f"{path}: {message}"))
    if problems:  # only for a cfg that did not come through spec validation, which runs the same rules
        raise SpecError("; ".join(problems))
    model = cfg.model
    spec_backbone = model.backbone
    timm_name = getattr(spec_backbone, "timm_name", None)
    if timm_name:
        backbone: dict[str, Any] = {"kind": "timm", "name": timm_name}
    elif spec_backbone.type == "swin":
        swin = spec_backbone.swin
        if swin.type not in SWIN_PRESETS:
            raise SpecError(f"model.backbone.swin.type: {swin.type!r} is not one of {', '.join(SWIN_PRESETS)}")
        out_indices = list(getattr(swin, "out_indices", None) or (0, 1, 2, 3))
        backbone = {
            "kind": "swin", **{k: list(v) if isinstance(v, tuple) else v for k, v in SWIN_PRESETS[swin.type].items()},
            "window_size": swin.window_size, "pretrain_img_size": swin.pretrain_img_size, "ape": bool(swin.ape),
            "patch_size": getattr(swin, "patch_size", 4), "mlp_ratio": float(getattr(swin, "mlp_ratio", 4.0)),
            "qkv_bias": bool(getattr(swin, "qkv_bias", True)), "drop_rate": float(getattr(swin, "drop_rate", 0.0)),
            "attn_drop_rate": float(getattr(swin, "attn_drop_rate", 0.0)),
            "drop_path_rate": float(getattr(swin, "drop_path_rate", 0.3)), "out_indices": out_indices,
        }
    elif spec_backbone.type == "efficientvit":
        name = spec_backbone.efficientvit.name
        if name not in EFFICIENTVIT_MODELS:
            raise SpecError(
                f"model.backbone.efficientvit.name: {name!r} is not one of {', '.join(EFFICIENTVIT_MODELS)}"
            )
        timm_model, overrides = EFFICIENTVIT_MODELS[name]
        backbone = {"kind": "timm", "name": timm_model, "kwargs": {k: list(v) for k, v in overrides.items()}}
    else:
        raise SpecError(f"model.backbone.type: {spec_backbone.type!r} is not one of swin, efficientvit")

    mask_former, head = model.mask_former, model.sem_seg_head
    in_features = list(head.deformable_transformer_encoder_in_features)
    return {
        "backbone": backbone,
        "num_classes": head.num_classes,
        "num_queries": mask_former.num_object_queries,
        "hidden_dim": mask_former.hidden_dim,
        "nheads": mask_former.nheads,
        "dim_feedforward": mask_former.dim_feedforward,
        # TAO / detectron2 count the prediction from the learnable queries as a layer: DEC_LAYERS 10 = 9 layers.
        "decoder_layers": mask_former.dec_layers - 1,
        "pre_norm": bool(mask_former.pre_norm),
        "enforce_input_proj": bool(mask_former.enforce_input_proj),
        "dropout": float(getattr(mask_former, "dropout", 0.0)),
        "conv_dim": head.convs_dim,
        "mask_dim": head.mask_dim,
        "norm": head.norm,
        "common_stride": head.common_stride,
        "transformer_enc_layers": head.transformer_enc_layers,
        "transformer_nheads": mask_former.nheads,
        "transformer_in_levels": len(in_features),
    }


def build_model(cfg: Any) -> Mask2Former:
    """`build_model(load_spec(...))`: architecture, pretrained backbone weights, activation checkpointing, freeze."""
    model = build_model_from_config(model_config_from_spec(cfg))
    weights = getattr(cfg.model.backbone, "pretrained_weights", None)
    if weights:
        load_backbone_weights(model.backbone, weights)
    train = getattr(cfg, "train", None)
    policy = getattr(train, "activation_checkpoint_policy", "selective")
    model.set_activation_checkpoint(bool(getattr(train, "activation_checkpoint", False)), policy)
    family = getattr(cfg.model.backbone, cfg.model.backbone.type, None)
    if getattr(family, "use_checkpoint", False):  # TAO's backbone-only switch
        model.backbone.set_activation_checkpoint(True, max_stride=_backbone_max_stride(policy))
    freeze = list(getattr(train, "freeze", None) or [])
    if freeze:
        model.freeze(freeze)
    return model
