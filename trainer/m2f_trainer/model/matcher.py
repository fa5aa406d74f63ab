"""Hungarian matching of predicted masks to ground-truth segments (class, BCE and dice costs on points)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from m2f_trainer.model.point_sampling import point_sample

MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]


def pairwise_sigmoid_ce_cost(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid BCE of every prediction ``[...,Q,P]`` vs every target ``[...,N,P]`` -> ``[...,Q,N]``."""
    num_points = pred_logits.shape[-1]
    cost_if_positive = F.binary_cross_entropy_with_logits(
        pred_logits, torch.ones_like(pred_logits), reduction="none"
    )
    cost_if_negative = F.binary_cross_entropy_with_logits(
        pred_logits, torch.zeros_like(pred_logits), reduction="none"
    )
    cost = cost_if_positive @ target.transpose(-1, -2) + cost_if_negative @ (1 - target).transpose(-1, -2)
    return cost / num_points


def pairwise_dice_cost(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every prediction ``[...,Q,P]`` vs every target ``[...,N,P]``."""
    probs = pred_logits.sigmoid()
    numerator = 2 * (probs @ target.transpose(-1, -2))
    denominator = probs.sum(-1)[..., :, None] + target.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def target_canvas(targets: list[dict]) -> tuple[int, int]:
    """(H, W) that holds every target's masks: the batch's padded canvas."""
    return max(t["masks"].shape[-2] for t in targets), max(t["masks"].shape[-1] for t in targets)


def pad_to_canvas(masks: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``[...,h,w]`` masks bottom/right to ``canvas`` (as the original's nested tensors)."""
    height, width = canvas
    if masks.shape[-2:] == canvas:
        return masks
    return F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2]))


def sample_target_points(targets: list[dict], point_coords: torch.Tensor) -> torch.Tensor:
    """Target masks of every image at its points, ``[B, N_max, P]`` zero-padded to the largest segment count.

    Images are sampled one at a time so that only one image's masks are ever converted to float. Targets of
    different sizes are zero-padded bottom/right to the largest first (as the original's nested tensors), so
    that the normalised points address the same padded canvas as the predictions.
    """
    canvas = target_canvas(targets)
    sampled = []
    for image_index, target in enumerate(targets):
        masks = pad_to_canvas(target["masks"].to(device=point_coords.device, dtype=torch.float32), canvas)
        sampled.append(
            point_sample(masks[None], point_coords[image_index : image_index + 1], align_corners=False)[0]
        )
    return pad_sequence(sampled, batch_first=True)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising ``w_class*(-p[c]) + w_mask*BCE + w_dice*dice``.

    Mask costs are computed on ``num_points`` points drawn uniformly at random, the same points for the
    predictions and the targets of one image, as in the original. Unmatched queries are the no-object set.
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice cannot all be 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[torch.Tensor]:
        """Per image the ``[Q, N_i]`` matching cost in fp32 (on the predictions' device)."""
        return [
            cost[:, : len(t["labels"])]
            for cost, t in zip(self._padded_costs(outputs, targets), targets, strict=True)
        ]

    def _padded_costs(self, outputs: dict, targets: list[dict]) -> torch.Tensor:
        """``[B, Q, N_max]`` costs of the whole batch, targets zero-padded to the largest count."""
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        device = pred_masks.device
        # One draw per image, in batch order: the same random stream as the original's per-image loop.
        point_coords = torch.cat([torch.rand(1, self.num_points, 2, device=device) for _ in targets])
        # Images with fewer segments get empty masks of class 0 as padding; their columns are cut off later.
        target_labels = pad_sequence([t["labels"].to(device) for t in targets], batch_first=True)
        # The costs are compared against each other, so low precision would reorder the assignment.
        with torch.autocast(device_type=device.type, enabled=False):
            # Queries as channels: one grid_sample for the whole batch instead of one per image.
            pred_points = point_sample(pred_masks.float(), point_coords, align_corners=False)  # [B,Q,P]
            target_points = sample_target_points(targets, point_coords)  # [B,N_max,P]
            class_probs = pred_logits.float().softmax(-1)  # [B,Q,K+1]
            cost_class = -class_probs.gather(
                2, target_labels[:, None, :].expand(-1, class_probs.shape[1], -1)
            )
            cost_mask = pairwise_sigmoid_ce_cost(pred_points, target_points)
            cost_dice = pairwise_dice_cost(pred_points, target_points)
            return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> MatchIndices:
        """``outputs``: ``pred_logits [B,Q,K+1]``, ``pred_masks [B,Q,h,w]``; targets: ``labels``, ``masks [N,H,W]``.

        Returns per image ``(pred_indices, target_indices)`` int64 CPU tensors of length ``min(Q, N)``,
        sorted by ``pred_indices``.
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(
                f"HungarianMatcher: {len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} predictions"
            )
        # A single device-to-host copy for the whole batch: one synchronisation instead of one per image.
        costs = self._padded_costs(outputs, targets).cpu()
        if not torch.isfinite(costs).all():
            raise FloatingPointError(
                "HungarianMatcher: the matching cost contains NaN/inf (non-finite predictions: training diverged)"
            )
        indices = []
        for cost, target in zip(costs, targets, strict=True):
            pred_indices, target_indices = linear_sum_assignment(cost[:, : len(target["labels"])].numpy())
            indices.append(
                (
                    torch.as_tensor(pred_indices, dtype=torch.int64),
                    torch.as_tensor(target_indices, dtype=torch.int64),
                )
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )
