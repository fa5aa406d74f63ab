"""dataset.dataset_type serialized (same samples, small pickle, DataLoader workers) and augmentation.fixed_padding."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from m2f_spec import load_spec
from m2f_trainer.data import M2FDataModule, build_dataset, collate, synthesize
from m2f_trainer.data.serialized import SerializedList

KINDS = ("coco_panoptic", "coco", "semantic")
SERIALIZED = ["dataset.dataset_type=serialized"]


@pytest.fixture(scope="module")
def synth_specs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serialized")
    return {kind: synthesize(kind, root / kind, num_images=6, seed=5, size=(48, 64)) for kind in KINDS}


def _same_sample(first: dict, second: dict) -> None:
    for key in ("image", "masks", "labels", "is_crowd", "sem_seg"):
        assert first[key].dtype == second[key].dtype and torch.equal(first[key], second[key]), key
    assert first["meta"] == second["meta"]


def test_serialized_list_is_a_read_only_sequence():
    items = [{"id": i, "segments": [{"id": i * 10, "bbox": [1, 2, 3, 4]}]} for i in range(5)] + [None, "x", []]
    packed = SerializedList(items)
    assert len(packed) == len(items) and list(packed) == items
    assert packed[-1] == [] and packed[1:3] == items[1:3]
    packed[0]["id"] = 99  # each access unpickles a fresh copy
    assert packed[0]["id"] == 0
    with pytest.raises(IndexError):
        packed[len(items)]
    assert len(SerializedList([])) == 0
    assert list(pickle.loads(pickle.dumps(packed))) == items


@pytest.mark.parametrize("kind", KINDS)
def test_serialized_dataset_gives_identical_samples(synth_specs, kind):
    default = build_dataset(load_spec(synth_specs[kind]), "train", train=False)
    serialized = build_dataset(load_spec(synth_specs[kind], SERIALIZED), "train", train=False)
    assert not default.serialized and serialized.serialized
    assert all(isinstance(getattr(serialized, name), SerializedList) for name in serialized.per_image_fields)
    assert len(serialized) == len(default) == 6
    assert list(serialized.records) == list(default.records)
    for index in range(len(default)):
        _same_sample(default[index], serialized[index])
        raw_default, raw_serialized = default.raw_sample(index), serialized.raw_sample(index)
        _same_sample(raw_default, raw_serialized)
        assert raw_default["segment_ids"] == raw_serialized["segment_ids"]
    # Training transforms draw the same random numbers from the same seed.
    train_default = build_dataset(load_spec(synth_specs[kind]), "train")
    train_serialized = build_dataset(load_spec(synth_specs[kind], SERIALIZED), "train")
    for index in (0, 3):
        torch.manual_seed(index)
        first = train_default[index]
        torch.manual_seed(index)
        _same_sample(first, train_serialized[index])


@pytest.mark.parametrize("kind", KINDS)
def test_serialized_dataset_pickles_as_its_buffers(synth_specs, kind):
    serialized = build_dataset(load_spec(synth_specs[kind], SERIALIZED), "train")
    buffers = sum(getattr(serialized, name).nbytes for name in serialized.per_image_fields)
    # What goes to a spawned worker: the buffers plus a fixed overhead (label map, transforms), no
    # Python object per image and, for COCO instances, no pycocotools index.
    assert len(pickle.dumps(serialized)) < buffers + 16 * 1024
    if kind == "coco":
        assert serialized.coco is None
        assert len(pickle.dumps(serialized)) < len(pickle.dumps(build_dataset(load_spec(synth_specs[kind]), "train")))
    copy = pickle.loads(pickle.dumps(serialized))
    _same_sample(copy.raw_sample(2), serialized.raw_sample(2))


# Spawned workers receive the dataset pickled; one is enough to check that (each imports torch anew).
@pytest.mark.parametrize(("context", "workers"), [("fork", 2), ("spawn", 1)])
def test_serialized_dataset_in_dataloader_workers(synth_specs, context, workers):
    spec = synth_specs["coco"]
    default = build_dataset(load_spec(spec), "val")
    serialized = build_dataset(load_spec(spec, SERIALIZED), "val")
    loader = DataLoader(
        serialized, batch_size=2, num_workers=workers, collate_fn=collate, multiprocessing_context=context
    )
    batches = list(loader)
    assert sum(len(metas) for _, _, metas in batches) == len(default)
    expected = collate([default[i] for i in range(2)])
    images, targets, metas = batches[0]
    assert torch.equal(images, expected[0]) and metas == expected[2]
    for got, want in zip(targets, expected[1], strict=True):
        assert all(torch.equal(got[k], want[k]) for k in ("labels", "masks", "sem_seg"))


def _train_shapes(spec: Path, overrides: list[str], epochs: int = 3) -> list[tuple[int, int]]:
    cfg = load_spec(spec, overrides)
    module = M2FDataModule(cfg)
    module.setup("fit")
    loader = module.train_dataloader()
    torch.manual_seed(0)
    shapes = []
    for _ in range(epochs):
        shapes += [tuple(images.shape[-2:]) for images, _, _ in loader]
    return shapes


@pytest.fixture(scope="module")
def multiscale_spec(tmp_path_factory) -> Path:
    # 64x80 images resized to a short side of 48, 64 or 80 (48x60 .. 80x100) and cropped to at most
    # 72x100: smaller scales stay smaller than the crop, so unpadded batches change shape.
    return synthesize("semantic", tmp_path_factory.mktemp("fixed"), num_images=8, seed=2, size=(64, 80))


def test_fixed_padding_gives_every_train_batch_one_shape(multiscale_spec):
    common = [
        "dataset.augmentation.train_min_size=[48,64,80]",
        "dataset.augmentation.train_max_size=200",
        "dataset.augmentation.train_crop_size=[72,100]",
        "dataset.train.batch_size=2",
    ]
    varying = _train_shapes(multiscale_spec, common)
    assert len(set(varying)) > 1
    assert all(h % 32 == 0 and w % 32 == 0 and h <= 96 and w <= 128 for h, w in varying)
    fixed = _train_shapes(multiscale_spec, [*common, "dataset.augmentation.fixed_padding=true"])
    assert set(fixed) == {(96, 128)}  # 72x100 rounded up to multiples of 32
    # Evaluation keeps batch-max padding: test sizes are not bounded by the crop.
    cfg = load_spec(multiscale_spec, [*common, "dataset.augmentation.fixed_padding=true"])
    module = M2FDataModule(cfg)
    images, _, _ = next(iter(module.val_dataloader()))
    assert tuple(images.shape[-2:]) == (64, 96)


def test_fixed_size_collate_pads_and_never_cuts():
    def sample(height: int, width: int) -> dict:
        return {
            "image": torch.ones(3, height, width),
            "masks": torch.ones(1, height, width, dtype=torch.bool),
            "labels": torch.zeros(1, dtype=torch.int64),
            "is_crowd": torch.zeros(1, dtype=torch.bool),
            "sem_seg": torch.zeros(height, width, dtype=torch.int64),
            "meta": {},
        }

    images, targets, _ = collate([sample(40, 50)], fixed_size=(72, 100))
    assert images.shape == (1, 3, 96, 128) and targets[0]["sem_seg"][40:, :].eq(255).all()
    images, targets, _ = collate([sample(40, 50), sample(130, 20)], fixed_size=(72, 100))
    assert images.shape == (2, 3, 160, 128)  # the larger sample widens the batch instead of being cut
    assert images[1, :, :130, :20].eq(1).all() and targets[1]["masks"].shape == (1, 160, 128)
