"""Spec adapters: build_label_map / build_dataset / ground_truth from an ExperimentConfig."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2f_trainer.data.base import SegmentationDataset
from m2f_trainer.data.coco_instance import CocoInstanceDataset
from m2f_trainer.data.coco_panoptic import CocoPanopticDataset
from m2f_trainer.data.image_folder import ImageFolderDataset
from m2f_trainer.data.io import read_json, resolve
from m2f_trainer.data.label_map import LabelMap
from m2f_trainer.data.semantic import SemanticDataset
from m2f_trainer.data.staging import is_remote, stage
from m2f_trainer.data.transforms import build_test_transforms, build_train_transforms, tao_train_min_sizes
from m2f_trainer.errors import DataError, SpecError

SPLITS = ("train", "val", "test")


def split_config(cfg: Any, split: str) -> Any:
    if split not in SPLITS:
        raise SpecError(f"dataset split must be one of {', '.join(SPLITS)}, not {split!r}")
    return getattr(cfg.dataset, split)


def split_type(cfg: Any, split: str) -> str:
    return split_config(cfg, split).type or cfg.dataset.type or "coco_panoptic"


def _path(split_cfg: Any, name: str) -> Path | None:
    """The local path of a split's field; a URL or archive is staged (downloaded / extracted) on first use."""
    value = getattr(split_cfg, name, None)
    return resolve(value, split_cfg.root_dir) if value else None


def _annotation_field(cfg: Any, split: str) -> str | None:
    split_cfg = split_config(cfg, split)
    names = {"coco_panoptic": ("panoptic_json",), "coco": ("instance_json", "annot_file"), "ade": ("annot_file",)}
    return next((name for name in names[split_type(cfg, split)] if getattr(split_cfg, name, None)), None)


def annotation_source(cfg: Any, split: str) -> tuple[str, Path] | None:
    """(field name, local path) of the split's annotation file, or None for an unlabelled split."""
    name = _annotation_field(cfg, split)
    return (name, _path(split_config(cfg, split), name)) if name else None


def is_configured(cfg: Any, split: str) -> bool:
    """Whether the spec points this split at any data."""
    # Field presence only: asking must not download anything.
    return _annotation_field(cfg, split) is not None or bool(split_config(cfg, split).img_dir)


def is_labelled(cfg: Any, split: str) -> bool:
    if _annotation_field(cfg, split) is not None:
        return True
    # ADE20k folder pairs need no annotation file; a test split with only img_dir is for inference.
    return split != "test" and split_type(cfg, split) == "ade" and bool(split_config(cfg, split).img_dir)


def _required(split_cfg: Any, split: str, name: str, kind: str) -> Path:
    path = _path(split_cfg, name)
    if path is None:
        raise SpecError(f"dataset.{split}.{name} is required for dataset type {kind}")
    return path


def build_label_map(cfg: Any) -> LabelMap:
    """The project-wide LabelMap: dataset.label_map, else the categories of the first labelled split."""
    data = cfg.dataset
    if data.label_map:
        label_map = LabelMap.from_file(stage(data.label_map), data.contiguous_id)
    else:
        label_map = None
        for split in SPLITS:
            source = annotation_source(cfg, split)
            if source is None or split_type(cfg, split) == "ade":
                continue
            content = read_json(source[1], source[0].replace("_", " "))
            if not isinstance(content, dict) or "categories" not in content:
                raise DataError(f"{source[1]} has no 'categories' and dataset.label_map is not set")
            label_map = LabelMap.from_categories(content["categories"], data.contiguous_id, str(source[1]))
            break
        if label_map is None:  # semantic masks (or unlabelled images) only: mask values are the ids
            label_map = LabelMap.from_class_count(
                cfg.model.sem_seg_head.num_classes, data.contiguous_id, "model.sem_seg_head.num_classes"
            )
    num_classes = cfg.model.sem_seg_head.num_classes
    if label_map.num_classes > num_classes:
        hint = (
            "contiguous_id false uses raw category ids as classes (max id + 1 needed); set dataset.contiguous_id true "
            "or raise num_classes"
            if not data.contiguous_id
            else "raise num_classes"
        )
        raise SpecError(
            f"model.sem_seg_head.num_classes={num_classes} does not cover the {len(label_map)} categories of "
            f"{label_map.source} (need >= {label_map.num_classes}: {hint})"
        )
    return label_map


