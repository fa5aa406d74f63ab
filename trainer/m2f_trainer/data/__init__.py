"""Datasets (COCO panoptic, COCO instance, semantic/ADE), transforms, collate, datamodule, synth, check."""

from m2f_trainer.data.base import SegmentationDataset
from m2f_trainer.data.build import GroundTruth, build_dataset, build_label_map, build_transforms, ground_truth
from m2f_trainer.data.collate import collate
from m2f_trainer.data.datamodule import M2FDataModule
from m2f_trainer.data.label_map import IGNORE_INDEX, Category, LabelMap
from m2f_trainer.data.synth import synthesize

__all__ = [
    "IGNORE_INDEX",
    "Category",
    "GroundTruth",
    "LabelMap",
    "M2FDataModule",
    "SegmentationDataset",
    "build_dataset",
    "build_label_map",
    "build_transforms",
    "collate",
    "ground_truth",
    "synthesize",
]
