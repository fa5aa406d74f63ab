"""Mask2Former set criterion: Hungarian matching, then weighted CE + point-sampled sigmoid BCE + dice."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from m2f_trainer.model.matcher import HungarianMatcher, MatchIndices, pad_to_canvas, target_canvas
from m2f_trainer.model.point_sampling import (
    calculate_uncertainty,
    point_sample,
    uncertain_point_coords_with_randomness,
)

LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice")


def sigmoid_ce_loss(
    point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: torch.Tensor
) -> torch.Tensor:
    """Sigmoid BCE averaged over the points of each mask, summed over masks, divided by ``num_masks``."""
    loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(
    point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: torch.Tensor
) -> torch.Tensor:
    """Dice loss (+1 smoothing) of each mask, summed over masks, divided by ``num_masks``."""
    probs = point_logits.sigmoid().flatten(1)
    numerator = 2 * (probs * point_labels).sum(-1)
    denominator = probs.sum(-1) + point_labels.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def average_num_masks(targets: list[dict], device: torch.device) -> torch.Tensor:
    """Number of target masks per process, averaged over all ranks (all_reduce), at least 1."""
    num_masks = torch.as_tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_masks)
        world_size = dist.get_world_size()
    return torch.clamp(num_masks / world_size, min=1)


def _prediction_index(indices: MatchIndices) -> tuple[torch.Tensor, torch.Tensor]:
    batch_index = torch.cat([torch.full_like(pred, i) for i, (pred, _) in enumerate(indices)])
    pred_index = torch.cat([pred for pred, _ in indices])
    return batch_index, pred_index


class SetCriterion(nn.Module):
    """Losses of the original Mask2Former ``SetCriterion`` returned already multiplied by ``weight_dict``.

    ``criterion(outputs, targets)`` returns ``loss_ce``, ``loss_mask``, ``loss_dice`` for the final prediction
    set and the same with an ``_{i}`` suffix for ``outputs["aux_outputs"][i]`` when ``deep_supervision``.
    The total training loss is their sum.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module | None = None,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        self.weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("empty_weight", class_weights)

    def loss_labels(
        self, pred_logits: torch.Tensor, targets: list[dict], indices: MatchIndices
    ) -> torch.Tensor:
        """Cross-entropy over all queries; unmatched ones target no-object (weight ``no_object_weight``)."""
        pred_logits = pred_logits.float()
        target_classes = torch.full(
            pred_logits.shape[:2], self.num_classes, dtype=torch.int64, device=pred_logits.device
        )
        matched_classes = torch.cat(
            [t["labels"].to(pred_logits.device)[tgt] for t, (_, tgt) in zip(targets, indices, strict=True)]
        )
        target_classes[_prediction_index(indices)] = matched_classes
        return F.cross_entropy(pred_logits.transpose(1, 2), target_classes, self.empty_weight)

    def loss_masks(
        self, pred_masks: torch.Tensor, targets: list[dict], indices: MatchIndices, num_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid BCE and dice of matched masks on ``num_points`` uncertainty-sampled points."""
        matched_pred = pred_masks[_prediction_index(indices)][:, None]  # [M,1,h,w]
        matched_target = self._matched_target_masks(targets, indices, matched_pred)  # [M,1,H,W]
        with torch.no_grad():
            point_coords = uncertain_point_coords_with_randomness(
                matched_pred,
                calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(matched_target, point_coords, align_corners=False).squeeze(1)
        point_logits = point_sample(matched_pred, point_coords, align_corners=False).squeeze(1).float()
        point_labels = point_labels.float()
        return sigmoid_ce_loss(point_logits, point_labels, num_masks), dice_loss(
            point_logits, point_labels, num_masks
        )

    @staticmethod
    def _matched_target_masks(targets: list[dict], indices: MatchIndices, like: torch.Tensor) -> torch.Tensor:
        # Only the matched masks are converted to float (the original pads and converts every target first);
        # targets of different sizes are zero-padded bottom/right to the largest, as nested tensors are.
        canvas = target_canvas(targets)
        matched = [
            pad_to_canvas(target["masks"][tgt.to(target["masks"].device)].to(device=like.device, dtype=like.dtype), canvas)
            for target, (_, tgt) in zip(targets, indices, strict=True)
        ]
        return torch.cat(matched)[:, None]

    def prediction_set_losses(
        self, outputs: dict, targets: list[dict], num_masks: torch.Tensor, indices: MatchIndices | None = None
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of one prediction set (``pred_logits``, ``pred_masks``)."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        loss_ce = self.loss_labels(outputs["pred_logits"], targets, indices)
        loss_mask, loss_dice = self.loss_masks(outputs["pred_masks"], targets, indices, num_masks)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(
                f"SetCriterion: {len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} images"
            )
        num_masks = average_num_masks(targets, outputs["pred_logits"].device)
        prediction_sets = [("", outputs)]
        if self.deep_supervision:
            prediction_sets += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", ()))]
        weighted = {}
        for suffix, prediction_set in prediction_sets:
            for name, value in self.prediction_set_losses(prediction_set, targets, num_masks).items():
                weighted[name + suffix] = value * self.weight_dict[name]
        return weighted

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weight_dict={self.weight_dict}, "
            f"no_object_weight={self.no_object_weight}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, importance_sample_ratio={self.importance_sample_ratio}, "
            f"deep_supervision={self.deep_supervision}"
        )


def build_criterion(cfg) -> SetCriterion:
    """``SetCriterion`` from ``cfg.model.mask_former`` (weights, points, no-object) and the class count."""
    mask_former = cfg.model.mask_former
    num_classes = cfg.model.sem_seg_head.num_classes
    matcher = HungarianMatcher(
        cost_class=mask_former.class_weight,
        cost_mask=mask_former.mask_weight,
        cost_dice=mask_former.dice_weight,
        num_points=mask_former.train_num_points,
    )
    return SetCriterion(
        num_classes,
        matcher=matcher,
        class_weight=mask_former.class_weight,
        mask_weight=mask_former.mask_weight,
        dice_weight=mask_former.dice_weight,
        no_object_weight=mask_former.no_object_weight,
        num_points=mask_former.train_num_points,
        oversample_ratio=mask_former.oversample_ratio,
        importance_sample_ratio=mask_former.importance_sample_ratio,
        deep_supervision=mask_former.deep_supervision,
    )
