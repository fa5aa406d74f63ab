"""Masked-attention transformer decoder of Mask2Former (parameter names as the original predictor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from m2f_trainer.model.position_encoding import sine_position_embedding

# Additive bias for masked keys: finite so that softmax never sees an all -inf row (NaN) and so that
# the exported ONNX graph needs no -inf constant; exp(-1e4) is exactly 0 in fp32 and bf16 softmax.
MASKED_BIAS = -1e4


class MultiheadAttention(nn.Module):
    """`nn.MultiheadAttention`'s parameters (in_proj_weight/bias, out_proj) computed with SDPA, batch-first.

    Takes an additive float mask broadcastable to `[B, heads, Q, S]`, so one `[B, 1, Q, S]` mask serves
    every head instead of the original's per-head `repeat`.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"hidden_dim {embed_dim} must be divisible by nheads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # The original re-initialises every matrix of its attention layers with xavier_uniform_.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, query, key, value, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        batch, q_len, dim = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = F.linear(query, w_q, b_q).view(batch, q_len, heads, head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(batch, -1, heads, head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, q_len, dim))


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, tgt, memory, attn_bias, pos, query_pos):
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            tgt2 = self.multihead_attn(tgt2 + query_pos, memory + pos, memory, attn_bias)
            return tgt + self.dropout(tgt2)
        tgt2 = self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_bias)
        return self.norm(tgt + self.dropout(tgt2))


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, tgt, query_pos):
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            q = tgt2 + query_pos
            return tgt + self.dropout(self.self_attn(q, q, tgt2))
        q = tgt + query_pos
        return self.norm(tgt + self.dropout(self.self_attn(q, q, tgt)))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, tgt):
        if self.normalize_before:
            return tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(self.norm(tgt))))))
        return self.norm(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class AttentionProbe:
    """Records the masked-attention decisions of one forward pass, and can impose other ones.

    For the export parity gate: a mask logit within float rounding of 0 can fall on either side of the
    ``sigmoid < 0.5`` cut in two backends, and one flipped key shifts every later prediction a little.
    Replaying the other backend's decisions separates that knife edge from a wrong export.
    ``decisions[i]`` (bool ``[B,Q,HW]``, True = masked) is what this pass computed for decoder layer i
    from ``logits[i]``; with ``imposed``, layer i attends with ``imposed[i]`` instead.
    """

    def __init__(self, imposed: list[torch.Tensor] | None = None):
        self.imposed = imposed
        self.logits: list[torch.Tensor] = []
        self.decisions: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        index = len(self.decisions)
        self.logits.append(logits)
        self.decisions.append(masked)
        if self.imposed is not None and index < len(self.imposed):
            return self.imposed[index].to(device=masked.device, dtype=torch.bool)
        return masked


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip(dims, [hidden_dim] * (num_layers - 1) + [output_dim], strict=True)
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """`dec_layers` rounds of masked cross-attention -> self-attention -> FFN over levels 1/32, 1/16, 1/8.

    Returns the `dec_layers + 1` predictions (the first from the learnable queries alone) as
    `(class_logits [B,Q,K+1], mask_logits [B,Q,H/4,W/4])` pairs; the no-object class is the last logit.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.num_heads, self.num_layers, self.num_feature_levels = nheads, dec_layers, num_feature_levels
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learnable query features
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positions
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.constant_(proj.bias, 0)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.activation_checkpoint = False
        self.attention_probe: AttentionProbe | None = None  # set by the export parity gate only

    def forward(self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor):
        srcs, positions, sizes = [], [], []
        batch = mask_features.shape[0]
        for level in range(self.num_feature_levels):
            feature = multi_scale_features[level]
            height, width = feature.shape[-2:]
            sizes.append((height, width))
            src = self.input_proj[level](feature).flatten(2) + self.level_embed.weight[level][None, :, None]
            srcs.append(src.transpose(1, 2))  # [B, HW, C]
            pos = sine_position_embedding(batch, height, width, src.shape[1] // 2, device=src.device, dtype=src.dtype)
            positions.append(pos.flatten(2).transpose(1, 2))

        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)

        predictions = []
        class_logits, mask_logits, attn_bias = self.prediction_heads(output, mask_features, sizes[0])
        predictions.append((class_logits, mask_logits))
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            if self.activation_checkpoint and torch.is_grad_enabled():
                output = checkpoint(
                    self._layer, i, output, srcs[level], attn_bias, positions[level], query_pos, use_reentrant=False
                )
            else:
                output = self._layer(i, output, srcs[level], attn_bias, positions[level], query_pos)
            class_logits, mask_logits, attn_bias = self.prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels]
            )
            predictions.append((class_logits, mask_logits))
        return predictions

    def _layer(self, i, output, memory, attn_bias, pos, query_pos):
        output = self.transformer_cross_attention_layers[i](output, memory, attn_bias, pos, query_pos)
        output = self.transformer_self_attention_layers[i](output, query_pos)
        return self.transformer_ffn_layers[i](output)

    def prediction_heads(self, output, mask_features, attn_size):
        decoder_output = self.decoder_norm(output)
        class_logits = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        mask_logits = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        with torch.no_grad():
            small = F.interpolate(mask_logits.detach(), size=attn_size, mode="bilinear", align_corners=False)
            masked = small.sigmoid().flatten(2) < 0.5  # [B, Q, HW]
            # A query whose mask is empty at this level attends everywhere (else its softmax row is undefined).
            # Out-of-place on purpose: the TorchScript ONNX exporter has no symbolic for in-place `&=`.
            masked = masked & ~masked.all(-1, keepdim=True)
            if self.attention_probe is not None:
                masked = self.attention_probe(small.flatten(2), masked)
            # One [B, 1, Q, HW] bias broadcast over the heads, in the attention's dtype.
            attn_bias = torch.zeros(masked.shape, dtype=mask_features.dtype, device=masked.device)
            attn_bias = attn_bias.masked_fill(masked, MASKED_BIAS).unsqueeze(1)
        return class_logits, mask_logits, attn_bias
