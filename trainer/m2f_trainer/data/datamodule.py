"""M2FDataModule: the LightningDataModule over the spec's train / val / test splits."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from m2f_trainer.data.base import SegmentationDataset
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
                self.datasets[split] = build_dataset(self.cfg, split, label_map=self.label_map)

    def dataset(self, split: str) -> SegmentationDataset:
        if split not in self.datasets:
            self.datasets[split] = build_dataset(self.cfg, split, label_map=self.label_map)
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
            collate_fn=collate,
            pin_memory=bool(self.cfg.dataset.pin_memory) and torch.cuda.is_available(),
            drop_last=False,
            persistent_workers=workers > 0,
            generator=generator,
            worker_init_fn=partial(pl_worker_init_function, rank=rank) if seed >= 0 and workers > 0 else None,
        )

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
