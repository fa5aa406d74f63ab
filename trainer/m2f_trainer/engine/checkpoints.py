"""Checkpoint files: atomic writes, epoch/latest naming, auto-resume discovery and weights-only loading."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from m2f_trainer.errors import UserError

log = logging.getLogger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; published checkpoints get the usual 0666 & ~umask like any other output.
_FILE_MODE = 0o666 & ~_current_umask()

LATEST_NAME = "mask2former_model_latest.pth"
BEST_NAME = "mask2former_model_best.pth"
# train.optim.monitor_name -> the logged metric it reads (lower is better for both).
MONITORED = {"train_loss": "train_loss_epoch", "val_loss": "val_loss"}
# TAO's scheme: epoch 0-based, step = optimizer steps taken (trainer.global_step) when the file is written.
EPOCH_TEMPLATE = "model_epoch_{epoch:03d}_step_{step:05d}.pth"
# Epoch checkpoints this trainer reads: TAO's scheme and the model_epoch_NNN.pth that earlier versions wrote,
# so a results dir from before the rename still resumes.
EPOCH_NAME = re.compile(r"model_epoch_(\d+)(?:_step_(\d+))?\.pth")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save into a temporary file in the same directory, fsync, then os.replace: a reader (or a restart
    after SIGKILL) sees either the previous file or the complete new one, never a torn write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_link_or_copy(src: Path, dst: Path) -> None:
    """Publish `src` under the name `dst` atomically (hard link when possible: no second write of the bytes)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp_name)
    try:
        os.link(src, tmp_name)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp_name)
    os.replace(tmp_name, dst)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with an atomic write (Lightning's own goes through fsspec without fsync)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


def epoch_checkpoints(train_dir: Path) -> list[Path]:
    """The epoch checkpoints in `train_dir` in training order, under either name (see EPOCH_NAME)."""
    found = []
    for path in Path(train_dir).glob("model_epoch_*.pth"):
        match = EPOCH_NAME.fullmatch(path.name)
        if match:
            # An old name has no step: at the same epoch it sorts before a new one written by a resumed run.
            found.append((int(match[1]), int(match[2] or -1), path))
    return [path for _, _, path in sorted(found)]


def find_resume_checkpoint(train_dir: Path, explicit: str | None) -> Path | None:
    """train.resume_training_checkpoint_path wins; otherwise the latest checkpoint in <results_dir>/train, else
    its newest epoch checkpoint."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"train.resume_training_checkpoint_path: file not found: {path}")
        return path
    latest = train_dir / LATEST_NAME
    if latest.is_file():
        return latest
    # The latest is published after the epoch file: a kill between the two leaves only the epoch file.
    epochs = epoch_checkpoints(train_dir)
    return epochs[-1] if epochs else None


def read_model_weights(path: str | os.PathLike, field: str) -> dict[str, torch.Tensor]:
    """The model's state_dict from one of our checkpoints, a converted checkpoint or a bare state_dict file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{field}: file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: say which one
        raise UserError(f"{field}: cannot read checkpoint {path}: {exc}") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    elif isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(f"{field}: {path} holds no model state_dict")
    if payload and all(k.startswith("model.") for k in payload):  # a LightningModule holding `self.model`
        payload = {k.removeprefix("model."): v for k, v in payload.items()}
    return payload


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, field: str,
                       strict: bool = False) -> tuple[list[str], list[str]]:
    """Load weights only (no optimizer/epoch), reporting missing and unexpected keys; shape mismatches are skipped
    and reported too, so a pretrained model with another class count still initialises the rest."""
    state = read_model_weights(path, field)
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    for key in mismatched:
        state.pop(key)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected or mismatched):
        raise UserError(
            f"{field}: {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {mismatched[:5]} (of {len(missing)}/{len(unexpected)}/{len(mismatched)})")
    if missing:
        log.warning("%s: %d missing keys, e.g. %s", field, len(missing), missing[:5])
    if unexpected:
        log.warning("%s: %d unexpected keys, e.g. %s", field, len(unexpected), unexpected[:5])
    if mismatched:
        log.warning("%s: %d keys skipped for shape mismatch, e.g. %s", field, len(mismatched), mismatched[:5])
    loaded = len(state) - len(unexpected)
    log.info("%s: loaded %d tensors from %s", field, loaded, path)
    return missing + mismatched, unexpected