def build_transforms(cfg: Any, split: str, train: bool) -> Any:
    data, split_cfg = cfg.dataset, split_config(cfg, split)
    aug = data.augmentation
    if train:
        return build_train_transforms(
            tao_train_min_sizes(aug.train_min_size, aug.train_crop_size),
            aug.train_max_size,
            aug.train_crop_size,
            data.pixel_mean,
            data.pixel_std,
            lsj_scale_range=tuple(aug.lsj_scale_range) if aug.use_lsj else None,
            target_size=split_cfg.target_size,
        )
    return build_test_transforms(
        aug.test_min_size, aug.test_max_size, data.pixel_mean, data.pixel_std, target_size=split_cfg.target_size
    )


def build_dataset(
    cfg: Any,
    split: str,
    *,
    label_map: LabelMap | None = None,
    train: bool | None = None,
    strict: bool = True,
) -> SegmentationDataset:
    """The dataset of one split, with train transforms for ``train`` and test transforms otherwise.

    A test split with only ``img_dir`` gives an unlabelled ImageFolderDataset (inference). With
    ``dataset.dataset_type: serialized`` its per-image records are packed into shared buffers.
    """
    dataset = _build_dataset(cfg, split, label_map=label_map, train=train, strict=strict)
    if getattr(cfg.dataset, "dataset_type", "default") == "serialized":
        dataset.serialize()
    return dataset


def _build_dataset(
    cfg: Any, split: str, *, label_map: LabelMap | None, train: bool | None, strict: bool
) -> SegmentationDataset:
    split_cfg = split_config(cfg, split)
    kind = split_type(cfg, split)
    train = split == "train" if train is None else train
    mode = cfg.model.mode
    if mode == "instance" and kind == "ade":
        raise SpecError("model.mode instance needs instance annotations: dataset.type coco or coco_panoptic, not ade")
    if not is_configured(cfg, split):
        raise SpecError(f"dataset.{split} has no data: set its annotation file and img_dir")
    label_map = label_map or build_label_map(cfg)
    transforms = build_transforms(cfg, split, train)
    if not is_labelled(cfg, split):
        return ImageFolderDataset(_required(split_cfg, split, "img_dir", kind), label_map, transforms)
    common = {"label_map": label_map, "transforms": transforms, "mode": mode, "strict": strict}
    if kind == "coco_panoptic":
        return CocoPanopticDataset(
            _required(split_cfg, split, "panoptic_json", kind),
            _required(split_cfg, split, "panoptic_dir", kind),
            _required(split_cfg, split, "img_dir", kind),
            contiguous_id=cfg.dataset.contiguous_id,
            drop_crowd=train,
            **common,
        )
    if kind == "coco":
        _, path = annotation_source(cfg, split)
        return CocoInstanceDataset(
            path,
            _required(split_cfg, split, "img_dir", kind),
            contiguous_id=cfg.dataset.contiguous_id,
            drop_crowd=train,
            **common,
        )
    root_dir = split_cfg.root_dir
    if root_dir and is_remote(root_dir):
        # JSONL lines and the ADE20k images/annotations pairing name files anywhere under root_dir.
        root_dir = stage(root_dir)
    return SemanticDataset(
        annot_file=_path(split_cfg, "annot_file"),
        root_dir=root_dir,
        img_dir=split_cfg.img_dir,
        **common,
    )


@dataclass
class GroundTruth:
    """Where an evaluator finds a split's ground truth, in the dataset's own format.

    ``type`` coco_panoptic: ``panoptic_json`` + ``panoptic_dir`` (pq_compute); coco: ``instance_json``
    (COCOeval); ade: ``dataset.raw_sample(i)["sem_seg"]`` at file resolution. Categories map between
    raw ids and classes through ``label_map``; ``dataset`` (test transforms) is the loader itself.
    """

    type: str
    label_map: LabelMap
    dataset: SegmentationDataset
    img_dir: Path | None = None
    panoptic_json: Path | None = None
    panoptic_dir: Path | None = None
    instance_json: Path | None = None
    annot_file: Path | None = None


def ground_truth(cfg: Any, split: str = "val", *, label_map: LabelMap | None = None) -> GroundTruth:
    if not is_labelled(cfg, split):
        raise SpecError(f"dataset.{split} has no annotations to evaluate against")
    dataset = build_dataset(cfg, split, label_map=label_map, train=False)
    split_cfg = split_config(cfg, split)
    kind = split_type(cfg, split)
    source = annotation_source(cfg, split)
    return GroundTruth(
        type=kind,
        label_map=dataset.label_map,
        dataset=dataset,
        img_dir=_path(split_cfg, "img_dir"),
        panoptic_json=source[1] if kind == "coco_panoptic" else None,
        panoptic_dir=_path(split_cfg, "panoptic_dir") if kind == "coco_panoptic" else None,
        instance_json=source[1] if kind == "coco" else None,
        annot_file=source[1] if kind == "ade" and source else None,
    )

