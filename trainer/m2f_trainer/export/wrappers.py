"""Export wrapper: Mask2Former plus the tensor part of post-processing, with TAO's ONNX outputs per mode.

The wrapper's graph has no data-dependent Python control flow (no loop over the batch, no boolean
indexing), so one trace serves every batch size. What depends on the data (keeping queries above a
threshold, building panoptic segments) stays on the host: `m2f_trainer.export.onnx_runner`.

Outputs (the layout of TAO's exported Mask2Former; H, W = export.input_height / input_width):

- semantic: ``pred_masks`` float32 ``[B,K,H,W]`` per-class scores (class probability x mask probability,
  summed over queries);
- instance: ``pred_masks`` float32 ``[B,k,H,W]`` binary masks (0/1) of the top-k (query, class) pairs,
  ``pred_scores`` float32 ``[B,k]`` (class probability x mean mask probability inside the mask),
  ``pred_classes`` int64 ``[B,k]``; k = min(model.test_topk_per_image, Q*K), ordered by class probability;
- panoptic: ``prob_masks`` float32 ``[B,Q,H,W]`` = pred_scores x pred_masks, ``pred_masks`` float32
  ``[B,Q,H,W]`` mask probabilities, ``pred_scores`` float32 ``[B,Q]`` probability of the best real class
  (0 where the no-object class is the most probable: such queries never form segments),
  ``pred_classes`` int64 ``[B,Q]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from m2f_trainer.model.transformer_decoder import AttentionProbe

OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "semantic": ("pred_masks",),
    "instance": ("pred_masks", "pred_scores", "pred_classes"),
    "panoptic": ("prob_masks", "pred_masks", "pred_scores", "pred_classes"),
}
INPUT_NAME = "inputs"
# Extra outputs of the graph the parity gate runs (never of a published ONNX): layer i's attention decisions.
ATTENTION_OUTPUT_PREFIX = "_attention_"


def mode_of_outputs(names) -> str | None:
    """The mode whose output set is exactly ``names`` (None when no mode matches)."""
    wanted = set(names)
    return next((mode for mode, outputs in OUTPUT_NAMES.items() if set(outputs) == wanted), None)


class ExportWrapper(nn.Module):
    """``wrapper(inputs [B,3,H,W])`` -> the mode's outputs as a tuple in OUTPUT_NAMES order."""

    def __init__(self, model: nn.Module, mode: str, input_size: tuple[int, int], test_topk_per_image: int = 100):
        super().__init__()
        if mode not in OUTPUT_NAMES:
            raise ValueError(f"mode must be one of {', '.join(OUTPUT_NAMES)}, not {mode!r}")
        self.model = model
        self.mode = mode
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.test_topk_per_image = int(test_topk_per_image)

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES[self.mode]

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.outputs_with_internals(inputs)
        return tuple(outputs[name] for name in self.output_names)

    def outputs_with_internals(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named outputs plus the tensors the parity gate needs to recognise ties (``_``-prefixed;
        the exporter drops them as dead code)."""
        raw = self.model(inputs)
        class_logits = raw["pred_logits"]
        # Masks at the export size, as TAO's exported model: every consumer reads them at input resolution.
        mask_logits = F.interpolate(raw["pred_masks"], size=self.input_size, mode="bilinear", align_corners=False)
        if self.mode == "semantic":
            return semantic_outputs(class_logits, mask_logits)
        if self.mode == "instance":
            return instance_outputs(class_logits, mask_logits, self.test_topk_per_image)
        return panoptic_outputs(class_logits, mask_logits)


@contextlib.contextmanager
def probe_attention(model: nn.Module, imposed: list[torch.Tensor] | None = None) -> Iterator[AttentionProbe]:
    """Record (or impose) the masked-attention decisions of ``model``'s forward passes in this block."""
    probe = AttentionProbe(imposed)
    model.decoder.attention_probe = probe
    try:
        yield probe
    finally:
        model.decoder.attention_probe = None


class WithAttentionDecisions(nn.Module):
    """The wrapper's outputs followed by each decoder layer's attention decisions (bool ``[B,Q,HW]``).

    The parity gate traces and runs this graph, then drops the extra outputs before publishing: the
    computation of the named outputs is the same graph either way.
    """

    def __init__(self, wrapper: ExportWrapper):
        super().__init__()
        self.wrapper = wrapper
        self.num_layers = int(wrapper.model.decoder.num_layers)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.wrapper.output_names + tuple(f"{ATTENTION_OUTPUT_PREFIX}{i}" for i in range(self.num_layers))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with probe_attention(self.wrapper.model) as probe:
            outputs = self.wrapper(inputs)
        return outputs + tuple(probe.decisions[: self.num_layers])


def semantic_outputs(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    class_probs = class_logits.softmax(-1)[..., :-1]  # the no-object class is the last logit
    return {"pred_masks": torch.einsum("bqc,bqhw->bchw", class_probs, mask_logits.sigmoid())}


def panoptic_outputs(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    probs = class_logits.softmax(-1)
    real = probs[..., :-1]
    best, classes = real.max(-1)
    # Mask2Former drops a query whose most probable class is no-object; a zero score says so in-graph
    # (TAO reports the best real class regardless; the two agree for object_mask_threshold >= 0.5).
    scores = torch.where(probs[..., -1] > best, torch.zeros_like(best), best)
    mask_probs = mask_logits.sigmoid()
    return {
        "prob_masks": scores[..., None, None] * mask_probs,
        "pred_masks": mask_probs,
        "pred_scores": scores,
        "pred_classes": classes,
        # Second-best real class probability: an argmax whose top two are this close may flip backends;
        # likewise the zeroing above when no-object and the best real class (nearly) tie.
        "_runner_up": real.topk(2, dim=-1).values[..., 1] if real.shape[-1] > 1 else torch.zeros_like(best),
        "_best": best,
        "_no_object": probs[..., -1],
    }


def instance_outputs(class_logits: torch.Tensor, mask_logits: torch.Tensor, topk: int) -> dict[str, torch.Tensor]:
    batch, num_queries, height, width = mask_logits.shape
    num_classes = class_logits.shape[-1] - 1
    class_probs = class_logits.softmax(-1)[..., :-1].flatten(1)  # [B, Q*K], index = query * K + class
    k = min(topk, num_queries * num_classes)
    # sorted=True: TopK's order is then defined (ties aside, see docs/export.md) and rank r means the same
    # candidate in PyTorch and onnxruntime.
    top_probs, top_index = class_probs.topk(k, dim=1, sorted=True)
    classes = top_index % num_classes
    queries = torch.div(top_index, num_classes, rounding_mode="floor")
    selected = mask_logits.gather(1, queries[..., None, None].expand(batch, k, height, width))
    binary = (selected > 0).to(selected.dtype)
    mask_probs = selected.sigmoid()
    flat_binary = binary.flatten(2)
    mask_scores = (mask_probs.flatten(2) * flat_binary).sum(2) / (flat_binary.sum(2) + 1e-6)
    outputs = {
        "pred_masks": binary,
        "pred_scores": top_probs * mask_scores,
        "pred_classes": classes,
        "_top_probs": top_probs,
        "_mask_probs": mask_probs,
    }
    if k < num_queries * num_classes:
        # The best candidate left out: rank k-1 ties with it when the two probabilities are this close.
        outputs["_next_prob"] = class_probs.topk(k + 1, dim=1, sorted=True).values[:, k]
    return outputs
