"""Instance mask AP: equal to pycocotools COCOeval run directly; RLE results files; prediction dirs; errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from m2f_trainer.errors import DataError
from m2f_trainer.evaluation.formats import encode_instances, read_instance_results, write_instance_results
from m2f_trainer.evaluation.instance import InstanceResults, evaluate_instances, instances_from_panoptic
from m2f_trainer.evaluation.predictions import evaluate_prediction_dir

# pycocotools' decode trips numpy 2's __array__ copy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_instances(coco_sample_dir):
    return instances_from_panoptic(coco_sample_dir / "panoptic_val.json", coco_sample_dir / "panoptic")


def perturbed_results(dataset, seed=0) -> list[dict]:
    """Shifted GT masks with random scores, one in five dropped, plus a few spurious boxes."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in dataset["categories"]]
    results = []
    for ann in dataset["annotations"]:
        if rng.random() < 0.2:
            continue
        mask = mask_utils.decode(ann["segmentation"])
        mask = np.roll(mask, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
        category = ann["category_id"] if rng.random() > 0.15 else int(rng.choice(category_ids))
        results += encode_instances(ann["image_id"], mask[None].astype(bool), [float(rng.random())], [category])
    for image in dataset["images"]:
        for _ in range(3):
            mask = np.zeros((image["height"], image["width"]), dtype=bool)
            y, x = int(rng.integers(0, image["height"] - 40)), int(rng.integers(0, image["width"] - 40))
            mask[y: y + int(rng.integers(5, 40)), x: x + int(rng.integers(5, 40))] = True
            results += encode_instances(image["id"], mask[None], [float(rng.random())], [int(rng.choice(category_ids))])
    return results


def direct_cocoeval(gt_file, results) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_ap_equals_cocoeval_on_real_sample(tmp_path, coco_instances):
    assert len(coco_instances["annotations"]) > 5
    gt_file = tmp_path / "instances.json"
    gt_file.write_text(json.dumps(coco_instances))
    results = perturbed_results(coco_instances)
    path = write_instance_results(tmp_path / "pred", results)
    assert read_instance_results(path) == json.loads(json.dumps(results))

    ours = evaluate_instances(gt_file, path)
    reference = direct_cocoeval(gt_file, json.loads(path.read_text()))
    assert [ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == [float(v) for v in reference.stats[:6]]
    assert 0.05 < ours["AP"] < 0.95
    precision = reference.eval["precision"]
    for k, category_id in enumerate(reference.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        expected = float(np.mean(values)) if values.size else float("nan")
        assert ours["per_class"][category_id] == pytest.approx(expected, nan_ok=True)


def test_perfect_and_empty_predictions(coco_instances):
    perfect = []
    for ann in coco_instances["annotations"]:
        if not ann["iscrowd"]:
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            perfect += encode_instances(ann["image_id"], mask[None], [1.0], [ann["category_id"]])
    assert evaluate_instances(coco_instances, perfect)["AP"] == 1.0
    empty = evaluate_instances(coco_instances, [])
    assert empty["AP"] == 0.0 and empty["AP50"] == 0.0


def test_prediction_dir_scores_instances_against_panoptic_gt(tmp_path, coco_sample_dir, coco_instances):
    results = perturbed_results(coco_instances, seed=4)
    write_instance_results(tmp_path, results)
    metrics = evaluate_prediction_dir("instance", tmp_path, gt_json=coco_sample_dir / "panoptic_val.json",
                                      gt_folder=coco_sample_dir / "panoptic")
    assert metrics["mode"] == "instance" and metrics["num_images"] == 2
    assert metrics["AP"] == evaluate_instances(coco_instances, results)["AP"]
    assert metrics["per_class"]["1"]["name"] == "person"


def test_errors_name_the_result(tmp_path, coco_instances):
    image = coco_instances["images"][0]
    mask = np.zeros((1, image["height"], image["width"]), dtype=bool)
    mask[0, :5, :5] = True
    good = encode_instances(image["id"], mask, [0.5], [1])
    with pytest.raises(DataError, match=r"result #0: image_id 999 is not in the ground truth"):
        evaluate_instances(coco_instances, [dict(good[0], image_id=999)])
    with pytest.raises(DataError, match=r"result #0 \(image_id \d+\): unknown category_id 92"):
        evaluate_instances(coco_instances, [dict(good[0], category_id=92)])  # a stuff id
    small = encode_instances(image["id"], mask[:, :10, :10], [0.5], [1])
    with pytest.raises(DataError, match=r"result #0: mask size \[10, 10\] differs"):
        evaluate_instances(coco_instances, small)
    with pytest.raises(DataError, match=r"instance results: result #0 misses segmentation"):
        evaluate_instances(coco_instances, [{"image_id": image["id"], "category_id": 1, "score": 0.1, "bbox": [0] * 4}])
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.1}]))
    with pytest.raises(DataError, match=r"bad\.json: result #0 misses segmentation"):
        evaluate_instances(coco_instances, tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"instance/instances\.json: instance results JSON not found"):
        evaluate_prediction_dir("instance", tmp_path, gt_json=tmp_path / "bad.json")


def test_instance_results_accumulator_merges_ranks(coco_instances):
    by_image: dict = {}
    for ann in coco_instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    ranks = [InstanceResults(), InstanceResults()]
    for rank, (image_id, anns) in enumerate(sorted(by_image.items())):
        masks = np.stack([mask_utils.decode(a["segmentation"]) for a in anns]).astype(bool)
        ranks[rank % 2].update(image_id, masks, np.linspace(1.0, 0.5, len(anns)),
                               np.array([a["category_id"] for a in anns]))
    merged = InstanceResults()
    for rank in ranks:
        merged.merge(json.loads(json.dumps(rank.state_dict())))
    assert len(merged.all_gather().results) == len(coco_instances["annotations"])
    result, direct = merged.compute(coco_instances), evaluate_instances(coco_instances, merged.results)
    assert result.pop("per_class") == pytest.approx(direct.pop("per_class"), nan_ok=True)  # NaN: no GT
    assert result == direct and result["AP"] > 0.9
