"""Hungarian matcher and SetCriterion: brute-force matching, parity with HF transformers' Mask2Former, edge cases.

How the random point sampling is made identical (HF is a test-only oracle):
both implementations draw their points with the global ``torch.rand`` in the same order and shapes as the
original Mask2Former/detectron2 code -- matcher: one ``rand(1, P, 2)`` per image in batch order; mask losses:
``rand(M, P*oversample, 2)`` then ``rand(M, P - int(P*importance), 2)`` for the final prediction set first, then
for each aux set in order. Seeding the global generator to the same value right before each call therefore
gives both sides exactly the same points, with the real ``num_points = 12544``. For the loss the matching is
fixed: HF's matcher ``forward`` is replaced so it returns the injected indices (and draws nothing), and our
``SetCriterion`` receives a matcher callable returning the same indices through its constructor.

HF deviations adjusted for here: its matcher's default class cost is 1.0 (the original and we use 2.0), so
the matcher parity passes equal weights explicitly; HF returns unweighted terms named ``loss_cross_entropy``
while we return terms already multiplied by ``weight_dict`` (``loss_ce``), so HF's are multiplied by the weights.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from m2f_trainer.model.criterion import SetCriterion, average_num_masks, build_criterion
from m2f_trainer.model.matcher import HungarianMatcher

hf_mask2former = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
from transformers import Mask2FormerConfig  # noqa: E402

NUM_CLASSES = 5


def make_batch(seed: int, target_counts: list[int], num_queries: int = 8, num_aux: int = 2, mask_hw=(16, 16)):
    """Random model outputs at 1/4 of a 64x64 padded input and random bool targets at the padded size."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(target_counts)

    def prediction_set():
        return {
            "pred_logits": torch.randn(batch, num_queries, NUM_CLASSES + 1, generator=generator) * 2,
            "pred_masks": torch.randn(batch, num_queries, *mask_hw, generator=generator) * 3,
        }

    outputs = prediction_set()
    outputs["aux_outputs"] = [prediction_set() for _ in range(num_aux)]
    targets = []
    for count in target_counts:
        coarse = torch.rand(count, 1, 8, 8, generator=generator) > 0.5
        masks = F.interpolate(coarse.float(), size=(64, 64), mode="nearest")[:, 0].bool()
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
        targets.append({"labels": labels, "masks": masks})
    return outputs, targets


def explicit_cost(pred_logits, pred_masks, target, point_coords, weights):
    """Matching cost of one image computed pair by pair with plain torch ops (independent of matcher.py)."""
    w_class, w_mask, w_dice = weights
    grid = (2 * point_coords - 1)[None, :, None, :]  # [1,P,1,2]
    pred_points = F.grid_sample(pred_masks[:, None], grid.expand(len(pred_masks), -1, -1, -1), align_corners=False)
    pred_points = pred_points[:, 0, :, 0]
    tgt_points = F.grid_sample(
        target["masks"][:, None].float(), grid.expand(len(target["masks"]), -1, -1, -1), align_corners=False
    )[:, 0, :, 0]
    probs = pred_logits.softmax(-1)
    cost = torch.zeros(len(pred_logits), len(tgt_points), dtype=torch.float64)
    for q, n in itertools.product(range(len(pred_logits)), range(len(tgt_points))):
        bce = F.binary_cross_entropy_with_logits(pred_points[q], tgt_points[n])
        p = pred_points[q].sigmoid()
        dice = 1 - (2 * (p * tgt_points[n]).sum() + 1) / (p.sum() + tgt_points[n].sum() + 1)
        cost[q, n] = w_class * -probs[q, target["labels"][n]] + w_mask * bce + w_dice * dice
    return cost


