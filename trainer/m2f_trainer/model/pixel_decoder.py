"""MSDeformAttn pixel decoder: a deformable-attention encoder over res3-res5 plus an FPN step to res2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from m2f_trainer.model.ms_deform_attn import MSDeformAttn
from m2f_trainer.model.position_encoding import cached_constant, sine_position_embedding


class ChannelLayerNorm(nn.Module):
    """detectron2's "LN" for NCHW maps: LayerNorm over channels at every pixel."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


DECODER_LEVELS = 3


def _norm(kind: str, channels: int) -> nn.Module | None:
    """detectron2's get_norm for the names sem_seg_head.norm accepts."""
    factories = {
        "GN": lambda: nn.GroupNorm(32, channels),
        "BN": lambda: nn.BatchNorm2d(channels),
        "SyncBN": lambda: nn.SyncBatchNorm(channels),
        "LN": lambda: ChannelLayerNorm(channels),
    }
    if kind in ("", None):
        return None
    if kind not in factories:
        raise ValueError(f"unsupported norm {kind!r}; use one of {', '.join(factories)} or ''")
    return factories[kind]()


class Conv2dNorm(nn.Conv2d):
    """detectron2's Conv2d with `norm` and `activation` attributes (so original checkpoints load by name)."""

    def __init__(self, *args, norm: nn.Module | None = None, activation: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation
        nn.init.kaiming_uniform_(self.weight, a=1)  # c2_xavier_fill, as detectron2
        if self.bias is not None:
            nn.init.constant_(self.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention then a ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


@cached_constant
def _reference_points(spatial_shapes: tuple[tuple[int, int], ...], device) -> torch.Tensor:
    points = []
    for height, width in spatial_shapes:
        # arange + 0.5 (= linspace(0.5, n - 0.5, n) exactly): the TorchScript ONNX exporter computes
        # linspace in float64, which would make the GridSample grid float64 (no onnxruntime kernel).
        ref_y, ref_x = torch.meshgrid(
            (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height,
            (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width,
            indexing="ij",
        )
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    ref = torch.cat(points, 0)
    return ref[None, :, None, :].expand(1, -1, len(spatial_shapes), -1).contiguous()


class DeformableEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.activation_checkpoint = False

    @staticmethod
    def reference_points(spatial_shapes, batch: int, device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]; `[B, S, L, 2]` (no padding: valid ratios are 1)."""
        return _reference_points(tuple(spatial_shapes), device).expand(batch, -1, -1, -1)

    def forward(self, src, pos, spatial_shapes):
        reference_points = self.reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            if self.activation_checkpoint and torch.is_grad_enabled():
                src = checkpoint(layer, src, pos, reference_points, spatial_shapes, use_reentrant=False)
            else:
                src = layer(src, pos, reference_points, spatial_shapes)
        return src


class DeformableTransformer(nn.Module):
    """Holds the level embedding and the encoder (names as the original `transformer.*`)."""

    def __init__(self, d_model, n_heads, num_layers, d_ffn, n_levels, n_points, dropout=0.0):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        nn.init.normal_(self.level_embed)
        self.encoder = DeformableEncoder(
            num_layers, d_model=d_model, d_ffn=d_ffn, n_levels=n_levels, n_heads=n_heads, n_points=n_points,
            dropout=dropout,
        )


class MSDeformAttnPixelDecoder(nn.Module):
    """Returns `(mask_features [B,mask_dim,H/4,W/4], multi_scale_features [1/32, 1/16, 1/8])`.

    Runs in fp32 even under autocast: the sampling offsets and bilinear weights lose too much in half precision.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_enc_layers: int = 6,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_n_points: int = 4,
        transformer_dropout: float = 0.0,
        transformer_in_levels: int = 3,
        common_stride: int = 4,
    ):
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError("in_channels and in_strides must have the same length")
        self.in_strides = list(in_strides)
        self.num_levels = transformer_in_levels
        transformer_channels = in_channels[-transformer_in_levels:]
        # Coarsest first, as the original (res5, res4, res3).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for ch in transformer_channels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = DeformableTransformer(
            conv_dim, transformer_nheads, transformer_enc_layers, transformer_dim_feedforward,
            transformer_in_levels, transformer_n_points, transformer_dropout,
        )
        self.mask_dim = mask_dim
        self.mask_features = Conv2dNorm(conv_dim, mask_dim, kernel_size=1)
        self.common_stride = common_stride
        min_transformer_stride = min(in_strides[-transformer_in_levels:])
        self.num_fpn_levels = int(math.log2(min_transformer_stride) - math.log2(common_stride))
        use_bias = _norm(norm, conv_dim) is None
        self.lateral_convs: list[nn.Module] = []
        self.output_convs: list[nn.Module] = []
        for idx, ch in enumerate(in_channels[: self.num_fpn_levels]):
            lateral = Conv2dNorm(ch, conv_dim, kernel_size=1, bias=use_bias, norm=_norm(norm, conv_dim))
            output = Conv2dNorm(
                conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias, norm=_norm(norm, conv_dim),
                activation=nn.ReLU(),
            )
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.lateral_convs.reverse()
        self.output_convs.reverse()

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            return self._forward([f.float() for f in features])

    def _forward(self, features):
        coarse_first = features[::-1][: self.num_levels]
        srcs, pos_list, spatial_shapes = [], [], []
        for level, feature in enumerate(coarse_first):
            batch, _, height, width = feature.shape
            srcs.append(self.input_proj[level](feature).flatten(2).transpose(1, 2))
            pos = sine_position_embedding(batch, height, width, srcs[-1].shape[-1] // 2, device=feature.device)
            pos_list.append(pos.flatten(2).transpose(1, 2) + self.transformer.level_embed[level].view(1, 1, -1))
            spatial_shapes.append((height, width))
        memory = self.transformer.encoder(torch.cat(srcs, 1), torch.cat(pos_list, 1), spatial_shapes)

        outputs = []
        for (height, width), level_memory in zip(
            spatial_shapes, memory.split([h * w for h, w in spatial_shapes], dim=1), strict=True
        ):
            outputs.append(level_memory.transpose(1, 2).reshape(memory.shape[0], -1, height, width))
        for idx, feature in enumerate(features[: self.num_fpn_levels][::-1]):
            lateral = self.lateral_convs[idx](feature)
            merged = lateral + F.interpolate(outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(self.output_convs[idx](merged))
        # The decoder always reads three levels (the original's maskformer_num_feature_levels), taking FPN
        # outputs when fewer levels go through the deformable encoder.
        return self.mask_features(outputs[-1]), outputs[:DECODER_LEVELS]
