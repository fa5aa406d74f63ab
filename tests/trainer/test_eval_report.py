"""Prediction writers -> evaluate_prediction_dir round trip, metrics.json keys and printed tables."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from m2f_trainer.errors import DataError, UserError
from m2f_trainer.evaluation.formats import PanopticPredictionWriter, read_panoptic_png
from m2f_trainer.evaluation.predictions import evaluate_prediction_dir
from m2f_trainer.evaluation.report import (
    format_table,
    headline,
    instance_metrics,
    panoptic_metrics,
    report,
    semantic_metrics,
)


def test_panoptic_writer_round_trip_on_real_sample(tmp_path, coco_sample_dir):
    gt_json = coco_sample_dir / "panoptic_val.json"
    dataset = json.loads(gt_json.read_text())
    writer = PanopticPredictionWriter(tmp_path / "pred", dataset["categories"])
    for ann, image in zip(dataset["annotations"], dataset["images"], strict=True):
        ids = read_panoptic_png(coco_sample_dir / "panoptic" / ann["file_name"]).astype(np.int64)
        # Renumber the segments 1..n as a model's post-processing would, with a score each.
        remap = {seg["id"]: index + 1 for index, seg in enumerate(ann["segments_info"])}
        renumbered = np.zeros_like(ids)
        for old, new in remap.items():
            renumbered[ids == old] = new
        segments = [{"id": remap[s["id"]], "category_id": s["category_id"], "isthing": s["category_id"] < 92,
                     "score": 0.9} for s in ann["segments_info"]]
        written = writer.add(ann["image_id"], image["file_name"], renumbered, segments)
        by_id = {s["id"]: s for s in written["segments_info"]}
        for seg in ann["segments_info"]:
            assert by_id[remap[seg["id"]]]["area"] == seg["area"]
            assert by_id[remap[seg["id"]]]["bbox"] == seg["bbox"]
    pred_json = writer.close()
    assert pred_json == tmp_path / "pred" / "panoptic" / "predictions.json"
    assert (tmp_path / "pred" / "panoptic" / "000000142238.png").is_file()

    metrics = evaluate_prediction_dir("panoptic", tmp_path / "pred", gt_json=gt_json,
                                      gt_folder=coco_sample_dir / "panoptic")
    assert metrics["PQ"] == metrics["SQ"] == metrics["RQ"] == 1.0
    assert metrics["num_images"] == 2 and metrics["N"] == metrics["N_th"] + metrics["N_st"]
    assert metrics["per_class"]["1"] == {"name": "person", "PQ": 1.0, "SQ": 1.0, "RQ": 1.0}

    printed = io.StringIO()
    path = report(tmp_path / "results", metrics, stream=printed)
    assert printed.getvalue().splitlines()[2].split() == ["All", "|", "100.0", "100.0", "100.0", str(metrics["N"])]
    assert path == tmp_path / "results" / "evaluate" / "metrics.json"
    saved = json.loads(path.read_text())
    assert {"mode", "PQ", "SQ", "RQ", "PQ_th", "PQ_st", "N", "per_class", "num_images"} <= set(saved)
    assert headline(saved) == ("PQ", 1.0)


def test_panoptic_prediction_dir_errors(tmp_path, coco_sample_dir):
    (tmp_path / "pred").mkdir()
    with pytest.raises(DataError, match=r"panoptic/predictions\.json: panoptic predictions JSON not found"):
        evaluate_prediction_dir("panoptic", tmp_path / "pred", gt_json=coco_sample_dir / "panoptic_val.json")
    with pytest.raises(DataError, match=r"nowhere: predictions directory does not exist"):
        evaluate_prediction_dir("panoptic", tmp_path / "nowhere", gt_json=coco_sample_dir / "panoptic_val.json")
    with pytest.raises(UserError, match=r"mode 'depth' is not one of panoptic, instance, semantic"):
        evaluate_prediction_dir("depth", tmp_path / "pred")


def test_tables_and_nan_as_null(tmp_path):
    panoptic = panoptic_metrics({
        "All": {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 2}, "Things": {"pq": 0.4, "sq": 0.8, "rq": 0.5, "n": 1},
        "Stuff": {"pq": 0.6, "sq": 0.8, "rq": 0.75, "n": 1},
        "per_class": {1: {"pq": 0.4, "sq": 0.8, "rq": 0.5}, 7: {"pq": 0.6, "sq": 0.8, "rq": 0.75}},
    }, categories=[{"id": 1, "name": "person"}, {"id": 7, "name": "sky"}])
    table = format_table(panoptic).splitlines()
    assert table[0].split() == ["|", "PQ", "SQ", "RQ", "N"]
    assert table[2].split() == ["All", "|", "50.0", "80.0", "62.5", "2"]
    assert table[4].split() == ["Stuff", "|", "60.0", "80.0", "75.0", "1"]
    assert table[-1].split() == ["sky", "|", "60.0", "80.0", "75.0"]

    instance = instance_metrics({"AP": 0.5, "AP50": 0.7, "AP75": 0.4, "APs": -1.0, "APm": 0.3, "APl": 0.6,
                                 "per_class": {1: float("nan")}})
    assert "AP50" in format_table(instance)
    semantic = semantic_metrics({"mIoU": 0.45, "fwIoU": 0.4, "mACC": 0.5, "pACC": 0.6,
                                 "per_class": {0: {"IoU": float("nan"), "ACC": float("nan")}}})
    assert format_table(semantic).splitlines()[1].split("|")[0].strip() == "45.0"
    path = report(tmp_path, instance, stream=io.StringIO())
    saved = json.loads(path.read_text())  # strict JSON: no NaN token
    assert saved["per_class"]["1"]["AP"] is None and saved["APs"] == -1.0
    assert headline(instance) == ("AP", 0.5)
    assert headline(semantic_metrics({"mIoU": math.nan, "fwIoU": 0, "mACC": 0, "pACC": 0, "per_class": {}})) == (
        "mIoU", None)
