"""What the model builder needs from a spec, checked at validation time so that a spec which validates builds.

The operator's InvalidSpec and `m2f validate` run these rules without torch; the trainer's builder relies on
them instead of finding out when the pods already run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RES_NAMES = ("res2", "res3", "res4", "res5")
GROUP_NORM_GROUPS = 32  # the pixel decoder's GroupNorm(32, convs_dim), as in the original

# This model's top-level modules, and TAO's (detectron2's) module names for the same parts. TAO's
# documented `train.freeze` example is ["backbone", "transformer.encoder", "input_proj"].
TOP_LEVEL_MODULES = ("backbone", "pixel_decoder", "decoder")
FREEZE_ALIASES: dict[str, tuple[str, ...]] = {
    "sem_seg_head": ("pixel_decoder", "decoder"),
    "sem_seg_head.pixel_decoder": ("pixel_decoder",),
    "sem_seg_head.predictor": ("decoder",),
    "predictor": ("decoder",),
    "transformer.encoder": ("pixel_decoder.transformer.encoder",),
    "transformer.decoder": ("decoder",),
    "input_proj": ("pixel_decoder.input_proj", "decoder.input_proj"),
}


def freeze_targets(name: str) -> tuple[str, ...]:
    """This model's parameter-name prefixes for a `train.freeze` entry, TAO's names translated (the longest
    alias that is the entry or a dotted prefix of it wins; the rest of the entry is kept)."""
    name = name.rstrip(".")
    for alias in sorted(FREEZE_ALIASES, key=len, reverse=True):
        if name == alias or name.startswith(alias + "."):
            rest = name[len(alias):]
            return tuple(target + rest for target in FREEZE_ALIASES[alias])
    return (name,)


def freeze_names_text() -> str:
    return f"{', '.join(TOP_LEVEL_MODULES)} (or a dotted part of them), or TAO's {', '.join(FREEZE_ALIASES)}"


def check_model(cfg: Any, add: Callable[[str, str], None]) -> None:
    """Report, through `add(path, message)`, every model setting the builder cannot honour."""
    model = cfg.model
    backbone = model.backbone
    if backbone.timm_name is None and backbone.type == "swin":
        swin = backbone.swin
        if list(swin.out_indices) != [0, 1, 2, 3]:
            add("model.backbone.swin.out_indices", f"Mask2Former needs all four stages [0, 1, 2, 3], got {swin.out_indices}")
        if swin.qk_scale is not None:
            add("model.backbone.swin.qk_scale", f"only the default head_dim ** -0.5 (null) is supported, got {swin.qk_scale}")
        if not swin.patch_norm:
            add("model.backbone.swin.patch_norm", "false is not supported (the Swin stem always normalises)")

    head, decoder = model.sem_seg_head, model.mask_former
    in_features = list(head.deformable_transformer_encoder_in_features)
    if in_features != list(RES_NAMES[-len(in_features):]):
        add("model.sem_seg_head.deformable_transformer_encoder_in_features",
            f"must be the coarsest levels in order (e.g. ['res3', 'res4', 'res5']), got {in_features}")
    if head.convs_dim % GROUP_NORM_GROUPS:  # the input projections use GroupNorm(32) whatever `norm` says
        add("model.sem_seg_head.convs_dim", f"must be a multiple of {GROUP_NORM_GROUPS} (GroupNorm(32)), got {head.convs_dim}")
    if decoder.hidden_dim % 4:  # the sine position encoding splits hidden_dim / 2 features into sin/cos pairs
        add("model.mask_former.hidden_dim", f"must be a multiple of 4 (sine position encoding), got {decoder.hidden_dim}")
    elif decoder.hidden_dim % decoder.nheads:
        add("model.mask_former.hidden_dim",
            f"must be a multiple of model.mask_former.nheads ({decoder.nheads}), got {decoder.hidden_dim}")
    # The deformable encoder runs at convs_dim with the decoder's head count, as the original.
    if head.transformer_enc_layers and head.convs_dim % decoder.nheads:
        add("model.sem_seg_head.convs_dim",
            f"must be a multiple of model.mask_former.nheads ({decoder.nheads}) for the deformable encoder, "
            f"got {head.convs_dim}")

    for index, name in enumerate(getattr(getattr(cfg, "train", None), "freeze", None) or []):
        if not name or any(t.split(".")[0] not in TOP_LEVEL_MODULES for t in freeze_targets(name)):
            add(f"train.freeze[{index}]", f"{name!r} names no module; use {freeze_names_text()}")
