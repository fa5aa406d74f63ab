"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch: grid_sample, no custom CUDA op."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from m2f_trainer.model.position_encoding import cached_constant

# Which bilinear sampler ms_deform_attn_core uses: F.grid_sample (training, inference and ONNX opset >= 16,
# where it exports as GridSample) or gather_bilinear (ONNX opsets before GridSample existed).
_GATHER_SAMPLING: ContextVar[bool] = ContextVar("gather_sampling", default=False)


@contextmanager
def gather_sampling(enabled: bool = True) -> Iterator[None]:
    """Within the block (this thread / context only) deformable attention samples with `gather_bilinear`."""
    token = _GATHER_SAMPLING.set(enabled)
    try:
        yield
    finally:
        _GATHER_SAMPLING.reset(token)


def gather_bilinear(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)`` from
    index arithmetic and one Gather, so that it exports to ONNX opsets without GridSample (>= 11).

    value `[N, C, H, W]`, grid `[N, Hg, Wg, 2]` in [-1, 1] (x, y) -> `[N, C, Hg, Wg]`.
    """
    batch, channels, height, width = value.shape
    _, grid_h, grid_w, _ = grid.shape
    # grid_sample's unnormalisation for align_corners=False: -1 and 1 are the outer edges of the border pixels.
    x = ((grid[..., 0] + 1) * width - 1) / 2
    y = ((grid[..., 1] + 1) * height - 1) / 2
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    # The four neighbours, stacked on a new dim 1: (x0, y0), (x1, y0), (x0, y1), (x1, y1).
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], 1)  # [N, 4, Hg, Wg]
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], 1)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    # Zero padding: a neighbour outside the image contributes nothing; its index is clamped (in float, so
    # that far-away points cannot overflow the integer cast) to any valid pixel and its weight zeroed.
    inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    weights = weights * inside.to(weights.dtype)
    xi = xs.clamp(0, width - 1).to(torch.int64)
    yi = ys.clamp(0, height - 1).to(torch.int64)
    # One Gather over the batch-flattened pixels: an index per sample, not per sample and channel as
    # GatherElements on [N, C, H*W] would need (C times the index memory).
    offsets = torch.arange(batch, device=value.device, dtype=torch.int64).view(batch, 1, 1, 1) * (height * width)
    index = (offsets + yi * width + xi).reshape(-1)
    pixels = value.flatten(2).transpose(1, 2).reshape(-1, channels)  # [N*H*W, C]
    corners = pixels.index_select(0, index).view(batch, 4, grid_h, grid_w, channels)
    sampled = (corners * weights[..., None]).sum(1)  # [N, Hg, Wg, C]
    return sampled.permute(0, 3, 1, 2)


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The reference `ms_deform_attn_core_pytorch`.

    value `[B, S, heads, D]`, sampling_locations `[B, Q, heads, L, P, 2]` in [0, 1] (x, y),
    attention_weights `[B, Q, heads, L, P]` -> `[B, Q, heads*D]`. Samples with F.grid_sample, or with
    `gather_bilinear` inside `gather_sampling()`.
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    gather = _GATHER_SAMPLING.get()
    # Accumulate level by level instead of stacking every level's samples: the stacked tensor
    # (B*heads, D, Q, L*P) and its weighted copy are the largest activations of the pixel decoder.
    output = None
    for level, (height, width) in enumerate(spatial_shapes):
        value_l = value_per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*heads, Q, P, 2]
        if gather:
            sampled = gather_bilinear(value_l, grid_l)
        else:
            sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights_l = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        contribution = (sampled * weights_l).sum(-1)  # [B*heads, D, Q]
        output = contribution if output is None else output + contribution
    return output.view(batch, heads * head_dim, queries).transpose(1, 2).contiguous()


@cached_constant
def _offset_normalizer(spatial_shapes: tuple[tuple[int, int], ...], device, dtype) -> torch.Tensor:
    return torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=device)


class MSDeformAttn(nn.Module):
    """Deformable attention over `n_levels` feature maps with `n_points` samples per head and level."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As Deformable DETR: offsets start on a ring of directions, one per head, growing with the point index.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query `[B, Q, C]`, reference_points `[B, Q, L, 2]`, input_flatten `[B, S, C]` -> `[B, Q, C]`."""
        batch, queries, _ = query.shape
        head_dim = self.d_model // self.n_heads
        value = self.value_proj(input_flatten).view(batch, -1, self.n_heads, head_dim)
        offsets = self.sampling_offsets(query).view(batch, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, queries, self.n_heads, self.n_levels, self.n_points)
        # (width, height) per level: offsets are in pixels of each level, locations in [0, 1].
        normalizer = _offset_normalizer(tuple(spatial_shapes), query.device, query.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        output = ms_deform_attn_core(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
