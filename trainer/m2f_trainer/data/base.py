"""The common dataset layer: raw annotations of one image -> transformed training/evaluation sample."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from m2f_trainer.data.io import read_image
from m2f_trainer.data.label_map import IGNORE_INDEX, LabelMap
from m2f_trainer.data.serialized import SerializedList
from m2f_trainer.errors import DataError


@dataclass
class ImageRecord:
    """What a loader knows about one image before reading any pixels."""

    image_id: int | str
    image_path: Path
    height: int | None = None
    width: int | None = None
    extra: dict = field(default_factory=dict)

    def __reduce__(self) -> tuple:
        # Plain fields: a pickled record (one per image in a SerializedList) then carries no PosixPath
        # class reference and no per-field names, about half the bytes of the default dataclass pickle.
        return _image_record, (self.image_id, str(self.image_path), self.height, self.width, self.extra)


def _image_record(image_id: int | str, image_path: str, height: int | None, width: int | None, extra: dict) -> ImageRecord:
    return ImageRecord(image_id, Path(image_path), height, width, extra)


@dataclass(frozen=True)
class SkippedSample:
    """What a training dataset with ``skip_corrupt`` returns for an unreadable sample; collate drops it."""

    file_name: str
    reason: str


@dataclass
class RawAnnotation:
    """One image's ground truth at file resolution, in one of two layouts.

    ``segment_map`` (panoptic, semantic): int [H,W], 0 = unlabelled, k = segment k-1; non-overlapping
    segments transform as ONE mask, which is much cheaper than a stack. ``masks`` (COCO instances,
    which may overlap): uint8 [N,H,W].
    """

    labels: torch.Tensor  # int64 [N] training classes
    is_crowd: torch.Tensor  # bool [N]
    segment_map: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    segment_ids: list[int] = field(default_factory=list)  # raw segment / annotation ids, for reports

    def __len__(self) -> int:
        return int(self.labels.numel())

    def merged_by_class(self) -> RawAnnotation:
        """One segment per class (semantic training on panoptic / instance data); crowd counts too."""
        classes, inverse = torch.unique(self.labels, return_inverse=True)
        no_crowd = torch.zeros(len(classes), dtype=torch.bool)
        if self.masks is not None:
            merged = torch.zeros((len(classes), *self.masks.shape[1:]), dtype=torch.uint8)
            merged.index_add_(0, inverse, self.masks)
            return RawAnnotation(classes, no_crowd, masks=merged.clamp_(max=1), segment_ids=classes.tolist())
        lookup = torch.cat([torch.zeros(1, dtype=torch.int64), inverse + 1]).to(self.segment_map.dtype)
        return RawAnnotation(classes, no_crowd, segment_map=_lookup(lookup, self.segment_map), segment_ids=classes.tolist())

    def select(self, keep: torch.Tensor) -> RawAnnotation:
        """Keep the segments where ``keep`` (bool [N]) is true; the others become unlabelled."""
        if bool(keep.all()):
            return self
        ids = [i for i, k in zip(self.segment_ids, keep.tolist(), strict=True) if k]
        if self.masks is not None:
            return RawAnnotation(self.labels[keep], self.is_crowd[keep], masks=self.masks[keep], segment_ids=ids)
        # Renumber the kept segments 1..M and send the dropped ones to 0 through a lookup table.
        lookup = torch.zeros(len(self) + 1, dtype=self.segment_map.dtype)
        lookup[1:][keep] = torch.arange(1, int(keep.sum()) + 1, dtype=self.segment_map.dtype)
        return RawAnnotation(
            self.labels[keep], self.is_crowd[keep], segment_map=_lookup(lookup, self.segment_map), segment_ids=ids
        )


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    # numpy's fancy indexing and broadcast compares run several times faster than torch's on CPU
    # for these uint8 maps (measured in bench/data_pipeline.py); the result shares memory, no copy.
    return torch.from_numpy(table.numpy()[index.numpy()])


def positive_int(value: object) -> bool:
    """An id the COCO formats accept: an int > 0 (bool is not an id)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def json_label_map(
    content: dict, label_map: LabelMap | None, contiguous_id: bool, source: str, what: str
) -> LabelMap:
    """``label_map`` when given, else the categories of a COCO json (``what`` names it in errors).

    The json's own categories are validated even when the label map supplies the classes.
    """
    if label_map is None:
        if "categories" not in content:
            raise DataError(f"{what} {source} has no 'categories' and no dataset.label_map is set")
        return LabelMap.from_categories(content["categories"], contiguous_id, source)
    if "categories" in content:
        LabelMap.from_categories(content["categories"], contiguous_id, source)
    return label_map


