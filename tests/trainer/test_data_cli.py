"""`m2f data synth` / `m2f data check` through m2f_trainer.cli.main, and M2FDataModule over a synthetic spec."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from m2f_spec import load_spec
from m2f_trainer.cli import main
from m2f_trainer.data import M2FDataModule


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["coco_panoptic", "coco", "semantic"])
def test_synth_is_deterministic_and_its_spec_validates(tmp_path, capsys, kind):
    args = ["data", "synth", "--type", kind, "--num-images", "3", "--size", "48x64", "--seed", "5"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert f"spec: {tmp_path / 'a' / 'spec.yaml'}" in capsys.readouterr().out
    first, second = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    images = [name for name in first if name.startswith("images/")]
    assert len(images) == 3
    # Same files, byte for byte, except the spec and label-map paths that name their own folder.
    assert {k: v for k, v in first.items() if k != "spec.yaml"} == {k: v for k, v in second.items() if k != "spec.yaml"}
    assert main(["data", "synth", "--type", kind, "--num-images", "3", "--size", "48x64", "--seed", "6",
                 "--out", str(tmp_path / "c")]) == 0
    assert _digest(tmp_path / "c")[images[0]] != first[images[0]]
    assert main([*args[:4], "--num-images", "2", "--out", str(tmp_path / "c")]) == 0  # rewrite, smaller
    assert sorted(p.name for p in (tmp_path / "c" / "images").iterdir()) == ["000001.jpg", "000002.jpg"]
    cfg = load_spec(tmp_path / "a" / "spec.yaml")
    assert cfg.model.mode == {"coco_panoptic": "panoptic", "coco": "instance", "semantic": "semantic"}[kind]
    assert main(["validate", "-e", str(tmp_path / "a" / "spec.yaml")]) == 0


def test_synth_rejects_bad_arguments(tmp_path, capsys):
    assert main(["data", "synth", "--type", "coco", "--num-images", "0", "--out", str(tmp_path)]) == 2
    assert main(["data", "synth", "--type", "voc", "--num-images", "2", "--out", str(tmp_path)]) == 2
    assert main(["data", "synth", "--type", "coco", "--size", "8x8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: m2f data synth: ") for line in err)
    assert "--num-images must be >= 1" in err[0] and "'voc'" in err[1] and "16x16" in err[2]


def test_check_reports_counts_per_split(tmp_path, capsys):
    assert main(["data", "synth", "--type", "coco_panoptic", "--num-images", "4", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["data", "check", "-e", str(tmp_path / "spec.yaml")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    content = json.loads((tmp_path / "annotations" / "panoptic.json").read_text())
    segments = sum(len(a["segments_info"]) for a in content["annotations"])
    assert f"train (coco_panoptic): 4 images, {segments} segments (0 crowd)" in out
    assert f"val (coco_panoptic): 4 images, {segments} segments (0 crowd)" in out
    assert "test (unlabelled images): 4 images, 0 segments (0 crowd)" in out
    per_category = next(line for line in out if line.strip().startswith("segments per category"))
    assert "sky 4" in per_category and "ground 4" in per_category
    assert out[-1] == "data check: 3 splits, 12 images, 0 problems"


def test_check_lists_every_problem_and_exits_2(tmp_path, capsys):
    assert main(["data", "synth", "--type", "coco_panoptic", "--num-images", "4", "--out", str(tmp_path)]) == 0
    (tmp_path / "panoptic" / "000002.png").unlink()
    (tmp_path / "images" / "000003.jpg").write_bytes(b"not a jpeg at all")
    annotations = tmp_path / "annotations" / "panoptic.json"
    content = json.loads(annotations.read_text())
    content["annotations"][3]["segments_info"][0]["category_id"] = 0
    annotations.write_text(json.dumps(content))
    capsys.readouterr()
    assert main(["data", "check", "-e", str(tmp_path / "spec.yaml"), "dataset.val.batch_size=1"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    problems = [line.strip() for line in out if line.strip().startswith("problem: ")]
    # train and val share the files: each problem shows up once per split; test reads the images only.
    assert len(problems) == 7
    assert any(f"panoptic PNG {tmp_path / 'panoptic' / '000002.png'} does not exist" in p for p in problems)
    assert any(f"image {tmp_path / 'images' / '000003.jpg'} is corrupt" in p for p in problems)
    assert any(f"{annotations}: category id 0 of segment" in p and "image id 4" in p for p in problems)
    assert sum(f"image {tmp_path / 'images' / '000003.jpg'} is corrupt" in p for p in problems) == 3
    assert out[-1] == "data check: 3 splits, 5 images, 7 problems"  # 1 + 1 good labelled images, 3 test images


def test_check_spec_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "check", "-e", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: experiment spec file not found")
    assert main(["data", "frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


def test_datamodule_batches_seeded_order_and_ground_truth(tmp_path):
    spec = tmp_path / "data" / "spec.yaml"
    assert main(["data", "synth", "--type", "coco_panoptic", "--num-images", "6", "--size", "64x96",
                 "--out", str(spec.parent)]) == 0
    cfg = load_spec(spec, ["dataset.train.batch_size=4", "dataset.val.batch_size=3"])
    module = M2FDataModule(cfg)
    module.setup("fit")
    assert module.label_map.num_classes == 5 and module.label_map.thing_classes == [0, 1, 2]
    images, targets, metas = next(iter(module.train_dataloader()))
    assert images.shape[0] == 4 and images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
    assert all(t["masks"].shape[1:] == images.shape[2:] for t in targets)
    order = [m["image_id"] for batch in module.train_dataloader() for m in batch[2]]
    again = M2FDataModule(cfg)
    again.setup("fit")
    assert order == [m["image_id"] for batch in again.train_dataloader() for m in batch[2]]
    assert sorted(order) == [1, 2, 3, 4, 5, 6] and order != sorted(order)
    val_batches = list(module.val_dataloader())
    assert [len(b[2]) for b in val_batches] == [3, 3]
    assert [m["image_id"] for b in val_batches for m in b[2]] == [1, 2, 3, 4, 5, 6]
    assert val_batches[0][2][0]["image_size"] == (64, 96)  # test_min_size 64 keeps the 64x96 images
    truth = module.eval_ground_truth("val")
    assert truth.type == "coco_panoptic"
    assert truth.panoptic_json == spec.parent / "annotations" / "panoptic.json"
    assert truth.panoptic_dir == spec.parent / "panoptic"
    assert truth.label_map is module.label_map and len(truth.dataset) == 6
    module.setup("predict")
    predict = next(iter(module.predict_dataloader()))
    assert predict[0].shape[0] == 1 and predict[1][0]["labels"].numel() == 0


def test_datamodule_worker_processes_are_seeded(tmp_path):
    spec = tmp_path / "spec.yaml"
    assert main(["data", "synth", "--type", "semantic", "--num-images", "4", "--size", "48x48",
                 "--out", str(tmp_path)]) == 0
    cfg = load_spec(spec, ["dataset.train.num_workers=1", "dataset.train.batch_size=2"])

    def two_epochs() -> list[torch.Tensor]:
        module = M2FDataModule(cfg)
        module.setup("fit")
        loader = module.train_dataloader()
        return [batch[0] for _ in range(2) for batch in loader]

    first, second = two_epochs(), two_epochs()
    assert len(first) == 4
    # Random resize / crop / flip run in the worker: same seed, same augmented pixels...
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # ...while the second epoch draws new ones.
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first[:2], first[2:], strict=True))


def test_check_flags_png_and_json_disagreeing(tmp_path, capsys):
    assert main(["data", "synth", "--type", "coco_panoptic", "--num-images", "2", "--out", str(tmp_path)]) == 0
    annotations = tmp_path / "annotations" / "panoptic.json"
    content = json.loads(annotations.read_text())
    dropped = content["annotations"][0]["segments_info"].pop()
    content["annotations"][1]["segments_info"].append({"id": 4242, "category_id": 1, "iscrowd": 0})
    annotations.write_text(json.dumps(content))
    capsys.readouterr()
    assert main(["data", "check", "-e", str(tmp_path / "spec.yaml"), "dataset.val.panoptic_json=null",
                 "dataset.val.img_dir=null"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    problems = [line.strip() for line in out if line.strip().startswith("problem: ")]
    assert problems == [
        f"problem: panoptic PNG {tmp_path / 'panoptic' / '000001.png'} has segment id {dropped['id']} that "
        f"segments_info of image id 1 does not list",
        f"problem: {annotations}: segment id 4242 of image id 2 has no pixels in {tmp_path / 'panoptic' / '000002.png'}",
    ]
    assert out[-1] == "data check: 2 splits, 4 images, 2 problems"


def test_check_real_coco_sample_with_raw_ids(coco_sample_dir, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    split = {"panoptic_json": "panoptic_val.json", "panoptic_dir": "panoptic", "img_dir": "images",
             "root_dir": str(coco_sample_dir)}
    spec.write_text(json.dumps({"model": {"sem_seg_head": {"num_classes": 201}},
                                "data": {"type": "coco_panoptic", "contiguous_id": False, "val": split}}))
    assert main(["data", "check", "-e", str(spec)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    content = json.loads((coco_sample_dir / "panoptic_val.json").read_text())
    segments = [s for a in content["annotations"] for s in a["segments_info"]]
    crowd = sum(s["iscrowd"] for s in segments)
    assert f"val (coco_panoptic): 2 images, {len(segments)} segments ({crowd} crowd)" in out
    people = sum(s["category_id"] == 1 for s in segments)
    assert f"person {people}" in next(line for line in out if "segments per category (top" in line)
    assert out[-1] == "data check: 1 splits, 2 images, 0 problems"
