"""The LightningModule: Mask2Former forward + set criterion for training, postprocess + metric for validation."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from m2f_trainer.data.collate import SIZE_DIVISIBILITY
from m2f_trainer.engine.optim import build_optimizer, build_scheduler
from m2f_trainer.errors import SpecError

log = logging.getLogger(__name__)


class Mask2FormerModule(L.LightningModule):
    """Training and validation around a plain `nn.Module` Mask2Former.

    The model's own submodules, parameters and buffers are registered directly on this module, so the
    checkpoint's "state_dict" has exactly the keys of `model.state_dict()` (the layout documented in
    docs/model.md and written by `m2f convert-checkpoint`). The criterion is kept out of the state dict.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, cfg: Any, evaluator: Any = None) -> None:
        super().__init__()
        reserved = set(dir(L.LightningModule))
        for name, child in model.named_children():
            if name in reserved:
                raise TypeError(f"model submodule name {name!r} collides with a LightningModule attribute")
            self.add_module(name, child)
        # Tensors held by the model's root would be replaced (buffers on .to()) or left unsharded (FSDP
        # shards the children) behind the model's back: every tensor must live in a submodule.
        root_tensors = [n for n, _ in model.named_parameters(recurse=False)]
        root_tensors += [n for n, _ in model.named_buffers(recurse=False)]
        if root_tensors:
            raise TypeError(f"model holds tensors at its root ({root_tensors}); move them into a submodule")
        # Not registered: the forward goes through the model's own forward, which calls the same children.
        self.__dict__["net"] = model
        self.__dict__["criterion"] = criterion
        self.cfg = cfg
        self.evaluator = evaluator
        self.progress = None  # engine.progress.ProgressCallback, set by the train task
        self.last_loss_terms: dict[str, float] = {}
        self.validation_results: list[dict] = []
        self._clip = _clip_settings(cfg.train)
        self.strict_loading = True

    # ------------------------------------------------------------------------------- model

    def forward(self, images: torch.Tensor) -> dict:
        return self.net(images)

    def configure_model(self) -> None:
        """FSDP2: shard each top-level part of the model (backbone, pixel decoder, predictor, ...) over the
        data-parallel mesh. Called by Lightning only with ModelParallelStrategy-style strategies."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None:
            return
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if getattr(self, "_sharded", False):
            return
        precision = str(self.cfg.train.precision).lower()
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if precision == "bf16" else MixedPrecisionPolicy()
        # A fresh 1-D mesh over all ranks rather than the strategy's 2-D (dp, tp=1) mesh sliced to "dp":
        # loading a full checkpoint into shards computes wrong shard offsets on the sliced mesh.
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        data_parallel = init_device_mesh(self.device.type, (dist.get_world_size(),),
                                         mesh_dim_names=("data_parallel",))
        for child in self.children():
            if any(p.numel() for p in child.parameters()):
                fully_shard(child, mesh=data_parallel, mp_policy=policy)
        self._sharded = True

    def setup(self, stage: str) -> None:
        self.criterion.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The layout of m2f_trainer.model.checkpoint_io: weights + the architecture that rebuilds them.
        model_config = getattr(self.net, "model_config", None)
        if model_config is not None:
            checkpoint["model_config"] = dict(model_config)

    def on_train_epoch_end(self) -> None:
        """FSDP2 shards parameters but leaves buffers (BatchNorm running statistics) per rank, where DDP
        broadcasts rank 0's at every forward. Do the same once per epoch, before validation and the
        checkpoint, so every replica evaluates and saves the same model."""
        if getattr(self, "_device_mesh", None) is None:
            return
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        if not (dist.is_available() and dist.is_initialized()):
            return
        for buffer in self.buffers():
            if not isinstance(buffer, DTensor):
                dist.broadcast(buffer.data, src=0)

    # ------------------------------------------------------------------------------- training

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        images, targets, _ = batch
        if not len(images):
            return self._empty_step(images)
        outputs = self(images)
        # Losses in fp32: AMP keeps the matcher and the dice/BCE terms out of low precision.
        with torch.autocast(device_type=self.device.type, enabled=False):
            outputs32 = _to_float(outputs)
            terms = self.criterion(outputs32, targets)
        loss = sum(terms.values())
        self.last_loss_terms = {k: float(v.detach()) for k, v in terms.items()}
        self.last_loss_terms["loss"] = float(loss.detach())
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=len(images), sync_dist=False)
        # The epoch mean over every rank: what train.optim.monitor_name train_loss ranks checkpoints by.
        self.log("train_loss_epoch", loss.detach(), on_step=False, on_epoch=True, batch_size=len(images),
                 sync_dist=True)
        return loss

    def _empty_step(self, images: torch.Tensor) -> torch.Tensor | None:
        """A batch whose samples were all skipped as unreadable (dataset.skip_corrupt)."""
        self.last_loss_terms = {}
        if self.trainer.world_size == 1:
            return None  # Lightning passes over the batch: no backward, so the optimizer finds no gradients
        # The other ranks are in a real step: a zero loss through a forward on one blank image keeps
        # the collectives in step (DDP's gradient all-reduce, FSDP2's parameter all-gathers).
        side = 2 * SIZE_DIVISIBILITY  # 1x1 at the backbone's last stage would fail BatchNorm in training
        outputs = self(images.new_zeros((1, 3, side, side)))
        return sum(t.float().sum() for t in _tensors(outputs)) * 0.0

    def configure_optimizers(self):
        optimizer = build_optimizer(self.net, self.cfg.train.optim)
        steps = self.trainer.estimated_stepping_batches
        epochs = max(1, int(self.trainer.max_epochs or self.cfg.train.num_epochs))
        scheduler = build_scheduler(optimizer, self.cfg.train.optim, steps_per_epoch=max(1, int(steps) // epochs),
                                    num_epochs=epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip once per optimizer step: `full` clips the global p-norm of all gradients (detectron2's
        full_model clipping), `value` clips each element."""
        kind, threshold, norm_type = self._clip
        if threshold <= 0:
            return
        if kind == "value":
            self.clip_gradients(optimizer, gradient_clip_val=threshold, gradient_clip_algorithm="value")
            return
        if norm_type == 2.0:
            self.clip_gradients(optimizer, gradient_clip_val=threshold, gradient_clip_algorithm="norm")
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, threshold, norm_type=norm_type)

    # ------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        if self.evaluator is not None:
            self.evaluator.reset()
        self._val_loss = torch.zeros(2, device=self.device)  # (sum, images) of the loss, when it is computed

    def validation_step(self, batch, batch_idx: int) -> None:
        if self.evaluator is None:
            return
        images, targets, metas = batch
        outputs = self(images)
        if self.cfg.train.optim.monitor_name == "val_loss":
            with torch.autocast(device_type=self.device.type, enabled=False):
                loss = sum(self.criterion(_to_float(outputs), targets).values())
            self.log("val_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(images), sync_dist=True)
            self._val_loss += torch.stack([loss.detach().float() * len(images), loss.new_tensor(float(len(images)))])
        self.evaluator.update(_to_float(outputs), metas, padded_size=tuple(images.shape[-2:]),
                              keep=self._not_padding(batch_idx, len(metas)))

    def _not_padding(self, batch_idx: int, batch_len: int) -> list[bool]:
        """Lightning's DistributedSampler pads the split with repeated images so that every rank gets the
        same count; rank r's i-th image sits at position r + i * world_size of the padded list."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world == 1:
            return [True] * batch_len
        batch_size = self.trainer.val_dataloaders.batch_size or batch_len
        total = len(self.evaluator.dataset)
        return [rank + (batch_idx * batch_size + j) * world < total for j in range(batch_len)]

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None or self.trainer.sanity_checking:
            return
        from m2f_trainer.engine.validation import scalar_metrics

        metrics = scalar_metrics(self.evaluator.compute(self.trainer.strategy))
        if self.cfg.train.optim.monitor_name == "val_loss":
            # The validation loss joins the metrics (metrics.jsonl, the progress a sweep's early stopping reads).
            total, images = self.trainer.strategy.reduce(self._val_loss, reduce_op="sum").tolist()
            if images:
                metrics["loss"] = total / images
        name, value = self.evaluator.primary(metrics)
        value = float("nan") if value is None else float(value)
        self.log(f"val_{name}", value, rank_zero_only=True)
        self.validation_results.append({"epoch": self.current_epoch, "step": self.global_step, **metrics})
        if self.progress is not None and self.trainer.is_global_zero:
            self.progress.record_validation(self.trainer, metrics, (name, value))


def _to_float(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(v) for v in outputs)
    return outputs


def _tensors(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs] if outputs.is_floating_point() else []
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for v in outputs for t in _tensors(v)]
    return []


def _clip_settings(train_cfg: Any) -> tuple[str, float, float]:
    kind = str(train_cfg.clip_grad_type).lower()
    kind = {"full_model": "full", "norm": "full"}.get(kind, kind)
    if kind not in ("full", "value"):
        raise SpecError(f"train.clip_grad_type={train_cfg.clip_grad_type!r} is not supported; choose full or value")
    return kind, float(train_cfg.clip_grad_norm or 0.0), float(train_cfg.clip_grad_norm_type)


def weights_digest(module: nn.Module) -> str:
    """sha256 over the full (unsharded) state dict in key order. Every rank must call it: sharded FSDP2
    parameters are all-gathered (DTensor.full_tensor) so each rank hashes the same full weights."""
    import hashlib

    from torch.distributed.tensor import DTensor

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class WeightsDigest(L.Callback):
    """At the end of training each rank logs a digest of its full weights: replicas that drifted apart
    (a DDP bug, a rank that skipped a step) show up as different digests in the pods' logs."""

    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.final_weights_digest = weights_digest(pl_module)
        log.info("rank %d final weights sha256 %s", trainer.global_rank, pl_module.final_weights_digest)