def segment_map_dtype(num_segments: int) -> torch.dtype:
    # uint8 maps resize ~5x faster than int32 ones (torch has a dedicated uint8 nearest kernel).
    return torch.uint8 if num_segments < 255 else torch.int32


def binary_masks(annotation: RawAnnotation, keep: torch.Tensor | None = None) -> torch.Tensor:
    """bool [M,H,W] masks of the annotation's segments (those where ``keep`` is true, when given)."""
    if annotation.masks is not None:
        masks = annotation.masks if keep is None else annotation.masks[keep]
        return masks.bool()
    ids = torch.arange(1, len(annotation) + 1, dtype=annotation.segment_map.dtype)
    ids = ids if keep is None else ids[keep]
    return torch.from_numpy(annotation.segment_map.numpy()[None] == ids.numpy()[:, None, None])


def semantic_map(annotation: RawAnnotation, height: int, width: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [H,W] class per pixel; IGNORE_INDEX where nothing (kept) is labelled."""
    labels = annotation.labels
    if keep is not None:
        labels = torch.where(keep, labels, IGNORE_INDEX)
    if annotation.segment_map is not None:
        return _lookup(torch.cat([torch.tensor([IGNORE_INDEX]), labels]), annotation.segment_map)
    sem_seg = torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)
    # Later instances paint over earlier ones, as COCO's own semantic conversions do.
    for mask, label in zip(annotation.masks.bool(), labels.tolist(), strict=True):
        if label != IGNORE_INDEX:
            sem_seg[mask] = label
    return sem_seg


class SegmentationDataset(Dataset):
    """Base of every loader: subclasses list ImageRecords and read one image's RawAnnotation.

    ``transforms`` takes and returns ``{"image": tv_tensors.Image uint8, "segment_map": Mask|None,
    "masks": Mask|None}`` (see m2f_trainer.data.transforms); ``drop_crowd`` removes crowd segments
    from the targets (training). Without transforms the image stays uint8 and unnormalised.
    ``mode`` shapes the targets for the model mode: ``instance`` keeps thing segments only,
    ``semantic`` merges the segments of a class into one, ``panoptic`` keeps them as annotated.
    """

    kind = "base"
    # Attributes holding one entry per image, which serialize() packs; subclasses add theirs.
    per_image_fields: tuple[str, ...] = ("records",)

    def __init__(
        self,
        label_map: LabelMap,
        transforms: Callable[[dict], dict] | None = None,
        drop_crowd: bool = False,
        mode: str = "panoptic",
    ):
        if mode not in ("panoptic", "instance", "semantic"):
            raise ValueError(f"mode must be panoptic, instance or semantic, not {mode!r}")
        self.label_map = label_map
        # bool [num_classes] indexed by training class: instance mode keeps thing segments only.
        self._is_thing_class = torch.zeros(label_map.num_classes, dtype=torch.bool)
        self._is_thing_class[label_map.thing_classes] = True
        self.transforms = transforms
        self.drop_crowd = drop_crowd
        self.mode = mode
        # dataset.skip_corrupt, set on the training split only: evaluation never skips ground truth.
        self.skip_corrupt = False
        self.records: list[ImageRecord] = []
        # Problems found while indexing (non-strict mode); strict loaders raise on the first one.
        self.problems: list[str] = []

    def __len__(self) -> int:
        return len(self.records)

    def load_annotation(self, index: int, height: int, width: int) -> RawAnnotation:
        raise NotImplementedError

    def serialize(self) -> None:
        """Pack the per-image containers into SerializedLists (``dataset.dataset_type: serialized``).

        Samples stay identical; the records then live in two numpy arrays that DataLoader workers
        share instead of copying (see m2f_trainer.data.serialized). Idempotent.
        """
        for name in self.per_image_fields:
            value = getattr(self, name)
            if not isinstance(value, SerializedList):
                setattr(self, name, SerializedList(value))

    @property
    def serialized(self) -> bool:
        return isinstance(self.records, SerializedList)

    def audit(self, index: int) -> list[str]:
        """Inconsistencies of one image's annotation that loading tolerates (``m2f data check``)."""
        return []

    def _report(self, problem: str, strict: bool) -> None:
        if strict:
            raise DataError(problem)
        self.problems.append(problem)

    # ---------------------------------------------------------------------------------- loading

    def _load(self, index: int) -> tuple[ImageRecord, torch.Tensor, RawAnnotation]:
        record = self.records[index]
        image = read_image(record.image_path)
        height, width = image.shape[-2:]
        if record.height is not None and (record.height, record.width) != (height, width):
            raise DataError(
                f"image {record.image_path} is {height}x{width} but its annotation says "
                f"{record.height}x{record.width} (image id {record.image_id})"
            )
        return record, image, self.load_annotation(index, height, width)

    def raw_sample(self, index: int) -> dict:
        """The untransformed sample at file resolution: uint8 image, bool masks, labels, sem_seg, meta.

        Evaluators use it for ground truth at the original size; it never drops crowd segments.
        """
        record, image, annotation = self._load(index)
        height, width = image.shape[-2:]
        return {
            "image": image,
            "masks": binary_masks(annotation),
            "labels": annotation.labels,
            "is_crowd": annotation.is_crowd,
            "sem_seg": semantic_map(annotation, height, width),
            "segment_ids": annotation.segment_ids,
            "meta": self._meta(record, (height, width), (height, width)),
        }

    def __getitem__(self, index: int) -> dict | SkippedSample:
        try:
            record, image, annotation = self._load(index)
        except DataError as exc:
            if not self.skip_corrupt:
                raise
            # Returned, not logged: this may run in a worker process; the main process counts and logs it.
            return SkippedSample(str(self.records[index].image_path), str(exc))
        orig_size = tuple(image.shape[-2:])
        if self.mode == "semantic":
            annotation = annotation.merged_by_class()
        wanted = self._wanted(annotation)
        if annotation.masks is not None:
            # Every mask of a stack costs a resize: drop the unwanted ones first. Segment maps
            # transform at the same cost whatever they hold, so they are filtered afterwards.
            annotation, wanted = annotation.select(wanted), wanted[wanted]
        data = {
            "image": tv_tensors.Image(image),
            "segment_map": None if annotation.segment_map is None else tv_tensors.Mask(annotation.segment_map),
            "masks": None if annotation.masks is None else tv_tensors.Mask(annotation.masks),
        }
        if self.transforms is not None:
            data = self.transforms(data)
        annotation.segment_map = None if data["segment_map"] is None else data["segment_map"].as_subclass(torch.Tensor)
        annotation.masks = None if data["masks"] is None else data["masks"].as_subclass(torch.Tensor)
        image_out = data["image"].as_subclass(torch.Tensor)
        height, width = image_out.shape[-2:]
        keep = wanted & _non_empty(annotation)
        return {
            "image": image_out,
            "masks": binary_masks(annotation, keep),
            "labels": annotation.labels[keep],
            "is_crowd": annotation.is_crowd[keep],
            "sem_seg": semantic_map(annotation, height, width, keep),
            "meta": self._meta(record, orig_size, (height, width)),
        }

    def _wanted(self, annotation: RawAnnotation) -> torch.Tensor:
        """bool [N]: the segments the model mode trains on (crowd dropped for training)."""
        wanted = torch.ones(len(annotation), dtype=torch.bool)
        if self.drop_crowd:
            wanted &= ~annotation.is_crowd
        if self.mode == "instance":
            wanted &= self._is_thing_class[annotation.labels]
        return wanted

    def _meta(self, record: ImageRecord, orig_size: tuple, image_size: tuple) -> dict:
        return {
            "image_id": record.image_id,
            "file_name": str(record.image_path),
            "orig_size": (int(orig_size[0]), int(orig_size[1])),
            "image_size": (int(image_size[0]), int(image_size[1])),
            **record.extra,
        }


def _non_empty(annotation: RawAnnotation) -> torch.Tensor:
    """bool [N]: which segments still cover a pixel after crop / resize."""
    if annotation.masks is not None:
        return annotation.masks.flatten(1).amax(1) > 0 if len(annotation) else torch.zeros(0, dtype=torch.bool)
    counts = torch.bincount(annotation.segment_map.flatten(), minlength=len(annotation) + 1)
    return counts[1 : len(annotation) + 1] > 0