class EpochCheckpoint(Callback):
    """Every `interval` epochs (and at the last one) write model_epoch_NNN_step_SSSSS.pth (EPOCH_TEMPLATE) and
    publish it as the latest.
    A SIGTERM between steps also saves the latest, so a restart loses at most the current step."""

    def __init__(self, train_dir: Path, interval: int, num_epochs: int) -> None:
        self.train_dir = Path(train_dir)
        self.interval = max(1, int(interval))
        self.num_epochs = int(num_epochs)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.interval and epoch + 1 != self.num_epochs:
            return
        if trainer.sanity_checking:
            return
        epoch_path = self.train_dir / EPOCH_TEMPLATE.format(epoch=epoch, step=trainer.global_step)
        trainer.save_checkpoint(epoch_path, weights_only=False)
        if trainer.is_global_zero:
            atomic_link_or_copy(epoch_path, self.train_dir / LATEST_NAME)
            log.info("saved checkpoint %s", epoch_path)
        trainer.strategy.barrier("m2f-checkpoint")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from m2f_trainer.engine.signals import failed_after_sigterm, quiet_worker_exits

        if not (isinstance(exception, SIGTERMException) or failed_after_sigterm(exception)):
            return
        quiet_worker_exits()  # already done by our SIGTERM handler, unless a worker's death beat it here
        # Lightning raises SIGTERMException between steps: model and optimizer state are consistent.
        path = self.train_dir / LATEST_NAME
        try:
            trainer.save_checkpoint(path, weights_only=False)
            log.warning("SIGTERM: saved checkpoint %s at epoch %d step %d",
                        path, trainer.current_epoch, trainer.global_step)
        except Exception as exc:  # the pod is going away; never mask the termination itself
            log.error("SIGTERM: could not save a checkpoint: %s", exc)


class BestCheckpoint(Callback):
    """Keep mask2former_model_best.pth: the epoch with the lowest `train.optim.monitor_name` so far (TAO's
    train_loss: the epoch's mean training loss; val_loss: the loss on the validation split, on validation
    epochs), judged on checkpoint epochs (every `checkpoint_interval` and the last, as TAO's ModelCheckpoint).
    The best value travels in the checkpoint, so a resumed run does not crown a worse epoch."""

    def __init__(self, train_dir: Path, monitor: str, interval: int = 1, num_epochs: int = 0) -> None:
        self.train_dir = Path(train_dir)
        self.monitor = monitor
        self.interval = max(1, int(interval))
        self.num_epochs = int(num_epochs)
        self.metric = MONITORED[monitor]
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.interval and epoch + 1 != self.num_epochs:
            return
        # callback_metrics keeps the last val_loss: judge it only on the epochs that validated.
        validated = (epoch + 1) % max(1, int(trainer.check_val_every_n_epoch or 1)) == 0
        if self.monitor == "val_loss" and not validated:
            return
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        value = float(value)
        if value != value or (self.best is not None and value >= self.best):  # NaN never wins
            return
        self.best, self.best_epoch = value, trainer.current_epoch
        # Weights only: the best model is for evaluation and deployment, resuming starts from the latest.
        trainer.save_checkpoint(self.train_dir / BEST_NAME, weights_only=True)
        if trainer.is_global_zero:
            log.info("best %s %.5f at epoch %d: saved %s", self.monitor, value, trainer.current_epoch,
                     self.train_dir / BEST_NAME)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict.get("best"), state_dict.get("best_epoch")