@pytest.mark.parametrize(
    ("num_queries", "target_count", "weights"),
    [
        (3, 3, (2.0, 5.0, 5.0)),
        (5, 3, (2.0, 5.0, 5.0)),
        (6, 2, (1.0, 0.0, 0.0)),  # class cost only
        (4, 4, (0.0, 1.0, 0.0)),  # BCE cost only
        (5, 1, (0.0, 0.0, 1.0)),  # dice cost only
        (4, 0, (2.0, 5.0, 5.0)),  # image without segments
    ],
)
def test_matcher_finds_the_brute_force_optimum(num_queries, target_count, weights):
    outputs, targets = make_batch(seed=num_queries * 10 + target_count, target_counts=[target_count],
                                  num_queries=num_queries, num_aux=0)
    num_points = 500
    matcher = HungarianMatcher(*weights, num_points=num_points)
    torch.manual_seed(7)
    [(pred_idx, tgt_idx)] = matcher(outputs, targets)
    torch.manual_seed(7)
    point_coords = torch.rand(1, num_points, 2)[0]
    cost = explicit_cost(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0], point_coords, weights)

    assert pred_idx.dtype == tgt_idx.dtype == torch.int64
    assert len(pred_idx) == len(tgt_idx) == min(num_queries, target_count)
    assert sorted(tgt_idx.tolist()) == list(range(target_count))
    best = min(
        (sum(cost[q, n].item() for n, q in enumerate(chosen)), chosen)
        for chosen in itertools.permutations(range(num_queries), target_count)
    )
    matched_cost = sum(cost[q, n].item() for q, n in zip(pred_idx.tolist(), tgt_idx.tolist(), strict=True))
    assert matched_cost == pytest.approx(best[0], abs=1e-5)
    assert dict(zip(tgt_idx.tolist(), pred_idx.tolist(), strict=True)) == dict(enumerate(best[1]))


def test_matcher_cost_matrix_equals_pairwise_definition():
    outputs, targets = make_batch(seed=3, target_counts=[3, 2], num_aux=0)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=300)
    torch.manual_seed(11)
    costs = matcher.cost_matrices(outputs, targets)
    torch.manual_seed(11)
    for image, cost in enumerate(costs):
        point_coords = torch.rand(1, 300, 2)[0]
        expected = explicit_cost(
            outputs["pred_logits"][image], outputs["pred_masks"][image], targets[image], point_coords, (2, 5, 5)
        )
        assert cost.dtype == torch.float32
        torch.testing.assert_close(cost.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("seed", "target_counts", "weights"),
    [
        (0, [3, 1], (2.0, 5.0, 5.0)),
        (1, [4, 0, 2], (2.0, 5.0, 5.0)),
        (2, [8, 5], (1.0, 1.0, 1.0)),  # HF's defaults, every query matched in the first image
    ],
)
def test_matcher_matches_hf_with_equal_cost_weights(seed, target_counts, weights):
    outputs, targets = make_batch(seed, target_counts, num_aux=0)
    ours_matcher = HungarianMatcher(*weights)
    hf_matcher = hf_mask2former.Mask2FormerHungarianMatcher(*weights, num_points=12544)
    torch.manual_seed(seed)
    ours = ours_matcher(outputs, targets)
    torch.manual_seed(seed)
    theirs = hf_matcher(
        outputs["pred_masks"], outputs["pred_logits"],
        [t["masks"].float() for t in targets], [t["labels"] for t in targets],
    )
    for (our_pred, our_tgt), (hf_pred, hf_tgt) in zip(ours, theirs, strict=True):
        assert torch.equal(our_pred, hf_pred) and torch.equal(our_tgt, hf_tgt)


def test_matcher_costs_stay_fp32_under_autocast():
    outputs, targets = make_batch(seed=5, target_counts=[4, 2], num_aux=0)
    matcher = HungarianMatcher()
    torch.manual_seed(0)
    plain = matcher(outputs, targets)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        costs = matcher.cost_matrices(outputs, targets)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = matcher(outputs, targets)
    assert all(cost.dtype == torch.float32 for cost in costs)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, autocast, strict=True))


def test_matcher_rejects_non_finite_costs_and_all_zero_weights():
    outputs, targets = make_batch(seed=6, target_counts=[2], num_aux=0)
    outputs["pred_logits"][0, 3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        HungarianMatcher()(outputs, targets)
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(0, 0, 0)


def fixed_matching(seed: int, target_counts: list[int], num_queries: int = 8):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randperm(num_queries, generator=generator)[:count].sort().values,
         torch.randperm(count, generator=generator))
        for count in target_counts
    ]


