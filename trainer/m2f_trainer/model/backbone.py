"""timm backbones returning res2..res5 (strides 4/8/16/32, NCHW): Swin as the original D2SwinTransformer, any
`features_only` model (EfficientViT, ResNet, ...), and loading of local pretrained weights."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    window_partition,
    window_reverse,
)
from timm.models.swin_transformer import checkpoint_filter_fn as swin_checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from m2f_trainer.errors import SpecError
from m2f_trainer.model.position_encoding import cached_constant

log = logging.getLogger(__name__)

SWIN_PRESETS: dict[str, dict] = {
    "tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
    "large": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)},
}

# TAO EfficientViT names -> (timm model, overrides). timm registers no l0: MIT's l0 is l1's widths
# with depths (1, 1, 1, 4, 4), which timm builds from efficientvit_l1 with that override.
EFFICIENTVIT_MODELS: dict[str, tuple[str, dict]] = {
    **{f"b{i}": (f"efficientvit_b{i}", {}) for i in range(4)},
    "l0": ("efficientvit_l1", {"depths": (1, 1, 1, 4, 4)}),
    **{f"l{i}": (f"efficientvit_l{i}", {}) for i in range(1, 4)},
}

FEATURE_STRIDES = (4, 8, 16, 32)


class _PadThenShiftSwinBlock(SwinTransformerBlock):
    """timm's block with the original window attention order: pad to window multiples, then shift.

    timm shifts first and pads after, which differs from the original Swin (and from HF) whenever a
    feature map is not a multiple of the window (e.g. 96 = 13*7 + 5 at 384 px); weights stay timm's.
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, channels = x.shape
        win_h, win_w = self.window_size
        pad_h, pad_w = (win_h - height % win_h) % win_h, (win_w - width % win_w) % win_w
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        _, padded_h, padded_w, _ = x.shape
        shifted = any(self.shift_size)
        if shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        attn_mask = _shift_mask(self, padded_h, padded_w, x.device, x.dtype) if shifted else None
        windows = window_partition(x, self.window_size).view(-1, self.window_area, channels)
        windows = self.attn(windows, mask=attn_mask).view(-1, win_h, win_w, channels)
        x = window_reverse(windows, self.window_size, padded_h, padded_w)
        if shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


@cached_constant
def _shift_mask(block: SwinTransformerBlock, height: int, width: int, device, dtype) -> torch.Tensor:
    """The -100/0 region mask of a shifted block for a padded map (window and shift are fixed per block)."""
    return block.get_attn_mask(torch.empty(1, height, width, 1, device=device, dtype=dtype))


class SwinBackbone(nn.Module):
    """timm Swin modules driven like detectron2's D2SwinTransformer: optional APE, a LayerNorm per output.

    Parameter names are timm's (`patch_embed`, `layers.i.blocks.j`, downsample at the start of a stage) plus
    the original's `norm{i}` and `absolute_pos_embed`, so Microsoft, timm and detectron2 weights all load.
    Any input that is a multiple of 32 works: windows are padded and shift masks built per input size.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        window_size: int = 7,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        qkv_bias: bool = True,
        ape: bool = False,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
    ):
        super().__init__()
        swin = SwinTransformer(
            img_size=pretrain_img_size, patch_size=patch_size, embed_dim=embed_dim, depths=tuple(depths),
            num_heads=tuple(num_heads), window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            num_classes=0, always_partition=True, strict_img_size=False,
        )
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers[: max(out_indices) + 1]
        for stage in self.layers:
            for block in stage.blocks:
                block.__class__ = _PadThenShiftSwinBlock
                block.attn.fused_attn = True  # SDPA; timm keeps it opt-in for windowed attention
        self.out_indices = tuple(out_indices)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.channels = [dims[i] for i in self.out_indices]
        self.strides = [patch_size * 2**i for i in self.out_indices]
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        self.checkpointed_stages: frozenset[int] = frozenset()
        self._stage_strides = [patch_size * 2**i for i in range(len(self.layers))]

    def set_activation_checkpoint(self, enabled: bool, max_stride: int | None = None) -> None:
        """Recompute the blocks of the stages at stride <= `max_stride` (all stages: None) in backward."""
        self.checkpointed_stages = frozenset(
            i for i, stride in enumerate(self._stage_strides) if enabled and (max_stride is None or stride <= max_stride)
        )

    @property
    def activation_checkpoint(self) -> bool:
        return bool(self.checkpointed_stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # NHWC
        if self.absolute_pos_embed is not None:
            ape = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + ape.permute(0, 2, 3, 1)
        outputs = []
        for i, stage in enumerate(self.layers):
            x = stage.downsample(x)
            for block in stage.blocks:
                if i in self.checkpointed_stages and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i in self.out_indices:
                outputs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return outputs


class TimmFeatureBackbone(nn.Module):
    """Any timm `features_only` model, keeping the outputs at strides 4, 8, 16 and 32."""

    def __init__(self, name: str, **kwargs):
        super().__init__()
        probe = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        reductions = probe.feature_info.reduction()
        missing = [s for s in FEATURE_STRIDES if s not in reductions]
        if missing:
            raise SpecError(
                f"model.backbone.timm_name: {name!r} has no features at strides {missing} (it has {reductions})"
            )
        out_indices = [reductions.index(s) for s in FEATURE_STRIDES]
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices, **kwargs)
        self.channels = self.body.feature_info.channels()
        self.strides = self.body.feature_info.reduction()
        self.activation_checkpoint = False

    def set_activation_checkpoint(self, enabled: bool, max_stride: int | None = None) -> None:
        """timm checkpoints a features_only model all or nothing, so `max_stride` cannot narrow it here."""
        self.activation_checkpoint = enabled

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.body.set_grad_checkpointing(self.activation_checkpoint)
        return list(self.body(x))


def build_backbone(config: dict) -> nn.Module:
    """`config` is the `backbone` part of a model_config (see docs/model.md)."""
    kind = config.get("kind")
    if kind == "swin":
        return SwinBackbone(
            embed_dim=config["embed_dim"], depths=tuple(config["depths"]), num_heads=tuple(config["num_heads"]),
            window_size=config.get("window_size", 7), pretrain_img_size=config.get("pretrain_img_size", 224),
            patch_size=config.get("patch_size", 4), mlp_ratio=config.get("mlp_ratio", 4.0),
            drop_path_rate=config.get("drop_path_rate", 0.3), drop_rate=config.get("drop_rate", 0.0),
            attn_drop_rate=config.get("attn_drop_rate", 0.0), qkv_bias=config.get("qkv_bias", True),
            ape=config.get("ape", False),
            out_indices=tuple(config.get("out_indices", (0, 1, 2, 3))),
        )
    if kind == "timm":
        try:
            return TimmFeatureBackbone(config["name"], **config.get("kwargs", {}))
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise SpecError(f"model.backbone: cannot build timm model {config['name']!r}: {exc}") from exc
    raise SpecError(f"model.backbone.type: unsupported backbone kind {kind!r}; use swin, efficientvit or timm_name")


# Keys in ImageNet classification checkpoints that a segmentation backbone has no use for.
_CLASSIFIER_KEYS = ("head.", "norm.", "fc.", "classifier.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable / not a torch checkpoint: say which file
        raise SpecError(f"model.backbone.pretrained_weights: cannot read {path}: {exc}") from exc
    if isinstance(payload, dict):
        for key in ("model", "state_dict"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict):
        raise SpecError(f"model.backbone.pretrained_weights: {path} holds no state_dict")
    return payload


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load Microsoft Swin (`{"model": ...}`), timm or detectron2-style weights; return (missing, unexpected)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"model.backbone.pretrained_weights: file not found: {path}")
    state = _read_state_dict(path)
    state = {k.removeprefix("backbone.").removeprefix("module."): v for k, v in state.items()}
    own_keys = set(backbone.state_dict())
    if isinstance(backbone, SwinBackbone):
        state = swin_checkpoint_filter_fn(state, backbone)
        if "absolute_pos_embed" in state and backbone.absolute_pos_embed is not None:
            state["absolute_pos_embed"] = _ape_to_nchw(state["absolute_pos_embed"], backbone.absolute_pos_embed)
    elif isinstance(backbone, TimmFeatureBackbone):
        state = {_features_only_key(k, own_keys): v for k, v in state.items()}
    ignored = [k for k in state if k not in own_keys and k.startswith(_CLASSIFIER_KEYS)]
    state = {k: v for k, v in state.items() if k not in ignored}
    if not own_keys & set(state):
        raise SpecError(f"model.backbone.pretrained_weights: no parameter of {path} matches the backbone")
    result = backbone.load_state_dict(state, strict=False)
    log.info("loaded backbone weights from %s (ignored classifier keys: %d)", path, len(ignored))
    if result.missing_keys:
        log.warning("backbone weights %s: missing keys: %s", path, ", ".join(result.missing_keys))
    if result.unexpected_keys:
        log.warning("backbone weights %s: unexpected keys: %s", path, ", ".join(result.unexpected_keys))
    return list(result.missing_keys), list(result.unexpected_keys)


def _features_only_key(key: str, own_keys: set[str]) -> str:
    """timm checkpoints name `stages.0.x`; a flattened features_only model names it `body.stages_0.x`."""
    candidates = [f"body.{key}"]
    parts = key.split(".", 2)
    if len(parts) == 3:
        candidates.append(f"body.{parts[0]}_{parts[1]}.{parts[2]}")
    return next((c for c in candidates if c in own_keys), key)


def _ape_to_nchw(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Microsoft checkpoint stores APE as [1, HW, C]; ours is [1, C, H, W] like detectron2's."""
    if value.dim() == 3:
        side = int(value.shape[1] ** 0.5)
        value = value.transpose(1, 2).reshape(1, -1, side, side)
    if value.shape[-2:] != target.shape[-2:]:
        value = F.interpolate(value, size=target.shape[-2:], mode="bicubic")
    return value
