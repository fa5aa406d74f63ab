"""Post-processing: parity with HF's Mask2FormerImageProcessor on random outputs, and hand-built cases.

HF deviations from the original Mask2Former that the parity tests adjust for:
1. HF always upsamples mask logits to 384x384 and never crops padding -> our padded_size = image_size = 384x384.
2. HF resizes *probabilities* (panoptic) or *binary masks* with nearest (instance) to target_sizes, the original
   resizes *logits* bilinearly -> panoptic/instance parity uses orig_size = 384x384 and target_sizes=None.
   Semantic resizing is the same in both (einsum at the padded size, then bilinear on the class scores), so the
   semantic test resizes to a different original size.
3. HF instance top-k is fixed to num_queries -> test_topk_per_image = num_queries; HF drops empty masks and
   rounds scores to 6 decimals; the original keeps empty masks.
4. HF panoptic paints every pixel whose argmax query is kept, the original only those where that query's own
   mask probability is >= 0.5 (the others stay void, 0); HF keeps a segment when area ratio > threshold, the
   original when >= threshold (no ties with the threshold used); HF reuses a fused id by resetting its running
   id counter (ids can collide) and repeats segments_info entries -> every kept query gets a distinct class.
5. HF multiplies the mask probabilities by the class score in place before measuring a query's own mask area
   (score * prob >= 0.5, the original: prob >= 0.5) -> kept queries have class probability ~1 (1 - 1e-5).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from m2f_trainer.model.postprocess import (
    instance_inference,
    panoptic_inference,
    postprocess,
    semantic_inference,
)

transformers = pytest.importorskip("transformers")
HF_SIZE = 384


def random_outputs(seed: int, batch: int = 2, num_queries: int = 10, num_classes: int = 12):
    """Blob-shaped mask logits at 96x96 (1/4 of HF's 384) and class logits with a distinct class per query."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, num_queries, 6, 6, generator=generator) * 4 - 3  # sparse blobs
    pred_masks = F.interpolate(coarse, size=(96, 96), mode="bilinear", align_corners=False)
    pred_logits = torch.randn(batch, num_queries, num_classes + 1, generator=generator) * 0.5
    for image in range(batch):
        classes = torch.randperm(num_classes, generator=generator)[:num_queries]
        # Confident queries (class probability ~1, see deviation 5) and unsure ones (dropped by the threshold).
        confident = torch.rand(num_queries, generator=generator) < 0.7
        pred_logits[image, torch.arange(num_queries), classes] += torch.where(confident, 14.0, 1.0)
        pred_logits[image, :2, num_classes] += 20  # a couple of no-object queries
    return {"pred_logits": pred_logits, "pred_masks": pred_masks}


def hf_outputs(outputs):
    return SimpleNamespace(class_queries_logits=outputs["pred_logits"], masks_queries_logits=outputs["pred_masks"])


@pytest.fixture(scope="module")
def hf_processor():
    return transformers.Mask2FormerImageProcessor()


def test_semantic_matches_hf(hf_processor):
    outputs = random_outputs(seed=0)
    orig_sizes = [(300, 420), (384, 200)]
    ours = postprocess(outputs, [(HF_SIZE, HF_SIZE)] * 2, orig_sizes, "semantic", num_classes=12,
                       padded_size=(HF_SIZE, HF_SIZE))
    theirs = hf_processor.post_process_semantic_segmentation(
        hf_outputs(outputs), target_sizes=orig_sizes, return_segmentation_scores=True
    )
    for our, their, size in zip(ours, theirs, orig_sizes, strict=True):
        assert our["sem_seg"].shape == (12, *size)
        torch.testing.assert_close(our["sem_seg"], their.segmentation_scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(our["sem_seg"].argmax(0), their.segmentation)


def test_instance_matches_hf(hf_processor):
    outputs = random_outputs(seed=1)
    ours = postprocess(outputs, [(HF_SIZE, HF_SIZE)] * 2, [(HF_SIZE, HF_SIZE)] * 2, "instance", num_classes=12,
                       test_topk_per_image=10, padded_size=(HF_SIZE, HF_SIZE))
    theirs = hf_processor.post_process_instance_segmentation(hf_outputs(outputs), threshold=0.0,
                                                             return_binary_maps=True)
    for our, their in zip(ours, theirs, strict=True):
        instances = our["instances"]
        assert instances["masks"].dtype == torch.bool and instances["masks"].shape == (10, HF_SIZE, HF_SIZE)
        non_empty = instances["masks"].flatten(1).any(1)
        assert non_empty.sum() == len(their["segments_info"]) > 0
        assert torch.equal(instances["masks"][non_empty], their["segmentation"].bool())
        assert instances["labels"][non_empty].tolist() == [s["label_id"] for s in their["segments_info"]]
        torch.testing.assert_close(
            instances["scores"][non_empty], torch.tensor([s["score"] for s in their["segments_info"]]),
            atol=1e-6, rtol=0,
        )


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_panoptic_matches_hf(hf_processor, seed):
    outputs = random_outputs(seed=seed)
    thing_classes = {0, 1, 2, 3, 4, 5}
    object_mask_threshold, overlap_threshold = 0.5, 0.7919  # not a ratio of small integers: no ties
    ours = postprocess(outputs, [(HF_SIZE, HF_SIZE)] * 2, [(HF_SIZE, HF_SIZE)] * 2, "panoptic", num_classes=12,
                       object_mask_threshold=object_mask_threshold, overlap_threshold=overlap_threshold,
                       thing_classes=thing_classes, padded_size=(HF_SIZE, HF_SIZE))
    theirs = hf_processor.post_process_panoptic_segmentation(
        hf_outputs(outputs), threshold=object_mask_threshold, overlap_mask_area_threshold=overlap_threshold,
        label_ids_to_fuse=set(range(6, 12)),
    )
    upsampled = F.interpolate(outputs["pred_masks"], size=(HF_SIZE, HF_SIZE), mode="bilinear", align_corners=False)
    for image, (our, their) in enumerate(zip(ours, theirs, strict=True)):
        panoptic_seg, segments_info = our["panoptic_seg"]
        assert panoptic_seg.dtype == torch.int32
        assert [s["id"] for s in segments_info] == list(range(1, len(segments_info) + 1))
        assert {s["category_id"] for s in segments_info} == {s["label_id"] for s in their["segments_info"]}
        assert all(s["isthing"] == (s["category_id"] in thing_classes) for s in segments_info)
        our_category = {0: -1, **{s["id"]: s["category_id"] for s in segments_info}}
        their_category = {0: -1, **{s["id"]: s["label_id"] for s in their["segments_info"]}}
        ours_as_class = panoptic_seg.clone().apply_(our_category.get)
        theirs_as_class = their["segmentation"].to(torch.int32).apply_(their_category.get)
        # Deviation 4: pixels whose winning query has mask probability < 0.5 are void in the original.
        scores, labels = outputs["pred_logits"][image].softmax(-1).max(-1)
        kept = (labels != 12) & (scores > object_mask_threshold)
        probs = upsampled[image][kept].sigmoid()
        winner_prob = probs.gather(0, (scores[kept].view(-1, 1, 1) * probs).argmax(0)[None])[0]
        expected = torch.where(winner_prob >= 0.5, theirs_as_class, -1)
        assert torch.equal(ours_as_class, expected)
        assert (ours_as_class >= 0).any()


# Hand-built cases: 8x8 logits with padded = image = original size, so resizing is the identity.
HIGH, LOW = 8.0, -8.0


def class_logits(rows: list[tuple[int, float]], num_classes: int = 4) -> torch.Tensor:
    """Logits whose softmax gives class ``c`` probability ``p`` (rest spread evenly), one row per query."""
    logits = []
    for category, probability in rows:
        rest = (1 - probability) / num_classes
        probs = torch.full((num_classes + 1,), rest)
        probs[category] = probability
        logits.append(probs.log())
    return torch.stack(logits)


def region_mask(rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.full((8, 8), LOW)
    mask[rows, cols] = HIGH
    return mask


def test_stuff_regions_merge_into_one_segment_and_things_stay_separate():
    mask_cls = class_logits([(3, 0.9), (3, 0.9), (0, 0.9), (0, 0.9)])  # class 3 stuff, class 0 thing
    mask_pred = torch.stack([region_mask(slice(0, 4), slice(0, 4)), region_mask(slice(0, 4), slice(4, 8)),
                             region_mask(slice(4, 8), slice(0, 4)), region_mask(slice(4, 8), slice(4, 8))])
    panoptic_seg, segments = panoptic_inference(mask_cls, mask_pred, torch.tensor([True, True, False, False]),
                                                object_mask_threshold=0.8, overlap_threshold=0.8)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [(1, 3, False), (2, 0, True), (3, 0, True)]
    assert (panoptic_seg[:4] == 1).all()
    assert (panoptic_seg[4:, :4] == 2).all() and (panoptic_seg[4:, 4:] == 3).all()
    assert segments[0]["score"] == pytest.approx(0.9, abs=1e-6)


@pytest.mark.parametrize(
    ("overlap_threshold", "kept_segments"),
    [(0.8, 1), (0.55, 1), (0.5, 2), (0.4, 2)],  # 0.5: a ratio equal to the threshold is kept, as in the original
)
def test_overlap_threshold_drops_a_mostly_hidden_segment(overlap_threshold, kept_segments):
    # Query 1 owns columns 4-7 but wins only columns 6-7 against the higher-scoring query 0: ratio 0.5.
    mask_cls = class_logits([(0, 0.95), (1, 0.9)])
    mask_pred = torch.stack([region_mask(slice(0, 8), slice(0, 6)), region_mask(slice(0, 8), slice(4, 8))])
    panoptic_seg, segments = panoptic_inference(mask_cls, mask_pred, torch.tensor([True] * 4),
                                                object_mask_threshold=0.8, overlap_threshold=overlap_threshold)
    assert len(segments) == kept_segments
    assert (panoptic_seg[:, :6] == 1).all()
    assert (panoptic_seg[:, 6:] == (2 if kept_segments == 2 else 0)).all()  # dropped pixels stay void


@pytest.mark.parametrize(("object_mask_threshold", "categories"), [(0.5, [0, 2]), (0.75, [0]), (0.95, [])])
def test_object_mask_threshold_and_no_object_queries(object_mask_threshold, categories):
    mask_cls = class_logits([(0, 0.9), (2, 0.7), (4, 0.99)])  # class 4 is the no-object class
    mask_pred = torch.stack([region_mask(slice(0, 4), slice(0, 8)), region_mask(slice(4, 8), slice(0, 8)),
                             region_mask(slice(0, 8), slice(0, 8))])
    panoptic_seg, segments = panoptic_inference(mask_cls, mask_pred, torch.tensor([True] * 4),
                                                object_mask_threshold=object_mask_threshold)
    assert [s["category_id"] for s in segments] == categories
    assert panoptic_seg.unique().tolist() == ([1, 2] if len(categories) == 2 else [0, 1] if categories else [0])


def test_empty_prediction_gives_void_panoptic_and_no_crash_in_other_modes():
    outputs = {"pred_logits": class_logits([(4, 0.99)] * 3)[None], "pred_masks": torch.full((1, 3, 2, 2), LOW)}
    [result] = postprocess(outputs, [(8, 8)], [(8, 8)], ("semantic", "instance", "panoptic"), num_classes=4,
                           thing_classes={0, 1})
    panoptic_seg, segments = result["panoptic_seg"]
    assert segments == [] and panoptic_seg.shape == (8, 8) and not panoptic_seg.any()
    assert result["sem_seg"].shape == (4, 8, 8) and torch.isfinite(result["sem_seg"]).all()
    instances = result["instances"]
    assert not instances["masks"].any() and (instances["scores"] == 0).all()
    assert set(instances["labels"].tolist()) <= {0, 1}  # things only when panoptic runs too


def test_instance_scores_are_class_probability_times_mean_mask_probability():
    mask_cls = class_logits([(1, 0.8), (2, 0.6)])
    mask_pred = torch.full((2, 8, 8), -3.0)
    mask_pred[0, :2, :2] = 2.0
    mask_pred[0, 2, 2] = 4.0
    instances = instance_inference(mask_cls, mask_pred, test_topk_per_image=2)
    by_label = dict(zip(instances["labels"].tolist(), range(2), strict=True))
    first = by_label[1]
    expected_mean = (4 * torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(4.0))) / 5
    assert instances["scores"][first].item() == pytest.approx(0.8 * expected_mean.item(), rel=1e-5)
    assert instances["masks"][first].sum() == 5
    assert instances["scores"][by_label[2]].item() == pytest.approx(0.0, abs=1e-6)  # empty mask scores 0


@pytest.mark.parametrize(("modes", "expect_stuff"), [("instance", True), (("instance", "panoptic"), False)])
def test_instances_keep_only_things_when_panoptic_runs_too(modes, expect_stuff):
    outputs = {"pred_logits": torch.randn(1, 6, 5), "pred_masks": torch.randn(1, 6, 2, 2)}
    [result] = postprocess(outputs, [(8, 8)], [(8, 8)], modes, num_classes=4, test_topk_per_image=24,
                           thing_classes=[True, True, False, False])
    labels = set(result["instances"]["labels"].tolist())
    assert labels <= {0, 1, 2, 3}
    assert bool(labels & {2, 3}) is expect_stuff
    assert len(result["instances"]["labels"]) == (24 if expect_stuff else 12)


@pytest.mark.parametrize("modes", ["semantic", "instance", ("panoptic", "instance", "semantic")])
def test_padding_is_cropped_before_resizing_to_the_original_size(modes):
    # Image 8x12 inside a 16x16 padded input; query 1 only covers padding and must vanish after the crop.
    mask_pred = torch.full((1, 2, 16, 16), LOW)
    mask_pred[0, 0, :8, :12] = HIGH
    mask_pred[0, 1, 8:, :] = HIGH
    mask_pred[0, 1, :, 12:] = HIGH
    outputs = {"pred_logits": class_logits([(0, 0.9), (1, 0.9)], num_classes=2)[None], "pred_masks": mask_pred}
    [result] = postprocess(outputs, [(8, 12)], [(16, 24)], modes, num_classes=2, test_topk_per_image=2,
                           thing_classes={0, 1}, padded_size=(16, 16))
    if "sem_seg" in result:
        assert result["sem_seg"].shape == (2, 16, 24)
        assert (result["sem_seg"].argmax(0) == 0).all()
    if "panoptic_seg" in result:
        panoptic_seg, segments = result["panoptic_seg"]
        assert [s["category_id"] for s in segments] == [0] and (panoptic_seg == 1).all()
    if "instances" in result:
        masks, labels = result["instances"]["masks"], result["instances"]["labels"].tolist()
        assert masks.shape == (2, 16, 24)
        assert masks[labels.index(0)].all() and not masks[labels.index(1)].any()


def test_default_padded_size_is_four_times_the_mask_resolution():
    outputs = random_outputs(seed=5, batch=1)
    default = postprocess(outputs, [(384, 384)], [(384, 384)], "semantic", num_classes=12)
    explicit = postprocess(outputs, [(384, 384)], [(384, 384)], "semantic", num_classes=12, padded_size=(384, 384))
    assert torch.equal(default[0]["sem_seg"], explicit[0]["sem_seg"])


def test_semantic_inference_sums_class_times_mask_probability_over_queries():
    mask_cls = class_logits([(0, 0.6), (1, 0.7)], num_classes=2)
    mask_pred = torch.stack([torch.full((2, 2), 0.0), torch.full((2, 2), 2.0)])
    sem_seg = semantic_inference(mask_cls, mask_pred)
    rest_0, rest_1 = 0.4 / 2, 0.3 / 2
    expected_class_1 = rest_0 * 0.5 + 0.7 * torch.sigmoid(torch.tensor(2.0)).item()
    assert sem_seg[1, 0, 0].item() == pytest.approx(expected_class_1, rel=1e-5)
    assert sem_seg[0, 1, 1].item() == pytest.approx(0.6 * 0.5 + rest_1 * torch.sigmoid(torch.tensor(2.0)).item(),
                                                    rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "depth"}, "unknown mode"),
        ({"mode": "panoptic"}, "needs thing_classes"),
        ({"mode": "panoptic", "thing_classes": {0, 7}}, r"thing_classes \[7\] outside"),
        ({"mode": "panoptic", "thing_classes": [True, False]}, "expected \\(4,\\)"),
        ({"mode": "semantic", "num_classes": 5}, "expected num_classes \\+ 1 = 6"),
        ({"mode": "semantic", "orig_sizes": []}, "orig_sizes for a batch of 1"),
    ],
)
def test_invalid_arguments_are_named(kwargs, message):
    arguments = {"outputs": {"pred_logits": torch.randn(1, 3, 5), "pred_masks": torch.randn(1, 3, 2, 2)},
                 "image_sizes": [(8, 8)], "orig_sizes": [(8, 8)], "num_classes": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        postprocess(**arguments)


def sequential_panoptic(mask_cls, mask_pred, is_thing, object_mask_threshold, overlap_threshold):
    """The original's query-by-query loop, kept plain as the reference for the whole-tensor version."""
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = mask_cls.softmax(-1).max(-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    probs = mask_pred.sigmoid()[keep]
    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    segments, stuff_ids = [], {}
    if not keep.any():
        return panoptic_seg, segments
    winner = (scores[keep].view(-1, 1, 1) * probs).argmax(0)
    for k, category in enumerate(labels[keep].tolist()):
        won = int((winner == k).sum())
        own = int((probs[k] >= 0.5).sum())
        painted = (winner == k) & (probs[k] >= 0.5)
        if won == 0 or own == 0 or int(painted.sum()) == 0 or won / own < overlap_threshold:
            continue
        isthing = bool(is_thing[category])
        if not isthing and category in stuff_ids:
            panoptic_seg[painted] = stuff_ids[category]
            continue
        segment_id = len(segments) + 1
        if not isthing:
            stuff_ids[category] = segment_id
        panoptic_seg[painted] = segment_id
        segments.append({"id": segment_id, "category_id": category, "isthing": isthing})
    return panoptic_seg, segments


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_queries=st.integers(1, 8),
    num_classes=st.integers(1, 4),
    size=st.tuples(st.integers(1, 10), st.integers(1, 10)),
    object_mask_threshold=st.sampled_from([0.0, 0.3, 0.5]),
    overlap_threshold=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
)
def test_panoptic_equals_the_sequential_reference(seed, num_queries, num_classes, size, object_mask_threshold,
                                                  overlap_threshold):
    generator = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(num_queries, num_classes + 1, generator=generator) * 3
    mask_pred = torch.randn(num_queries, *size, generator=generator) * 3
    is_thing = torch.rand(num_classes, generator=generator) < 0.5
    panoptic_seg, segments = panoptic_inference(mask_cls, mask_pred, is_thing, object_mask_threshold,
                                                overlap_threshold)
    expected_seg, expected_segments = sequential_panoptic(mask_cls, mask_pred, is_thing, object_mask_threshold,
                                                          overlap_threshold)
    assert torch.equal(panoptic_seg, expected_seg)
    assert [{k: s[k] for k in ("id", "category_id", "isthing")} for s in segments] == expected_segments
