"""M2FDataModule: the LightningDataModule over the spec's train / val / test splits."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from m2f_trainer.data.base import SegmentationDataset, SkippedSample
from m2f_trainer.data.build import (
    GroundTruth,
    build_dataset,
    build_label_map,
    ground_truth,
    is_configured,
    is_labelled,
)
from m2f_trainer.data.collate import collate
from m2f_trainer.data.label_map import LabelMap
from m2f_trainer.errors import DataError

log = logging.getLogger(__name__)


class M2FDataModule(L.LightningDataModule):
    """Loaders for ``cfg.dataset``: per-split batch_size / num_workers, seeded shuffling and workers.

    Distributed sampling is Lightning's (``Trainer(use_distributed_sampler=True)``, the default):
    it swaps the samplers below for DistributedSamplers seeded with the global seed.
    """

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self._label_map: LabelMap | None = None
        self.datasets: dict[str, SegmentationDataset] = {}
        # dataset.skip_corrupt: the training samples skipped as unreadable on this rank, per epoch, and
        # the files already warned about (a bad file is logged once, not once per epoch).
        self.skipped: dict[int, list[SkippedSample]] = {}
        self._warned: set[str] = set()

    @property
    def label_map(self) -> LabelMap:
        if self._label_map is None:
            self._label_map = build_label_map(self.cfg)
        return self._label_map

    def has_split(self, split: str) -> bool:
        return is_configured(self.cfg, split)

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("val",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }[stage]
        for split in wanted:
            if split not in self.datasets and self.has_split(split):
                self.datasets[split] = self._build(split)

    def _build(self, split: str) -> SegmentationDataset:
        dataset = build_dataset(self.cfg, split, label_map=self.label_map)
        # Training only: validation and evaluation keep failing on an unreadable sample, never
        # scoring against silently missing ground truth.
        dataset.skip_corrupt = split == "train" and bool(self.cfg.dataset.skip_corrupt)
        return dataset

    def dataset(self, split: str) -> SegmentationDataset:
        if split not in self.datasets:
            self.datasets[split] = self._build(split)
        return self.datasets[split]

    def eval_ground_truth(self, split: str = "val") -> GroundTruth:
        """Ground truth of a labelled split for the evaluators (paths, label map, raw loader)."""
        return ground_truth(self.cfg, split, label_map=self.label_map)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        split_cfg = getattr(self.cfg.dataset, split)
        seed = self.cfg.train.seed
        generator = torch.Generator().manual_seed(seed) if seed >= 0 and shuffle else None
        rank = self.trainer.global_rank if self.trainer is not None else 0
        workers = split_cfg.num_workers
        return DataLoader(
            self.dataset(split),
            batch_size=split_cfg.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=self._collate(split),
            pin_memory=bool(self.cfg.dataset.pin_memory) and torch.cuda.is_available(),
            drop_last=False,
            persistent_workers=workers > 0,
            generator=generator,
            worker_init_fn=partial(pl_worker_init_function, rank=rank) if seed >= 0 and workers > 0 else None,
        )

    def _collate(self, split: str) -> Any:
        aug = self.cfg.dataset.augmentation
        if split == "train" and getattr(aug, "fixed_padding", False):
            # Random crops are at most train_crop_size: padding every batch to it gives one shape, so
            # the allocator (pinned host memory, CUDA caching) reuses blocks instead of piling up sizes.
            return partial(collate, fixed_size=tuple(int(s) for s in aug.train_crop_size))
        return collate

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Collate ran in a worker process: the samples it dropped come back listed in the batch's metas.
        skipped = getattr(batch[2], "skipped", None) if isinstance(batch, (tuple, list)) and len(batch) == 3 else None
        if skipped:
            self._count_skipped(skipped)
        return batch

    def _count_skipped(self, skipped: list[SkippedSample]) -> None:
        for sample in skipped:
            if sample.file_name not in self._warned:
                self._warned.add(sample.file_name)
                log.warning("skipping unreadable training sample %s: %s", sample.file_name, sample.reason)
        epoch = self.trainer.current_epoch
        in_epoch = self.skipped.setdefault(epoch, [])
        in_epoch.extend(skipped)
        count, total = len(in_epoch), self._epoch_samples()
        limit = float(self.cfg.dataset.max_skipped_fraction)
        # Checked as they come against the whole epoch: a run past the limit stops at once. Each rank
        # counts its own share of the samples.
        if count > limit * total:
            first = list(dict.fromkeys(s.file_name for s in in_epoch))[:3]
            raise DataError(
                f"{count} of the {total} training samples of epoch {epoch} were unreadable ({count / total:.1%}), "
                f"more than dataset.max_skipped_fraction={limit:g}; first: {', '.join(first)}"
            )

    def _epoch_samples(self) -> int:
        """Training samples this rank loads per epoch: its sampler's share, cut by train.iters_per_epoch."""
        loader = self.trainer.train_dataloader
        samples = len(loader.sampler)
        batches = self.trainer.num_training_batches
        if math.isfinite(batches):
            samples = min(samples, int(batches) * int(loader.batch_size or 1))
        return max(1, samples)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        split = "test" if self.has_split("test") else "val"
        return self._loader(split, shuffle=False)

    def labelled(self, split: str) -> bool:
        return is_labelled(self.cfg, split)