def hf_losses(outputs, targets, indices, weights, monkeypatch):
    config = Mask2FormerConfig(num_labels=NUM_CLASSES, no_object_weight=0.1, train_num_points=12544,
                               oversample_ratio=3.0, importance_sample_ratio=0.75)
    hf_loss = hf_mask2former.Mask2FormerLoss(config, weight_dict={})
    monkeypatch.setattr(hf_loss.matcher, "forward", lambda *args, **kwargs: indices)
    raw = hf_loss(
        outputs["pred_masks"], outputs["pred_logits"],
        [t["masks"].float() for t in targets], [t["labels"] for t in targets],
        [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
         for a in outputs["aux_outputs"]],
    )
    names = {"loss_cross_entropy": ("loss_ce", weights[0]), "loss_mask": ("loss_mask", weights[1]),
             "loss_dice": ("loss_dice", weights[2])}
    weighted = {}
    for key, value in raw.items():
        for hf_name, (our_name, weight) in names.items():
            if key == hf_name or key.startswith(hf_name + "_"):
                weighted[our_name + key[len(hf_name):]] = value * weight
    return weighted


@pytest.mark.parametrize(
    ("seed", "target_counts"),
    [
        (0, [3, 2]),
        (1, [4, 0]),  # one image without segments
        (2, [0, 0]),  # no segment in the whole batch
        (3, [8, 1, 5]),  # every query of the first image matched
    ],
)
def test_loss_and_gradients_match_hf_for_a_fixed_matching(seed, target_counts, monkeypatch):
    weights = (2.0, 5.0, 5.0)
    outputs, targets = make_batch(seed, target_counts)
    indices = fixed_matching(seed, target_counts)
    leaves = [outputs["pred_logits"], outputs["pred_masks"]]
    for leaf in leaves:
        leaf.requires_grad_(True)
    criterion = SetCriterion(NUM_CLASSES, matcher=lambda outputs, targets: indices, class_weight=weights[0],
                             mask_weight=weights[1], dice_weight=weights[2], no_object_weight=0.1)

    torch.manual_seed(seed)
    ours = criterion(outputs, targets)
    our_grads = torch.autograd.grad(sum(ours.values()), leaves)
    torch.manual_seed(seed)
    theirs = hf_losses(outputs, targets, indices, weights, monkeypatch)
    their_grads = torch.autograd.grad(sum(theirs.values()), leaves)

    assert set(ours) == set(theirs) == {
        f"{name}{suffix}" for name in ("loss_ce", "loss_mask", "loss_dice") for suffix in ("", "_0", "_1")
    }
    for key in ours:
        assert ours[key].shape == ()
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=1e-5, msg=key)
    for ours_grad, theirs_grad in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-5, rtol=1e-4)


def test_empty_batch_gives_zero_mask_losses_and_a_backward_pass():
    outputs, targets = make_batch(seed=4, target_counts=[0, 0])
    outputs["pred_masks"].requires_grad_(True)
    losses = SetCriterion(NUM_CLASSES)(outputs, targets)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    assert torch.isfinite(losses["loss_ce"]) and losses["loss_ce"] > 0
    sum(losses.values()).backward()
    assert torch.count_nonzero(outputs["pred_masks"].grad) == 0


@pytest.mark.parametrize(("deep_supervision", "num_aux", "expected_sets"), [(True, 3, 4), (False, 3, 1), (True, 0, 1)])
def test_deep_supervision_adds_suffixed_terms_per_aux_set(deep_supervision, num_aux, expected_sets):
    outputs, targets = make_batch(seed=8, target_counts=[2, 3], num_aux=num_aux)
    losses = SetCriterion(NUM_CLASSES, deep_supervision=deep_supervision, num_points=200)(outputs, targets)
    suffixes = [""] + [f"_{i}" for i in range(expected_sets - 1)]
    assert set(losses) == {name + suffix for name in ("loss_ce", "loss_mask", "loss_dice") for suffix in suffixes}


