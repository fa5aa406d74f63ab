"""pq_compute / PQAccumulator: hand-built panopticapi cases, equality with the panopticapi oracle, merge, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from _panoptic_synth import write_synthetic_panoptic  # noqa: E402
from _panopticapi_reference import reference_pq_compute  # noqa: E402

from m2f_trainer.errors import DataError  # noqa: E402
from m2f_trainer.evaluation.formats import id2rgb, read_panoptic_png, rgb2id, write_panoptic_png  # noqa: E402
from m2f_trainer.evaluation.panoptic import (  # noqa: E402
    PQAccumulator,
    image_pq_stats,
    panoptic_from_masks,
    pq_compute,
)

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "grass", "isthing": 0},
    {"id": 3, "name": "dog", "isthing": 1},
    {"id": 7, "name": "sky", "isthing": 0},
]


def columns(*spans: tuple[int, int, int], shape=(10, 10)) -> np.ndarray:
    """An id map built from (segment id, first column, last column + 1) spans over all rows."""
    ids = np.zeros(shape, dtype=np.uint32)
    for segment_id, start, stop in spans:
        ids[:, start:stop] = segment_id
    return ids


def segs(*entries: tuple[int, int], crowd=(), ids=None) -> list[dict]:
    out = []
    for segment_id, category_id in entries:
        entry = {"id": segment_id, "category_id": category_id, "iscrowd": int(segment_id in crowd)}
        if ids is not None:
            entry["area"] = int((ids == segment_id).sum())
        out.append(entry)
    return out


def write_case(root: Path, images: list[tuple[np.ndarray, list, np.ndarray, list]]) -> dict:
    """Write (gt ids, gt segments, pred ids, pred segments) images as panopticapi input files."""
    (root / "gt").mkdir(parents=True)
    (root / "pred").mkdir()
    gt_anns, pred_anns = [], []
    for index, (gt_ids, gt_segs, pred_ids, pred_segs) in enumerate(images):
        name = f"{index:04d}.png"
        write_panoptic_png(root / "gt" / name, gt_ids)
        write_panoptic_png(root / "pred" / name, pred_ids)
        gt_anns.append({"image_id": index, "file_name": name, "segments_info": gt_segs})
        pred_anns.append({"image_id": index, "file_name": name, "segments_info": pred_segs})
    (root / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": CATEGORIES}))
    (root / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    return {"gt_json_file": root / "gt.json", "pred_json_file": root / "pred.json",
            "gt_folder": root / "gt", "pred_folder": root / "pred"}


def score(tmp_path, gt_ids, gt_segs, pred_ids, pred_segs) -> dict:
    files = write_case(tmp_path, [(gt_ids, gt_segs, pred_ids, pred_segs)])
    ours = pq_compute(**files)
    assert ours == reference_pq_compute(**files)
    return ours


def test_rgb_id_roundtrip():
    ids = np.array([[0, 1, 255], [256, 65535, 256**3 - 1]], dtype=np.uint32)
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
    assert id2rgb(np.array([[258]]))[0, 0].tolist() == [2, 1, 0]


def test_perfect_prediction(tmp_path):
    gt = columns((11, 0, 4), (22, 4, 7), (33, 7, 10))
    gt_segs = segs((11, 1), (22, 2), (33, 3), ids=gt)
    # Fresh ids on the prediction side: matching is by pixels and category, never by id.
    pred = columns((5, 0, 4), (6, 4, 7), (9, 7, 10))
    result = score(tmp_path, gt, gt_segs, pred, segs((5, 1), (6, 2), (9, 3)))
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}
    assert result["Things"]["n"] == 2 and result["Stuff"]["n"] == 1
    # Category 7 is in neither ground truth nor prediction: reported with zeros, not counted.
    assert result["per_class"][7] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_empty_prediction(tmp_path):
    gt = columns((11, 0, 4), (22, 4, 10))
    result = score(tmp_path, gt, segs((11, 1), (22, 2), ids=gt), np.zeros_like(gt), [])
    assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}


def test_off_by_one_category(tmp_path):
    gt = columns((11, 0, 5), (22, 5, 10))
    result = score(tmp_path, gt, segs((11, 1), (22, 2), ids=gt), gt.copy(), segs((11, 2), (22, 3)))
    # Every segment is both a false negative (its category) and a false positive (the next one).
    assert result["All"]["pq"] == 0.0 and result["All"]["n"] == 3
    assert result["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_iou_exactly_half_does_not_match(tmp_path):
    gt = columns((11, 0, 4))
    # 20 px inside a 40 px ground truth: IoU 20/40 = 0.5, not > 0.5 -> one FN and one FP.
    result = score(tmp_path, gt, segs((11, 1), ids=gt), columns((5, 0, 2)), segs((5, 1)))
    assert result["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert result["All"]["n"] == 1
    # 30 px: IoU 0.75 -> a match, PQ = SQ = 0.75, RQ = 1.
    result = score(tmp_path / "b", gt, segs((11, 1), ids=gt), columns((5, 0, 3)), segs((5, 1)))
    assert result["per_class"][1] == {"pq": 0.75, "sq": 0.75, "rq": 1.0}


def test_void_pixels_leave_the_union(tmp_path):
    gt = columns((11, 0, 4))  # columns 4.. are VOID
    # The prediction spills 20 px onto VOID: union = 60 + 40 - 40 - 20 = 40 -> IoU 1.
    result = score(tmp_path, gt, segs((11, 1), ids=gt), columns((5, 0, 6)), segs((5, 1)))
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}


def test_crowd_and_void_overlap(tmp_path):
    # Ground truth: a crowd of category 1 on columns 0-4, grass (2) on 5-9.
    gt = columns((10, 0, 5), (20, 5, 10))
    gt_segs = segs((10, 1), (20, 2), crowd=(10,), ids=gt)
    # pred 1 (category 1) lies on its own category's crowd -> ignored; pred 2 (category 3) lies on the
    # crowd of another category -> a false positive; pred 3 (60 px, 50 on grass) matches with IoU 50/60.
    pred = columns((1, 0, 2), (2, 2, 4), (3, 4, 10))
    result = score(tmp_path, gt, gt_segs, pred, segs((1, 1), (2, 3), (3, 2)))
    assert result["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert result["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert result["All"]["n"] == 2  # grass and dog (the FP); person (crowd only, ignored FP) is not counted
    grass_iou = 50 / 60
    assert result["per_class"][2] == {"pq": grass_iou, "sq": grass_iou, "rq": 1.0}

    # VOID: > half of a prediction on VOID -> ignored; exactly half -> still a false positive.
    gt = columns((20, 6, 10))
    pred = columns((1, 0, 3), (2, 3, 7), (3, 7, 10))  # pred 2: 30 on VOID of 40 -> ignored
    result = score(tmp_path / "void", gt, segs((20, 2), ids=gt), pred, segs((1, 3), (2, 3), (3, 2)))
    assert result["All"]["n"] == 1 and result["per_class"][2]["rq"] == 1.0
    pred = columns((2, 4, 8), (3, 8, 10))  # pred 2: 20 on VOID of 40 -> FP of category 3
    result = score(tmp_path / "half", gt, segs((20, 2), ids=gt), pred, segs((2, 3), (3, 2)))
    assert result["All"]["n"] == 2 and result["per_class"][3]["rq"] == 0.0


def test_equals_panopticapi_on_random_synthetic_data(tmp_path):
    files = write_synthetic_panoptic(tmp_path, num_images=12, height=72, width=96, seed=3)
    expected = reference_pq_compute(**files)
    # Bit-identical, also with a thread pool (sums are still added in image order).
    assert pq_compute(**files, num_workers=1) == expected
    assert pq_compute(**files, num_workers=3) == expected
    assert expected["All"]["n"] > 10 and 0.1 < expected["All"]["pq"] < 0.95


def test_equals_panopticapi_on_real_coco_sample(tmp_path, coco_sample_dir):
    gt_json = json.loads((coco_sample_dir / "panoptic_val.json").read_text())
    rng = np.random.default_rng(0)
    things = [c["id"] for c in gt_json["categories"] if c["isthing"]]
    (tmp_path / "pred").mkdir()
    pred_anns = []
    for ann in gt_json["annotations"]:
        ids = read_panoptic_png(coco_sample_dir / "panoptic" / ann["file_name"])
        pred = np.roll(ids, (2, -3), axis=(0, 1))
        segments = ann["segments_info"]
        pred[pred == segments[0]["id"]] = 0  # one missed segment
        pred_segs = []
        for seg in segments[1:]:
            if not (pred == seg["id"]).any():
                continue
            category = seg["category_id"] if rng.random() > 0.2 else int(rng.choice(things))
            pred_segs.append({"id": seg["id"], "category_id": category})
        write_panoptic_png(tmp_path / "pred" / ann["file_name"], pred)
        pred_anns.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": pred_segs})
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    files = {"gt_json_file": coco_sample_dir / "panoptic_val.json", "pred_json_file": tmp_path / "pred.json",
             "gt_folder": coco_sample_dir / "panoptic", "pred_folder": tmp_path / "pred"}
    expected = reference_pq_compute(**files)
    assert pq_compute(**files) == expected
    assert 0.2 < expected["All"]["pq"] < 1.0
    # Folders default to the JSON path without .json, as in panopticapi.
    perfect = pq_compute(coco_sample_dir / "panoptic_val.json", coco_sample_dir / "panoptic_val.json",
                         coco_sample_dir / "panoptic", coco_sample_dir / "panoptic")
    assert perfect["All"]["pq"] == 1.0


def test_accumulator_single_pass_and_merge_equal_pq_compute(tmp_path):
    files = write_synthetic_panoptic(tmp_path, num_images=8, height=64, width=80, seed=11)
    gt = json.loads(Path(files["gt_json_file"]).read_text())
    pred = {a["image_id"]: a for a in json.loads(Path(files["pred_json_file"]).read_text())["annotations"]}
    expected = pq_compute(**files)

    single = PQAccumulator()
    halves = [PQAccumulator(), PQAccumulator()]
    for index, ann in enumerate(gt["annotations"]):
        gt_ids = read_panoptic_png(files["gt_folder"] / ann["file_name"])
        pred_ids = read_panoptic_png(files["pred_folder"] / ann["file_name"]).astype(np.int32)
        p = pred[ann["image_id"]]
        single.update(gt_ids, ann["segments_info"], pred_ids, p["segments_info"])
        halves[index % 2].update(gt_ids, ann["segments_info"], pred_ids, p["segments_info"])
    assert single.compute(gt["categories"]) == expected

    merged = PQAccumulator()
    for half in halves:  # through JSON, as all_gather_object would carry it
        merged.merge(json.loads(json.dumps(half.state_dict())))
    assert merged.num_images == 8
    assert merged.all_gather().state_dict() == merged.state_dict()  # not distributed: itself
    result = merged.compute(gt["categories"])
    for group in ("All", "Things", "Stuff"):
        assert result[group]["n"] == expected[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert result[group][key] == pytest.approx(expected[group][key], rel=1e-12)


def test_accumulator_takes_tensors_and_large_ids():
    torch = pytest.importorskip("torch")
    gt = torch.tensor([[5, 5, 0], [7, 7, 7]], dtype=torch.int64) * (2**40)  # ids beyond 24 bits
    accumulator = PQAccumulator()
    accumulator.update(gt, [{"id": 5 * 2**40, "category_id": 1}, {"id": 7 * 2**40, "category_id": 2}],
                       gt.clone(), [{"id": 5 * 2**40, "category_id": 1}, {"id": 7 * 2**40, "category_id": 2}])
    assert accumulator.compute(CATEGORIES)["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}


def test_errors_name_the_file_and_id(tmp_path):
    gt = columns((11, 0, 5), (22, 5, 10))
    gt_segs = segs((11, 1), (22, 2), ids=gt)

    files = write_case(tmp_path / "a", [(gt, gt_segs, gt.copy(), segs((11, 1)))])
    with pytest.raises(DataError, match=r"image_id 0 .*0000\.png.*\[22\] are in the predicted PNG but not in"):
        pq_compute(**files)

    files = write_case(tmp_path / "b", [(gt, gt_segs, gt.copy(), segs((11, 1), (22, 2), (99, 2)))])
    with pytest.raises(DataError, match=r"image_id 0 .*\[99\] are in segments_info but not in the PNG"):
        pq_compute(**files)

    files = write_case(tmp_path / "c", [(gt, gt_segs, gt.copy(), segs((11, 1), (22, 42)))])
    with pytest.raises(DataError, match=r"image_id 0 .*segment id 22 has unknown category_id 42"):
        pq_compute(**files)

    files = write_case(tmp_path / "d", [(gt, gt_segs, gt.copy(), segs((11, 1), (22, 2)))])
    Path(files["pred_json_file"]).write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match=r"pred\.json: no prediction for the image with image_id 0"):
        pq_compute(**files)

    files = write_case(tmp_path / "e", [(gt, gt_segs, gt.copy(), segs((11, 1), (22, 2)))])
    (files["pred_folder"] / "0000.png").unlink()
    with pytest.raises(DataError, match=r"0000\.png: panoptic PNG not found"):
        pq_compute(**files)
    with pytest.raises(DataError, match=r"nowhere: folder with prediction segmentations does not exist"):
        pq_compute(files["gt_json_file"], files["pred_json_file"], files["gt_folder"], tmp_path / "nowhere")

    # The same error raised inside a worker process reaches the caller intact.
    files = write_case(tmp_path / "f", [(gt, gt_segs, gt.copy(), segs((11, 1), (22, 2)))] * 3
                       + [(gt, gt_segs, gt.copy(), segs((11, 1)))])
    with pytest.raises(DataError, match=r"image_id 3 .*\[22\] are in the predicted PNG but not in"):
        pq_compute(**files, num_workers=2)

    with pytest.raises(DataError, match=r"size \(10, 9\) differs from ground truth size \(10, 10\)"):
        image_pq_stats(gt, gt_segs, gt[:, :9], segs((11, 1), (22, 2)))
    with pytest.raises(DataError, match=r"predicted segment id 11 appears twice"):
        image_pq_stats(gt, gt_segs, gt, segs((11, 1), (11, 1), (22, 2)))


def test_cli_turns_data_errors_into_one_line(tmp_path, capsys):
    """The CLI contract: a DataError from the evaluator becomes `error: ...` and exit 2."""
    from m2f_trainer import cli

    gt = columns((11, 0, 10))
    files = write_case(tmp_path, [(gt, segs((11, 1), ids=gt), gt.copy(), [])])
    module = type(sys)("m2f_test_eval_task")
    module.main = lambda argv: bool(pq_compute(**files))
    sys.modules[module.__name__] = module
    cli.COMMANDS["eval-probe"] = (module.__name__, "test")
    try:
        assert cli.main(["eval-probe"]) == 2
    finally:
        del cli.COMMANDS["eval-probe"], sys.modules[module.__name__]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "[11]" in err[0]


def test_panoptic_from_masks_feeds_the_accumulator(tmp_path, coco_sample_dir):
    """Dataset-style targets (masks + raw labels + crowd) score exactly like the PNG + JSON ground truth."""
    dataset = json.loads((coco_sample_dir / "panoptic_val.json").read_text())
    accumulator = PQAccumulator()
    for ann in dataset["annotations"]:
        ids = read_panoptic_png(coco_sample_dir / "panoptic" / ann["file_name"])
        masks = np.stack([ids == seg["id"] for seg in ann["segments_info"]])
        gt_ids, gt_segs = panoptic_from_masks(masks, [s["category_id"] for s in ann["segments_info"]],
                                              [s["iscrowd"] for s in ann["segments_info"]])
        assert [s["area"] for s in gt_segs] == [s["area"] for s in ann["segments_info"]]
        pred = np.roll(ids, 3, axis=1)
        pred_segs = [{"id": s["id"], "category_id": s["category_id"]} for s in ann["segments_info"]
                     if (pred == s["id"]).any()]
        accumulator.update(gt_ids, gt_segs, pred, pred_segs)
        write_panoptic_png(tmp_path / ann["file_name"], pred)
        ann["pred_segs"] = pred_segs
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [
        {"image_id": a["image_id"], "file_name": a["file_name"], "segments_info": a["pred_segs"]}
        for a in dataset["annotations"]]}))
    expected = pq_compute(coco_sample_dir / "panoptic_val.json", tmp_path / "pred.json",
                          coco_sample_dir / "panoptic", tmp_path)
    result = accumulator.compute(dataset["categories"])
    # Renumbered ids change the order in which IoUs are summed: equal up to the last bit.
    for group in ("All", "Things", "Stuff"):
        assert result[group] == pytest.approx(expected[group], rel=1e-12)
    for category_id, values in expected["per_class"].items():
        assert result["per_class"][category_id] == pytest.approx(values, rel=1e-12)
    with pytest.raises(ValueError, match="N category ids"):
        panoptic_from_masks(np.zeros((2, 4, 4), bool), [1])


def test_unlisted_gt_ids_and_many_segments_match_panopticapi(tmp_path):
    """GT pixels whose id is not in segments_info count as neither VOID nor a segment (panopticapi);
    hundreds of segments take the folding path of the joint histogram."""
    gt = columns((11, 0, 4), (99, 4, 7), (22, 7, 10))  # 99 is not listed in the JSON
    pred = columns((5, 0, 5), (6, 5, 10))
    score(tmp_path / "unlisted", gt, segs((11, 1), (22, 2), ids=gt), pred, segs((5, 1), (6, 2)))

    rng = np.random.default_rng(7)
    gt = (np.arange(40 * 40).reshape(40, 40) // 4 + 1).astype(np.uint32)  # 400 segments of 4 px
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.3] = 0
    gt_segs = [{"id": int(i), "category_id": int(rng.choice([1, 2, 3])), "iscrowd": int(rng.random() < 0.05),
                "area": 4} for i in np.unique(gt)]
    gt_segs = [s for s in gt_segs if s["id"] != 77]  # and one unlisted id among them
    pred_segs = [{"id": int(i), "category_id": int(rng.choice([1, 2]))} for i in np.unique(pred) if i]
    result = score(tmp_path / "many", gt, gt_segs, pred, pred_segs)
    assert result["All"]["n"] == 3


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_image_stats_equal_panopticapi(data):
    """Random tiny images (VOID, crowd, unlisted GT ids, absent GT segments): same sums as panopticapi."""
    from collections import defaultdict

    from _panopticapi_reference import _CategoryStat, reference_image_stats, reference_results

    shape = (data.draw(st.integers(1, 6)), data.draw(st.integers(1, 7)))
    gt = np.array(data.draw(st.lists(st.sampled_from([0, 3, 5, 8, 9]), min_size=shape[0] * shape[1],
                                     max_size=shape[0] * shape[1]))).reshape(shape).astype(np.uint32)
    pred = np.array(data.draw(st.lists(st.sampled_from([0, 1, 2, 4, 300]), min_size=gt.size,
                                       max_size=gt.size))).reshape(shape).astype(np.uint32)
    category = st.sampled_from([c["id"] for c in CATEGORIES])
    gt_segs = [{"id": i, "category_id": data.draw(category), "iscrowd": int(data.draw(st.booleans())),
                "area": int((gt == i).sum())}
               for i in (3, 5, 8) if data.draw(st.booleans()) or (gt == i).sum() == 0]  # 9: never listed
    pred_segs = [{"id": int(i), "category_id": data.draw(category)} for i in np.unique(pred) if i]
    categories = {c["id"]: c for c in CATEGORIES}

    expected = defaultdict(_CategoryStat)
    reference_image_stats(expected, gt, gt_segs, pred, pred_segs, categories, 0)
    accumulator = PQAccumulator()
    accumulator.update(gt, gt_segs, pred, pred_segs)
    assert accumulator.compute(CATEGORIES) == reference_results(expected, categories)
