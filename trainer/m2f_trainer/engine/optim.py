"""Optimizer and learning-rate schedule: AdamW|SGD with per-parameter groups, MultiStep|StepLR|WarmupPoly, warm-up."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from m2f_trainer.errors import SpecError

log = logging.getLogger(__name__)

# Normalisation layers never get weight decay (detectron2 / Mask2Former's build_optimizer rule).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def _is_norm(module: nn.Module) -> bool:
    # timm / our own LayerNorm2d variants subclass these or are named like them
    return isinstance(module, NORM_TYPES) or type(module).__name__.lower().endswith(("norm", "norm2d"))


def build_param_groups(model: nn.Module, optim_cfg: Any, backbone_prefix: str = "backbone") -> list[dict]:
    """One group per (lr, weight_decay) combination: the backbone learns at lr x backbone_multiplier, norms,
    embeddings and relative-position tables get no weight decay. Frozen parameters are left out."""
    base_lr, base_wd = float(optim_cfg.lr), float(optim_cfg.weight_decay)
    backbone_lr = base_lr * float(optim_cfg.backbone_multiplier)
    groups: dict[tuple[float, float], dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            in_backbone = full_name == backbone_prefix or full_name.startswith(backbone_prefix + ".")
            lr = backbone_lr if in_backbone else base_lr
            no_decay = (_is_norm(module) or isinstance(module, nn.Embedding)
                        or any(key in param_name for key in NO_DECAY_NAMES))
            wd = 0.0 if no_decay else base_wd
            group = groups.setdefault((lr, wd), {"params": [], "names": [], "lr": lr, "weight_decay": wd})
            group["params"].append(param)
            group["names"].append(full_name)
    return list(groups.values())


def build_optimizer(model: nn.Module, optim_cfg: Any) -> torch.optim.Optimizer:
    groups = build_param_groups(model, optim_cfg)
    if not groups:
        raise SpecError("train.freeze leaves no trainable parameters")
    kind = str(optim_cfg.type).lower()
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=float(optim_cfg.lr), betas=(float(optim_cfg.momentum), 0.999))
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=float(optim_cfg.lr), momentum=float(optim_cfg.momentum))
    raise SpecError(f"train.optim.type={optim_cfg.type!r} is not supported; choose AdamW or SGD")


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any, steps_per_epoch: int,
                    num_epochs: int) -> dict:
    """A Lightning lr_scheduler config. Epoch schedules (MultiStep, StepLR) are expressed in steps so that an
    optional linear warm-up (train.optim.warmup_iters) composes with them in one step-interval scheduler."""
    kind = str(optim_cfg.lr_scheduler).lower()
    milestones = [int(m) for m in optim_cfg.milestones]
    gamma = float(optim_cfg.gamma)
    steps_per_epoch = max(1, int(steps_per_epoch))
    total_steps = max(1, steps_per_epoch * int(num_epochs))
    warmup = int(getattr(optim_cfg, "warmup_iters", 0) or 0)

    if kind == "multistep":
        step_milestones = [m * steps_per_epoch for m in milestones]

        def decay(step: int) -> float:
            return gamma ** sum(step >= m for m in step_milestones)
    elif kind == "steplr":
        if not milestones or milestones[0] < 1:
            raise SpecError("train.optim.milestones[0] is the StepLR period in epochs and must be >= 1")
        period = milestones[0] * steps_per_epoch

        def decay(step: int) -> float:
            return gamma ** (step // period)
    elif kind == "warmuppoly":
        def decay(step: int) -> float:
            return max(0.0, 1.0 - min(step, total_steps) / total_steps) ** 0.9
    else:
        raise SpecError(
            f"train.optim.lr_scheduler={optim_cfg.lr_scheduler!r} is not supported; "
            "choose MultiStep, StepLR or WarmupPoly")

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        return ramp * decay(step)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
