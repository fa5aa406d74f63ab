"""Semantic confusion-matrix metrics (detectron2 SemSegEvaluator formulas), merge, tensors, prediction dirs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2f_trainer.errors import DataError, UserError
from m2f_trainer.evaluation.formats import read_panoptic_png, read_semantic_png, write_semantic_png
from m2f_trainer.evaluation.predictions import evaluate_prediction_dir
from m2f_trainer.evaluation.semantic import SemanticConfusion

# 9 pixels: class 2 never occurs in the ground truth, two pixels are ignored (255).
GT = np.array([[0, 0, 0], [0, 1, 1], [1, 255, 255]])
PRED = np.array([[0, 0, 1], [2, 1, 1], [0, 2, 0]])


def test_hand_built_confusion_matrix():
    confusion = SemanticConfusion(num_classes=3)
    confusion.update(PRED, GT)
    # rows = prediction, columns = ground truth, last column = ignored
    assert confusion.matrix.tolist() == [[2, 1, 0, 1], [1, 2, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]
    result = confusion.compute(class_ids=[10, 20, 30])
    # class 0: tp 2, gt 4, pred 3 -> IoU 2/5, ACC 1/2; class 1: tp 2, gt 3, pred 3 -> IoU 2/4, ACC 2/3;
    # class 2 is absent from the ground truth: NaN and left out of the means (as detectron2 does).
    assert result["mIoU"] == pytest.approx((0.4 + 0.5) / 2)
    assert result["mACC"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert result["pACC"] == pytest.approx(4 / 7)
    assert result["fwIoU"] == pytest.approx(0.4 * 4 / 7 + 0.5 * 3 / 7)
    assert result["per_class"][10] == pytest.approx({"IoU": 0.4, "ACC": 0.5})
    assert np.isnan(result["per_class"][30]["IoU"]) and np.isnan(result["per_class"][30]["ACC"])


def test_perfect_and_empty():
    confusion = SemanticConfusion(num_classes=2)
    confusion.update(np.array([[0, 1]]), np.array([[0, 1]]))
    assert {k: v for k, v in confusion.compute().items() if k != "per_class"} == {
        "mIoU": 1.0, "fwIoU": 1.0, "mACC": 1.0, "pACC": 1.0}
    empty = SemanticConfusion(num_classes=2).compute()
    assert np.isnan(empty["mIoU"]) and np.isnan(empty["pACC"])


def test_merge_equals_single_pass_and_tensors_equal_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 5, (7, 9)), rng.choice([0, 1, 2, 3, 4, 255], (7, 9))) for _ in range(6)]
    single, ranks = SemanticConfusion(5), [SemanticConfusion(5), SemanticConfusion(5)]
    tensors = SemanticConfusion(5)
    for index, (pred, gt) in enumerate(pairs):
        single.update(pred, gt)
        ranks[index % 2].update(pred, gt)
        tensors.update(torch.from_numpy(pred), torch.from_numpy(gt))
    merged = SemanticConfusion(5)
    for rank in ranks:
        merged.merge(json.loads(json.dumps(rank.state_dict())))
    assert np.array_equal(merged.matrix, single.matrix)
    assert np.array_equal(tensors.matrix, single.matrix)
    assert np.array_equal(merged.all_gather().matrix, single.matrix)
    assert merged.compute()["mIoU"] == single.compute()["mIoU"]
    with pytest.raises(ValueError, match="4-class matrix into a 5-class"):
        merged.merge(SemanticConfusion(4).state_dict())


def test_out_of_range_classes_are_named():
    confusion = SemanticConfusion(3)
    with pytest.raises(DataError, match=r"img7: predicted class 3 is outside 0\.\.2"):
        confusion.update(np.array([[3]]), np.array([[0]]), where="img7")
    # 3 == num_classes is not silently treated as ignored: only the ignore label is.
    with pytest.raises(DataError, match=r"ground-truth class 3 is outside 0\.\.2 and is not the ignore label 255"):
        confusion.update(np.array([[0]]), np.array([[3]]))
    with pytest.raises(DataError, match=r"prediction size \(1, 2\) differs"):
        confusion.update(np.array([[0, 0]]), np.array([[0]]))


def test_prediction_dir_with_label_pngs(tmp_path):
    raw_ids = {0: 10, 1: 20, 2: 300}  # a uint16 id on purpose
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred" / "semantic").mkdir(parents=True)
    to_raw = np.vectorize(lambda c: raw_ids.get(int(c), 255))
    write_semantic_png(tmp_path / "gt" / "a.png", to_raw(GT))
    write_semantic_png(tmp_path / "pred" / "semantic" / "a.png", to_raw(PRED))
    assert read_semantic_png(tmp_path / "pred" / "semantic" / "a.png").max() == 300
    categories = [{"id": 10, "name": "road"}, {"id": 20, "name": "car"}, {"id": 300, "name": "tree"}]
    metrics = evaluate_prediction_dir("semantic", tmp_path / "pred", gt_folder=tmp_path / "gt", categories=categories)
    assert metrics["mode"] == "semantic" and metrics["num_images"] == 1
    assert metrics["mIoU"] == pytest.approx(0.45)
    assert metrics["per_class"]["20"] == {"name": "car", "IoU": 0.5, "ACC": pytest.approx(2 / 3)}

    # The same through a JSONL of {img_path, mask_path}.
    (tmp_path / "val.jsonl").write_text(json.dumps({"img_path": "images/a.jpg", "mask_path": "gt/a.png"}) + "\n")
    again = evaluate_prediction_dir("semantic", tmp_path / "pred", gt_json=tmp_path / "val.jsonl",
                                    categories=[10, 20, 300])
    assert again["mIoU"] == metrics["mIoU"]
    # A JSONL elsewhere whose paths are relative to the split's root_dir (as the semantic loader reads it).
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.jsonl").write_text((tmp_path / "val.jsonl").read_text())
    rooted = evaluate_prediction_dir("semantic", tmp_path / "pred", gt_json=tmp_path / "lists" / "val.jsonl",
                                     gt_root=tmp_path, categories=[10, 20, 300])
    assert rooted["mIoU"] == metrics["mIoU"]
    with pytest.raises(DataError, match="gt/a.png"):
        evaluate_prediction_dir("semantic", tmp_path / "pred", gt_json=tmp_path / "lists" / "val.jsonl",
                                categories=[10, 20, 300])

    # 0 is "unlabelled" in the ground truth when it is not a category id (ADE20k), like 255.
    write_semantic_png(tmp_path / "gt" / "a.png", np.where(GT == 255, 0, to_raw(GT)))
    zero_ignored = evaluate_prediction_dir("semantic", tmp_path / "pred", gt_folder=tmp_path / "gt",
                                           categories=[10, 20, 300])
    assert zero_ignored["mIoU"] == metrics["mIoU"]

    write_semantic_png(tmp_path / "pred" / "semantic" / "a.png", np.full(GT.shape, 7))
    with pytest.raises(DataError, match=r"semantic/a\.png: predicted label id 7 is not a category id"):
        evaluate_prediction_dir("semantic", tmp_path / "pred", gt_folder=tmp_path / "gt", categories=[10, 20, 300])
    (tmp_path / "pred" / "semantic" / "a.png").unlink()
    with pytest.raises(DataError, match=r"a\.png: semantic prediction for a not found"):
        evaluate_prediction_dir("semantic", tmp_path / "pred", gt_folder=tmp_path / "gt", categories=[10, 20, 300])
    with pytest.raises(UserError, match="needs the categories"):
        evaluate_prediction_dir("semantic", tmp_path / "pred", gt_folder=tmp_path / "gt")


def test_prediction_dir_against_panoptic_ground_truth(tmp_path, coco_sample_dir):
    gt_json = coco_sample_dir / "panoptic_val.json"
    dataset = json.loads(gt_json.read_text())
    (tmp_path / "semantic").mkdir()
    for ann in dataset["annotations"]:
        ids = read_panoptic_png(coco_sample_dir / "panoptic" / ann["file_name"])
        labels = np.zeros(ids.shape, dtype=np.int64) + 1  # VOID pixels: any category, they are ignored
        for seg in ann["segments_info"]:
            labels[ids == seg["id"]] = seg["category_id"]
        write_semantic_png(tmp_path / "semantic" / ann["file_name"], labels)
    metrics = evaluate_prediction_dir("semantic", tmp_path, gt_json=gt_json, gt_folder=coco_sample_dir / "panoptic",
                                      categories=dataset["categories"])
    assert metrics["mIoU"] == 1.0 and metrics["pACC"] == 1.0 and metrics["num_images"] == 2
    assert metrics["per_class"]["1"]["name"] == "person"
