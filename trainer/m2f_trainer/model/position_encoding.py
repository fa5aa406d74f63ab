"""Sine position embedding of DETR / Mask2Former (normalised, no padding mask: inputs are fully valid)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch


def cached_constant(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Memoise a shape-only constant (positions, masks, grids) by its hashable arguments.

    The step is launch-bound at Mask2Former's sizes, and these constants are dozens of small kernels each.
    When tracing, compiling or exporting, compute them instead so that they stay shape-dependent in graphs.
    """
    cached = functools.lru_cache(maxsize=64)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return fn(*args)
        # Normal (not inference-mode) tensors without grad: usable by any later training step.
        with torch.inference_mode(False), torch.no_grad():
            return cached(*args)

    return wrapper


def sine_position_embedding(
    batch_size: int,
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
) -> torch.Tensor:
    """`[B, 2*num_pos_feats, H, W]` embedding, y features first then x, as PositionEmbeddingSine(normalize=True).

    The batch dimension is an expanded view of one cached `[1, C, H, W]` map. The original builds it from a cumulative sum over an all-valid mask; with no padding mask that cumsum is
    simply 1..H (1..W), so we write it as an arange. Computed in fp32 and cast at the end so that bf16/fp16
    autocast does not quantise the positions.
    """
    embedding = _sine_embedding(height, width, num_pos_feats, device, dtype, temperature)
    return embedding.expand(batch_size, -1, -1, -1)


@cached_constant
def _sine_embedding(height, width, num_pos_feats, device, dtype, temperature) -> torch.Tensor:
    scale = 2 * math.pi
    eps = 1e-6
    y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y_embed = y_embed / (height + eps) * scale
    x_embed = x_embed / (width + eps) * scale

    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)

    pos_x = x_embed[:, None] / dim_t  # [W, F]
    pos_y = y_embed[:, None] / dim_t  # [H, F]
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat(
        (pos_y[:, None, :].expand(height, width, num_pos_feats), pos_x[None, :, :].expand(height, width, num_pos_feats)),
        dim=2,
    )  # [H, W, 2F]
    return pos.permute(2, 0, 1).unsqueeze(0).to(dtype).contiguous()
