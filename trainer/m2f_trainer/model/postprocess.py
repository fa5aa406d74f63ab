"""Mask2Former query outputs -> semantic maps, panoptic segments and scored instances (as the original)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

MODES = ("semantic", "instance", "panoptic")


def resize_to_original(
    maps: torch.Tensor, image_size: Sequence[int], orig_size: Sequence[int]
) -> torch.Tensor:
    """Crop ``maps [C,Hp,Wp]`` (padded input size) to ``image_size``, resize bilinearly to ``orig_size``."""
    cropped = maps[:, : image_size[0], : image_size[1]]
    if tuple(cropped.shape[-2:]) == tuple(orig_size):
        return cropped  # a same-size bilinear resize is the identity: skip a full pass over the maps
    return F.interpolate(cropped[None], size=tuple(orig_size), mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Per-class scores ``[K,H,W]``: class probability (no-object dropped) x mask probability, summed over queries."""
    class_probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", class_probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    is_thing: torch.Tensor,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic map ``int32 [H,W]`` (0 = void) and its ``segments_info`` for one image.

    Queries whose best class is a real class with probability above ``object_mask_threshold`` compete per
    pixel on ``score * mask_prob``; a query keeps the pixels it wins where its own mask probability is at
    least 0.5, and is dropped when that winning area is below ``overlap_threshold`` of its own mask area.
    Stuff classes (``is_thing[c]`` false) are merged into one segment per class. The per-query loop of the
    original is replaced by whole-tensor areas (one host transfer); the resulting segments are identical.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    return panoptic_from_probabilities(
        scores[keep], labels[keep], mask_pred[keep].sigmoid(), is_thing, overlap_threshold
    )


def panoptic_from_probabilities(
    kept_scores: torch.Tensor,
    kept_labels: torch.Tensor,
    kept_probs: torch.Tensor,
    is_thing: torch.Tensor,
    overlap_threshold: float = 0.8,
) -> tuple[torch.Tensor, list[dict]]:
    """The segment-building half of `panoptic_inference`, from the kept queries' class scores ``[N]``,
    classes ``[N]`` and mask probabilities ``[N,H,W]`` (shared with the exported-model path, whose
    graph outputs probabilities)."""
    height, width = kept_probs.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=kept_probs.device)
    segments_info: list[dict] = []
    num_kept = kept_labels.shape[0]
    if num_kept == 0:
        return panoptic_seg, segments_info

    winner = (kept_scores.view(-1, 1, 1) * kept_probs).argmax(0)  # [H,W] index into the kept queries
    own_mask = kept_probs >= 0.5
    winner_in_own_mask = own_mask.gather(0, winner[None])[0]
    won_area = torch.bincount(winner.flatten(), minlength=num_kept)
    own_area = own_mask.flatten(1).sum(1)
    painted_area = torch.bincount(winner[winner_in_own_mask], minlength=num_kept)
    areas = torch.stack([won_area, own_area, painted_area]).tolist()
    classes, class_scores = kept_labels.tolist(), kept_scores.tolist()

    segment_of_query = [0] * num_kept
    stuff_segment_ids: dict[int, int] = {}
    for k, (won, own, painted) in enumerate(zip(*areas, strict=True)):
        if won == 0 or own == 0 or painted == 0 or won / own < overlap_threshold:
            continue
        category = classes[k]
        isthing = bool(is_thing[category])
        if not isthing and category in stuff_segment_ids:
            segment_of_query[k] = stuff_segment_ids[category]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_segment_ids[category] = segment_id
        segment_of_query[k] = segment_id
        segments_info.append(
            {"id": segment_id, "category_id": category, "isthing": isthing, "score": class_scores[k]}
        )
    segment_lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=kept_probs.device)
    panoptic_seg = torch.where(winner_in_own_mask, segment_lookup[winner], panoptic_seg)
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    test_topk_per_image: int = 100,
    thing_only: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Top-k (query, class) pairs as instances ``{"masks": bool [N,H,W], "scores": [N], "labels": [N]}``.

    The score is the class probability times the mean mask probability inside the binary mask
    (``logit > 0``). ``thing_only`` (bool ``[K]``) drops stuff classes, as the original does when panoptic
    inference runs too.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    class_probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    # The original asks for exactly test_topk_per_image; with fewer queries x classes it would fail.
    k = min(test_topk_per_image, num_queries * num_classes)
    topk_scores, topk_indices = class_probs.flatten().topk(k, sorted=False)
    topk_labels = topk_indices % num_classes
    topk_masks = mask_pred[topk_indices // num_classes]
    if thing_only is not None:
        keep = thing_only.to(topk_labels.device)[topk_labels]
        topk_scores, topk_labels, topk_masks = topk_scores[keep], topk_labels[keep], topk_masks[keep]
    binary_masks = topk_masks > 0
    flat_binary = binary_masks.flatten(1).to(topk_masks.dtype)
    mask_scores = (topk_masks.sigmoid().flatten(1) * flat_binary).sum(1) / (flat_binary.sum(1) + 1e-6)
    return {"masks": binary_masks, "scores": topk_scores * mask_scores, "labels": topk_labels}


def _thing_mask(thing_classes, num_classes: int, device: torch.device) -> torch.Tensor:
    if thing_classes is None:
        raise ValueError(
            "postprocess: panoptic mode needs thing_classes (a set of class indices or a bool mask [K])"
        )
    if isinstance(thing_classes, (set, frozenset)):
        out_of_range = sorted(c for c in thing_classes if not 0 <= c < num_classes)
        if out_of_range:
            raise ValueError(f"postprocess: thing_classes {out_of_range} outside 0..{num_classes - 1}")
        mask = torch.zeros(num_classes, dtype=torch.bool)
        mask[sorted(thing_classes)] = True
        return mask.to(device)
    mask = torch.as_tensor(thing_classes, dtype=torch.bool, device=device)
    if mask.shape != (num_classes,):
        raise ValueError(
            f"postprocess: thing_classes mask has shape {tuple(mask.shape)}, expected ({num_classes},)"
        )
    return mask


def _parse_modes(mode: str | Iterable[str]) -> set[str]:
    modes = {mode} if isinstance(mode, str) else set(mode)
    unknown = sorted(modes - set(MODES))
    if not modes or unknown:
        raise ValueError(
            f"postprocess: unknown mode(s) {unknown or '(none)'}; choose from {', '.join(MODES)}"
        )
    return modes


def postprocess(
    outputs: dict,
    image_sizes: Sequence[Sequence[int]],
    orig_sizes: Sequence[Sequence[int]],
    mode: str | Iterable[str],
    num_classes: int,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    test_topk_per_image: int = 100,
    thing_classes: set[int] | Sequence[bool] | torch.Tensor | None = None,
    padded_size: Sequence[int] | None = None,
) -> list[dict]:
    """Per image ``{"sem_seg"}``, ``{"panoptic_seg"}`` and/or ``{"instances"}`` at the original size.

    ``mode`` is one of ``semantic|instance|panoptic`` or several of them. Mask logits are upsampled to the
    padded input size (``padded_size``; by default 4x the mask resolution, the pixel decoder's stride),
    cropped to ``image_sizes[i]`` (size before padding) and resized to ``orig_sizes[i]``. As in the
    original, semantic-only inference combines classes and masks at the padded size and resizes the
    ``[K,H,W]`` scores; otherwise the masks are resized first and every mode works at the original size.
    Everything is computed in fp32.
    """
    modes = _parse_modes(mode)
    mask_cls_batch = outputs["pred_logits"].float()
    mask_pred_batch = outputs["pred_masks"].float()
    if mask_cls_batch.shape[-1] != num_classes + 1:
        raise ValueError(
            f"postprocess: pred_logits has {mask_cls_batch.shape[-1]} logits, expected num_classes + 1 = {num_classes + 1}"
        )
    batch_size = mask_cls_batch.shape[0]
    if not len(image_sizes) == len(orig_sizes) == batch_size:
        raise ValueError(
            f"postprocess: {len(image_sizes)} image_sizes and {len(orig_sizes)} orig_sizes for a batch of {batch_size}"
        )
    if padded_size is None:
        padded_size = (4 * mask_pred_batch.shape[-2], 4 * mask_pred_batch.shape[-1])
    is_thing = _thing_mask(thing_classes, num_classes, mask_cls_batch.device) if "panoptic" in modes else None
    resize_masks_first = modes != {"semantic"}

    results = []
    for mask_cls, mask_pred, image_size, orig_size in zip(
        mask_cls_batch, mask_pred_batch, image_sizes, orig_sizes, strict=True
    ):
        # Upsampling one image at a time keeps peak memory at one [Q,Hp,Wp] map (same numbers as batched).
        mask_pred = F.interpolate(
            mask_pred[None], size=tuple(padded_size), mode="bilinear", align_corners=False
        )[0]
        if resize_masks_first:
            mask_pred = resize_to_original(mask_pred, image_size, orig_size)
        result = {}
        if "semantic" in modes:
            sem_seg = semantic_inference(mask_cls, mask_pred)
            result["sem_seg"] = (
                sem_seg if resize_masks_first else resize_to_original(sem_seg, image_size, orig_size)
            )
        if "panoptic" in modes:
            result["panoptic_seg"] = panoptic_inference(
                mask_cls, mask_pred, is_thing, object_mask_threshold, overlap_threshold
            )
        if "instance" in modes:
            result["instances"] = instance_inference(mask_cls, mask_pred, test_topk_per_image, is_thing)
        results.append(result)
    return results
