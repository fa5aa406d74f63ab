"""Loaders through their real interface: synthetic data of every type, the real COCO sample, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from m2f_spec import load_spec
from m2f_trainer.data import LabelMap, build_dataset, build_label_map, synthesize
from m2f_trainer.data.coco_instance import CocoInstanceDataset
from m2f_trainer.data.coco_panoptic import CocoPanopticDataset
from m2f_trainer.data.semantic import SemanticDataset
from m2f_trainer.data.synth import STUFF, THINGS
from m2f_trainer.errors import DataError, SpecError

RAW_IDS = sorted(c["id"] for c in THINGS + STUFF)  # [1, 2, 4, 7, 9]


@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {kind: synthesize(kind, root / kind, num_images=4, seed=3, size=(64, 80)) for kind in
            ("coco_panoptic", "coco", "semantic")}


def _edit_spec(spec: Path, out: Path, **dataset_changes) -> Path:
    raw = yaml.safe_load(spec.read_text())
    for key, value in dataset_changes.items():
        section, _, name = key.rpartition("__")
        target = raw["dataset"]
        for part in filter(None, section.split("__")):
            target = target[part]
        target[name] = value
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.mark.parametrize("kind", ["coco_panoptic", "coco", "semantic"])
def test_every_type_loads_synthetic_data_for_all_splits(synth_dirs, kind):
    cfg = load_spec(synth_dirs[kind])
    label_map = build_label_map(cfg)
    for split in ("train", "val"):
        dataset = build_dataset(cfg, split, label_map=label_map)
        assert len(dataset) == 4
        sample = dataset[0]
        image, masks, labels = sample["image"], sample["masks"], sample["labels"]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert masks.dtype == torch.bool and masks.shape[1:] == image.shape[1:]
        assert labels.dtype == torch.int64 and labels.shape == (masks.shape[0],)
        assert masks.shape[0] > 0 and masks.flatten(1).any(1).all()
        assert ((labels >= 0) & (labels < cfg.model.sem_seg_head.num_classes)).all()
        assert sample["sem_seg"].shape == image.shape[1:]
        assert sample["meta"]["image_size"] == tuple(image.shape[1:])
        assert sample["meta"]["orig_size"] == (64, 80)
    test_set = build_dataset(cfg, "test", label_map=label_map)
    assert len(test_set) == 4 and test_set[0]["masks"].shape[0] == 0


def test_panoptic_labels_follow_contiguous_id(synth_dirs, tmp_path):
    spec = synth_dirs["coco_panoptic"]
    content = json.loads((spec.parent / "annotations" / "panoptic.json").read_text())
    raw_ids = [s["category_id"] for s in content["annotations"][0]["segments_info"]]
    contiguous = build_dataset(load_spec(spec), "val").raw_sample(0)
    assert contiguous["labels"].tolist() == [RAW_IDS.index(i) for i in raw_ids]
    raw_spec = _edit_spec(spec, tmp_path / "raw.yaml", contiguous_id=False)
    with pytest.raises(SpecError, match=r"model.sem_seg_head.num_classes=5 .*need >= 10"):
        build_dataset(load_spec(raw_spec), "val")
    raw = build_dataset(load_spec(raw_spec, ["model.sem_seg_head.num_classes=10"]), "val").raw_sample(0)
    assert raw["labels"].tolist() == raw_ids
    # The semantic map agrees with the masks pixel for pixel.
    for mask, label in zip(raw["masks"], raw["labels"], strict=True):
        assert (raw["sem_seg"][mask] == label).all()


def test_instance_json_polygons_and_rle_decode_to_their_areas(synth_dirs):
    spec = synth_dirs["coco"]
    content = json.loads((spec.parent / "annotations" / "instances.json").read_text())
    kinds = {("polygon" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__)
             for a in content["annotations"]}
    assert kinds == {"polygon", "list", "str"}  # polygons, uncompressed RLE, compressed RLE
    area_of = {a["id"]: a["area"] for a in content["annotations"]}
    dataset = build_dataset(load_spec(spec), "val")
    seen = 0
    for index in range(len(dataset)):
        sample = dataset.raw_sample(index)
        for annotation_id, mask in zip(sample["segment_ids"], sample["masks"], strict=True):
            assert int(mask.sum()) == area_of[annotation_id]
            seen += 1
    assert seen == len(content["annotations"])


def test_crowd_segments_dropped_for_training_kept_for_evaluation(synth_dirs, tmp_path):
    spec = synth_dirs["coco"]
    content = json.loads((spec.parent / "annotations" / "instances.json").read_text())
    first_image = [a for a in content["annotations"] if a["image_id"] == 1]
    first_image[0]["iscrowd"] = 1
    crowd_json = tmp_path / "crowd.json"
    crowd_json.write_text(json.dumps(content))
    kwargs = {"contiguous_id": True, "mode": "instance"}
    evaluation = CocoInstanceDataset(crowd_json, spec.parent / "images", **kwargs)[0]
    assert evaluation["is_crowd"].tolist() == [True] + [False] * (len(first_image) - 1)
    training = CocoInstanceDataset(crowd_json, spec.parent / "images", drop_crowd=True, **kwargs)[0]
    assert len(training["labels"]) == len(first_image) - 1 and not training["is_crowd"].any()


def test_semantic_masks_map_values_and_ignore_255(synth_dirs):
    spec = synth_dirs["semantic"]
    dataset = build_dataset(load_spec(spec), "val")
    sample = dataset.raw_sample(0)
    label_png = np.array(Image.open(spec.parent / "masks" / "000001.png"))
    expected = np.full(label_png.shape, 255)
    for raw_id in RAW_IDS:
        expected[label_png == raw_id] = RAW_IDS.index(raw_id)
    assert (sample["sem_seg"].numpy() == expected).all()
    assert sorted(sample["labels"].tolist()) == sorted({RAW_IDS.index(v) for v in np.unique(label_png) if v != 255})


def test_ade_folder_pairs(tmp_path):
    for folder in ("images/training", "annotations/training"):
        (tmp_path / folder).mkdir(parents=True)
    label = np.zeros((20, 30), dtype=np.uint8)
    label[:10] = 3
    label[10:, :5] = 150
    Image.fromarray(label).save(tmp_path / "annotations/training/a.png")
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "images/training/a.jpg")
    # ADE20k's 150 classes live in mask values 1..150: contiguous classes are value - 1.
    for contiguous, num_classes, expected in ((True, 150, [2, 149]), (False, 151, [3, 150])):
        label_map = LabelMap.from_class_count(num_classes, contiguous)
        dataset = SemanticDataset(label_map, img_dir="images/training", root_dir=tmp_path)
        sample = dataset.raw_sample(0)
        assert sample["labels"].tolist() == expected and sample["meta"]["image_id"] == "a"
        assert int(sample["masks"][0].sum()) == 300 and int(sample["masks"][1].sum()) == 50
        assert int((sample["sem_seg"] == 255).sum()) == 20 * 30 - 350  # value 0 ("other") is unlabelled
    with pytest.raises(DataError, match=r"mask .*a.png has value 150, which is not a category"):
        SemanticDataset(LabelMap.from_class_count(150, False), img_dir="images/training", root_dir=tmp_path)[0]


def test_real_coco_sample_matches_json(coco_sample_dir):
    content = json.loads((coco_sample_dir / "panoptic_val.json").read_text())
    categories = sorted(c["id"] for c in content["categories"])
    for contiguous in (True, False):
        dataset = CocoPanopticDataset(
            coco_sample_dir / "panoptic_val.json", coco_sample_dir / "panoptic", coco_sample_dir / "images",
            contiguous_id=contiguous,
        )
        assert dataset.label_map.num_classes == (133 if contiguous else 201)
        assert len(dataset) == len(content["annotations"]) == 2
        for index, annotation in enumerate(content["annotations"]):
            sample = dataset.raw_sample(index)
            segments = annotation["segments_info"]
            assert sample["meta"]["image_id"] == annotation["image_id"]
            assert len(sample["labels"]) == len(segments)
            assert sample["segment_ids"] == [s["id"] for s in segments]
            assert [int(m.sum()) for m in sample["masks"]] == [s["area"] for s in segments]
            expected = [categories.index(s["category_id"]) if contiguous else s["category_id"] for s in segments]
            assert sample["labels"].tolist() == expected
            assert sample["is_crowd"].tolist() == [bool(s["iscrowd"]) for s in segments]
            # Segments never overlap, and everything else is void.
            assert int(sample["masks"].sum(0).max()) == 1
            void = int((sample["sem_seg"] == 255).sum())
            assert void == sample["masks"].shape[1] * sample["masks"].shape[2] - sum(s["area"] for s in segments)


def test_real_coco_sample_through_spec_with_raw_ids(coco_sample_dir, tmp_path):
    spec = tmp_path / "spec.yaml"
    split = {"panoptic_json": "panoptic_val.json", "panoptic_dir": "panoptic", "img_dir": "images",
             "root_dir": str(coco_sample_dir)}
    spec.write_text(yaml.safe_dump({
        "model": {"sem_seg_head": {"num_classes": 201}},
        "dataset": {"type": "coco_panoptic", "contiguous_id": False,
                    "label_map": str(coco_sample_dir / "panoptic_coco_categories.json"),
                    "augmentation": {"train_min_size": [256, 320], "train_crop_size": [256, 256]},
                    "train": split, "val": split},
    }))
    cfg = load_spec(spec)
    sample = build_dataset(cfg, "train")[1]
    assert sample["image"].shape[1:] == (256, 256)
    assert sample["labels"].max() <= 200 and len(sample["labels"]) > 0
    with pytest.raises(SpecError, match="model.sem_seg_head.num_classes=200"):
        build_dataset(load_spec(spec, ["model.sem_seg_head.num_classes=200"]), "val")


# ------------------------------------------------------------------------------------- bad input


def _panoptic_copy(spec: Path, tmp_path: Path) -> tuple[Path, dict]:
    content = json.loads((spec.parent / "annotations" / "panoptic.json").read_text())
    return tmp_path / "panoptic.json", content


def test_category_id_zero_names_file_and_id(synth_dirs, tmp_path):
    spec = synth_dirs["coco_panoptic"]
    path, content = _panoptic_copy(spec, tmp_path)
    content["annotations"][1]["segments_info"][0]["category_id"] = 0
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=rf"{path}: category id 0 of segment \d+ \(image id 2\) must be > 0"):
        CocoPanopticDataset(path, spec.parent / "panoptic", spec.parent / "images")
    content["annotations"][1]["segments_info"][0]["category_id"] = 1
    content["categories"][0]["id"] = 0
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=rf"{path}: category id 0 must be > 0"):
        CocoPanopticDataset(path, spec.parent / "panoptic", spec.parent / "images")
    label_map = tmp_path / "labels.json"
    label_map.write_text(json.dumps([{"id": 0, "name": "zero"}]))
    with pytest.raises(DataError, match=rf"{label_map}: category id 0 must be > 0"):
        LabelMap.from_file(label_map, contiguous_id=True)


def test_segment_and_annotation_ids_must_be_positive(synth_dirs, tmp_path):
    spec = synth_dirs["coco_panoptic"]
    path, content = _panoptic_copy(spec, tmp_path)
    content["annotations"][0]["segments_info"][1]["id"] = 0
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=rf"{path}: segment id 0 of image id 1 must be > 0"):
        CocoPanopticDataset(path, spec.parent / "panoptic", spec.parent / "images")
    instances = json.loads((synth_dirs["coco"].parent / "annotations" / "instances.json").read_text())
    instances["annotations"][2]["id"] = -5
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps(instances))
    with pytest.raises(DataError, match=rf"{bad}: annotation id -5 \(image id \d+\) must be an integer > 0"):
        CocoInstanceDataset(bad, synth_dirs["coco"].parent / "images")


def test_unknown_category_names_label_map(synth_dirs, tmp_path):
    spec = synth_dirs["coco_panoptic"]
    path, content = _panoptic_copy(spec, tmp_path)
    content["annotations"][0]["segments_info"][0]["category_id"] = 3
    path.write_text(json.dumps(content))
    label_map = LabelMap.from_file(spec.parent / "label_map.json", contiguous_id=True)
    with pytest.raises(DataError, match=r"category id 3 of segment \d+ \(image id 1\) is not in the label map .*label_map.json"):
        CocoPanopticDataset(path, spec.parent / "panoptic", spec.parent / "images", label_map=label_map)


def test_missing_png_and_corrupt_image_name_the_file(synth_dirs, tmp_path):
    spec = synth_dirs["coco_panoptic"]
    images, pngs = tmp_path / "images", tmp_path / "panoptic"
    images.mkdir(), pngs.mkdir()
    for source in (spec.parent / "images").iterdir():
        (images / source.name).write_bytes(source.read_bytes())
    for source in (spec.parent / "panoptic").iterdir():
        (pngs / source.name).write_bytes(source.read_bytes())
    (pngs / "000002.png").unlink()
    (images / "000003.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    dataset = CocoPanopticDataset(spec.parent / "annotations" / "panoptic.json", pngs, images)
    with pytest.raises(DataError, match=rf"panoptic PNG {pngs / '000002.png'} does not exist"):
        dataset[1]
    with pytest.raises(DataError, match=rf"image {images / '000003.jpg'} is corrupt"):
        dataset[2]
    (images / "000004.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=rf"image {images / '000004.jpg'} is corrupt"):
        dataset.raw_sample(3)


def test_semantic_bad_value_and_bad_jsonl_line(synth_dirs, tmp_path):
    spec = synth_dirs["semantic"]
    label = np.full((64, 80), 7, dtype=np.uint8)
    label[5, 5] = 3  # not a category of the label map
    Image.fromarray(label).save(tmp_path / "bad.png")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"img_path": str(spec.parent / "images" / "000001.jpg"), "mask_path": "bad.png"}) + "\n")
    label_map = LabelMap.from_file(spec.parent / "label_map.json", contiguous_id=True)
    with pytest.raises(DataError, match=rf"mask {tmp_path / 'bad.png'} has value 3, which is not a category"):
        SemanticDataset(label_map, jsonl)[0]
    jsonl.write_text('{"img_path": "a.jpg", "mask_path": "a.png"}\n{"img": broken\n')
    with pytest.raises(DataError, match=rf"{jsonl}:2: not a JSON object"):
        SemanticDataset(label_map, jsonl)
    jsonl.write_text('{"image": "a.jpg"}\n')
    with pytest.raises(DataError, match=rf"{jsonl}:1: expected keys 'img_path' and 'mask_path'"):
        SemanticDataset(label_map, jsonl)


def test_missing_annotation_file_and_missing_split(synth_dirs, tmp_path):
    spec = _edit_spec(synth_dirs["coco_panoptic"], tmp_path / "s.yaml", val__panoptic_json="nope.json")
    with pytest.raises(DataError, match=r"panoptic json .*nope.json does not exist"):
        build_dataset(load_spec(spec), "val")
    spec = _edit_spec(synth_dirs["coco_panoptic"], tmp_path / "s2.yaml", val__panoptic_dir=None)
    with pytest.raises(SpecError, match=r"dataset.val.panoptic_dir is required for dataset type coco_panoptic"):
        build_dataset(load_spec(spec), "val")


def test_model_mode_shapes_targets_of_panoptic_data(synth_dirs):
    spec = synth_dirs["coco_panoptic"]
    panoptic = build_dataset(load_spec(spec, ["model.mode=panoptic"]), "val")[0]
    semantic = build_dataset(load_spec(spec, ["model.mode=semantic"]), "val")[0]
    instance = build_dataset(load_spec(spec, ["model.mode=instance"]), "val")[0]
    # semantic: one mask per class, the union of that class's segments
    assert semantic["labels"].tolist() == sorted(set(panoptic["labels"].tolist()))
    for mask, label in zip(semantic["masks"], semantic["labels"], strict=True):
        assert torch.equal(mask, panoptic["masks"][panoptic["labels"] == label].any(0))
    assert torch.equal(semantic["sem_seg"], panoptic["sem_seg"])
    # instance: thing segments only (things are the first three classes of the synthetic label map)
    things = panoptic["labels"] < 3
    assert torch.equal(instance["labels"], panoptic["labels"][things])
    assert torch.equal(instance["masks"], panoptic["masks"][things])
    assert (instance["sem_seg"][~panoptic["masks"][things].any(0)] == 255).all()
    with pytest.raises(SpecError, match="model.mode instance needs instance annotations"):
        build_dataset(load_spec(synth_dirs["semantic"], ["model.mode=instance"]), "val")


def test_label_map_queries(synth_dirs):
    path = synth_dirs["coco_panoptic"].parent / "label_map.json"
    contiguous = LabelMap.from_file(path, contiguous_id=True)
    raw = LabelMap.from_file(path, contiguous_id=False)
    assert contiguous.num_classes == 5 and raw.num_classes == 10
    assert [contiguous.class_of(i) for i in RAW_IDS] == [0, 1, 2, 3, 4]
    assert [contiguous.raw_id(c) for c in range(5)] == RAW_IDS
    assert [raw.class_of(i) for i in RAW_IDS] == RAW_IDS
    assert contiguous.thing_classes == [0, 1, 2] and contiguous.stuff_classes == [3, 4]
    assert raw.thing_classes == [1, 2, 4] and raw.stuff_classes == [7, 9]
    assert contiguous.name(3) == "sky" and raw.name(7) == "sky" and raw.color(9) == (110, 80, 40)
    assert contiguous.to_coco_categories() == json.loads(path.read_text())
    with pytest.raises(KeyError):
        raw.raw_id(3)


def test_semantic_spec_without_label_map_uses_mask_values(synth_dirs, tmp_path):
    spec = _edit_spec(synth_dirs["semantic"], tmp_path / "s.yaml", label_map=None, contiguous_id=False)
    cfg = load_spec(spec, ["model.sem_seg_head.num_classes=10"])
    sample = build_dataset(cfg, "val").raw_sample(0)
    label_png = np.array(Image.open(synth_dirs["semantic"].parent / "masks" / "000001.png"))
    assert sorted(sample["labels"].tolist()) == sorted(set(np.unique(label_png).tolist()) - {255})
    with pytest.raises(DataError, match=r"has value 9, which is not a category of model.sem_seg_head.num_classes"):
        build_dataset(load_spec(spec, ["model.sem_seg_head.num_classes=9"]), "val")[0]  # every image has ground