def test_terms_are_scaled_by_their_weights():
    outputs, targets = make_batch(seed=9, target_counts=[3, 1])
    indices = fixed_matching(9, [3, 1])
    unit = SetCriterion(NUM_CLASSES, matcher=lambda o, t: indices, class_weight=1, mask_weight=1, dice_weight=1)
    weighted = SetCriterion(NUM_CLASSES, matcher=lambda o, t: indices, class_weight=2, mask_weight=5, dice_weight=3)
    torch.manual_seed(0)
    unit_losses = unit(outputs, targets)
    torch.manual_seed(0)
    weighted_losses = weighted(outputs, targets)
    factor = {"loss_ce": 2, "loss_mask": 5, "loss_dice": 3}
    for key, value in unit_losses.items():
        base_name = key if key in factor else key.rsplit("_", 1)[0]
        torch.testing.assert_close(weighted_losses[key], value * factor[base_name])


def test_build_criterion_reads_the_spec():
    schema = pytest.importorskip("m2f_spec.schema")
    cfg = schema.ExperimentConfig()
    cfg.model.sem_seg_head.num_classes = 7
    cfg.model.mask_former.class_weight = 3.0
    cfg.model.mask_former.no_object_weight = 0.2
    cfg.model.mask_former.train_num_points = 1000
    cfg.model.mask_former.deep_supervision = False
    criterion = build_criterion(cfg)
    assert criterion.weight_dict == {"loss_ce": 3.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert criterion.matcher.cost_class == 3.0 and criterion.matcher.num_points == 1000
    assert criterion.num_points == 1000 and criterion.deep_supervision is False
    assert criterion.empty_weight.tolist() == pytest.approx([1.0] * 7 + [0.2])


DISTRIBUTED_WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from m2f_trainer.model.criterion import SetCriterion, average_num_masks
    rank, store = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    counts = [1, 5][rank]
    torch.manual_seed(rank)
    outputs = {"pred_logits": torch.randn(1, 8, 6), "pred_masks": torch.randn(1, 8, 16, 16)}
    targets = [{"labels": torch.zeros(counts, dtype=torch.long), "masks": torch.rand(counts, 64, 64) > 0.5}]
    criterion = SetCriterion(5, num_points=300)
    num_masks = average_num_masks(targets, torch.device("cpu"))
    indices = criterion.matcher(outputs, targets)
    torch.manual_seed(0)
    averaged = criterion.prediction_set_losses(outputs, targets, num_masks, indices)["loss_mask"]
    torch.manual_seed(0)
    local = criterion.prediction_set_losses(outputs, targets, torch.tensor(float(counts)), indices)["loss_mask"]
    print(num_masks.item(), (averaged * num_masks / counts - local).abs().item())
    dist.destroy_process_group()
    """
)


@pytest.mark.slow  # two fresh interpreters importing torch: seconds alone, much more on a loaded machine
def test_num_masks_is_averaged_across_ranks(tmp_path):
    store = tmp_path / "store"
    workers = [
        subprocess.Popen([sys.executable, "-c", DISTRIBUTED_WORKER, str(rank), str(store)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    results = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr
        num_masks, difference = map(float, stdout.split())
        assert num_masks == 3.0  # (1 + 5) / 2 on both ranks
        assert difference < 1e-6
    # Single process: the local count, clamped to at least 1 for a batch without segments.
    assert average_num_masks([{"labels": torch.zeros(0)}], torch.device("cpu")).item() == 1.0


def test_targets_of_different_sizes_behave_as_if_zero_padded_to_the_largest():
    outputs, targets = make_batch(seed=12, target_counts=[3, 2])
    cropped = [targets[0], {"labels": targets[1]["labels"], "masks": targets[1]["masks"][:, :48, :40]}]
    padded = [targets[0], {"labels": targets[1]["labels"],
                           "masks": F.pad(cropped[1]["masks"], (0, 24, 0, 16))}]
    criterion = SetCriterion(NUM_CLASSES, num_points=400)
    torch.manual_seed(1)
    from_cropped = criterion(outputs, cropped)
    torch.manual_seed(1)
    from_padded = criterion(outputs, padded)
    assert from_cropped.keys() == from_padded.keys()
    for key in from_cropped:
        assert torch.equal(from_cropped[key], from_padded[key]), key
