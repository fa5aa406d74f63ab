"""PointRend-style point sampling used by the matcher and the mask losses (as detectron2 point_features)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def point_sample(features: torch.Tensor, point_coords: torch.Tensor, **grid_sample_kwargs) -> torch.Tensor:
    """Bilinearly sample ``features [N,C,H,W]`` at ``point_coords [N,P,2]`` given in ``[0,1]^2`` (x, y).

    Returns ``[N,C,P]``. A 4-D ``point_coords [N,Hg,Wg,2]`` gives ``[N,C,Hg,Wg]``. Callers pass
    ``align_corners=False`` as the original does; normalised coordinates make the result independent of
    the feature resolution, which is why predictions at 1/4 scale and targets at full scale can share points.
    """
    flat_points = point_coords.dim() == 3
    grid = 2.0 * point_coords - 1.0
    if flat_points:
        grid = grid.unsqueeze(2)
    sampled = F.grid_sample(features, grid, **grid_sample_kwargs)
    return sampled.squeeze(3) if flat_points else sampled


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of class-agnostic mask logits ``[R,1,...]``: minus the distance of the logit from 0."""
    return -torch.abs(logits)


def uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Points ``[R,num_points,2]`` in ``[0,1]^2`` biased towards uncertain regions of ``coarse_logits [R,1,H,W]``.

    ``num_points * oversample_ratio`` candidates are drawn uniformly; the ``importance_sample_ratio`` most
    uncertain of them are kept and the rest is filled with fresh uniform points. The two ``torch.rand``
    draws happen in the same order and shapes as detectron2's ``get_uncertain_point_coords_with_randomness``
    so that a seeded run samples exactly the points the original (and HF's port) samples.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = coarse_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(num_masks, num_candidates, 2, device=coarse_logits.device)
    candidate_logits = point_sample(coarse_logits, candidates, align_corners=False)
    uncertainties = uncertainty_fn(candidate_logits)

    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top_indices = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    coords = torch.gather(candidates, 1, top_indices.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        random_coords = torch.rand(num_masks, num_random, 2, device=coarse_logits.device)
        coords = torch.cat([coords, random_coords], dim=1)
    return coords
