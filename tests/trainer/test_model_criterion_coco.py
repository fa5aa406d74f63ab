"""Matcher, criterion and panoptic post-processing on real COCO panoptic targets (data pipeline -> collate -> loss).

Same oracle technique as test_model_criterion.py: HF's matcher and loss draw their random points with the
global generator in the same order and shapes as ours, so equal seeds give equal points.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from m2f_spec import load_spec
from m2f_trainer.data import build_dataset, collate
from m2f_trainer.model import build_model
from m2f_trainer.model.criterion import build_criterion
from m2f_trainer.model.postprocess import postprocess

hf_mask2former = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
from transformers import Mask2FormerConfig  # noqa: E402

NUM_QUERIES = 20


@pytest.fixture(scope="module")
def coco_batch(coco_sample_dir, tmp_path_factory):
    spec = tmp_path_factory.mktemp("coco") / "spec.yaml"
    split = {"panoptic_json": "panoptic_val.json", "panoptic_dir": "panoptic", "img_dir": "images",
             "root_dir": str(coco_sample_dir)}
    spec.write_text(yaml.safe_dump({
        "model": {"sem_seg_head": {"num_classes": 133}, "mask_former": {"num_object_queries": NUM_QUERIES}},
        "dataset": {"type": "coco_panoptic", "contiguous_id": True, "label_map": str(coco_sample_dir / "panoptic_coco_categories.json"),
                    "augmentation": {"train_min_size": [224], "train_crop_size": [224, 224]},
                    "train": split, "val": split},
    }))
    cfg = load_spec(spec)
    torch.manual_seed(0)
    dataset = build_dataset(cfg, "train")
    images, targets, metas = collate([dataset[0], dataset[1]])
    return cfg, dataset, images, targets, metas


def random_outputs(images: torch.Tensor, seed: int, num_aux: int = 2) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch, _, height, width = images.shape

    def prediction_set():
        return {"pred_logits": torch.randn(batch, NUM_QUERIES, 134, generator=generator),
                "pred_masks": torch.randn(batch, NUM_QUERIES, height // 4, width // 4, generator=generator) * 3}

    return {**prediction_set(), "aux_outputs": [prediction_set() for _ in range(num_aux)]}


def test_loss_on_real_targets_matches_hf(coco_batch, monkeypatch):
    cfg, _, images, targets, _ = coco_batch
    assert all(len(t["labels"]) > 0 for t in targets)
    assert all(t["masks"].dtype == torch.bool and t["masks"].shape[-2:] == images.shape[-2:] for t in targets)
    outputs = random_outputs(images, seed=1)
    criterion = build_criterion(cfg)

    # The matching itself agrees with HF's matcher given the original's class cost (2.0, HF default 1.0).
    hf_matcher = hf_mask2former.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0)
    torch.manual_seed(3)
    indices = criterion.matcher(outputs, targets)
    torch.manual_seed(3)
    hf_indices = hf_matcher(outputs["pred_masks"], outputs["pred_logits"],
                            [t["masks"].float() for t in targets], [t["labels"] for t in targets])
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(indices, hf_indices, strict=True))

    monkeypatch.setattr(criterion.matcher, "forward", lambda outputs, targets: indices)
    torch.manual_seed(4)
    ours = criterion(outputs, targets)
    hf_loss = hf_mask2former.Mask2FormerLoss(Mask2FormerConfig(num_labels=133), weight_dict={})
    monkeypatch.setattr(hf_loss.matcher, "forward", lambda *args, **kwargs: indices)
    torch.manual_seed(4)
    theirs = hf_loss(outputs["pred_masks"], outputs["pred_logits"], [t["masks"].float() for t in targets],
                     [t["labels"] for t in targets],
                     [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
                      for a in outputs["aux_outputs"]])
    for suffix in ("", "_0", "_1"):
        torch.testing.assert_close(ours["loss_ce" + suffix], 2.0 * theirs["loss_cross_entropy" + suffix],
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ours["loss_mask" + suffix], 5.0 * theirs["loss_mask" + suffix],
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ours["loss_dice" + suffix], 5.0 * theirs["loss_dice" + suffix],
                                   atol=1e-4, rtol=1e-5)


def test_panoptic_postprocess_reproduces_real_ground_truth(coco_batch):
    """Outputs built from the targets themselves (one confident query per segment) give back the segments."""
    _, dataset, images, targets, metas = coco_batch
    thing_classes = set(dataset.label_map.thing_classes)
    assert 0 < len(thing_classes) < 133
    for target, meta in zip(targets, metas, strict=True):
        num_segments = len(target["labels"])
        num_queries = num_segments + 3
        pred_logits = torch.full((1, num_queries, 134), -10.0)
        pred_logits[0, :, 133] = 10.0  # unused queries predict no-object
        pred_logits[0, torch.arange(num_segments), target["labels"]] = 10.0
        pred_logits[0, torch.arange(num_segments), 133] = -10.0
        pred_masks = torch.full((1, num_queries, *images.shape[-2:]), -20.0)
        pred_masks[0, :num_segments] = torch.where(target["masks"], 20.0, -20.0)
        [result] = postprocess({"pred_logits": pred_logits, "pred_masks": pred_masks}, [meta["image_size"]],
                               [meta["image_size"]], "panoptic", num_classes=133, thing_classes=thing_classes,
                               padded_size=tuple(images.shape[-2:]))
        panoptic_seg, segments = result["panoptic_seg"]
        height, width = meta["image_size"]
        truth = target["masks"][:, :height, :width]
        categories = target["labels"].tolist()
        # Stuff classes merge, so the expected segments are one per thing instance and one per stuff class.
        expected = {(c, c in thing_classes) for c in categories}
        assert {(s["category_id"], s["isthing"]) for s in segments} == expected
        for segment in segments:
            same_class = [i for i, c in enumerate(categories) if c == segment["category_id"]]
            covered = panoptic_seg == segment["id"]
            if not segment["isthing"]:
                assert torch.equal(covered, truth[same_class].any(0))
            else:
                assert any(torch.equal(covered, truth[i]) for i in same_class)


def test_real_model_outputs_train_on_real_targets(coco_batch, repo_root):
    """The model's output contract feeds the criterion: every prediction set is supervised and backpropagates."""
    _, _, images, targets, _ = coco_batch
    cfg = load_spec(repo_root / "examples" / "specs" / "tiny_cpu_panoptic.yaml",
                    ["model.sem_seg_head.num_classes=133", "model.mask_former.dec_layers=3"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    outputs = model(images)
    losses = build_criterion(cfg)(outputs, targets)
    assert set(losses) == {f"{name}{suffix}" for name in ("loss_ce", "loss_mask", "loss_dice")
                           for suffix in ("", "_0", "_1")}
    assert all(torch.isfinite(value) and value > 0 for value in losses.values())
    sum(losses.values()).backward()
    without_grad = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []
