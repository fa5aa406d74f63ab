"""Interface tests over every backbone variant: feature strides/channels, output shapes, finiteness, backward
with and without activation checkpointing (which must not change the gradients)."""

from __future__ import annotations

import pytest
import torch

from m2f_trainer.model import Mask2Former, build_model_from_config
from m2f_trainer.model.backbone import EFFICIENTVIT_MODELS, SWIN_PRESETS

# A small head keeps the cost in the backbone under test; the code path is the full model's.
SMALL_HEAD = dict(
    num_classes=3, num_queries=5, hidden_dim=32, nheads=2, dim_feedforward=32, decoder_layers=3, conv_dim=32,
    mask_dim=32, transformer_enc_layers=1, transformer_dim_feedforward=32,
)

EXPECTED_CHANNELS = {
    "swin-tiny": [96, 192, 384, 768],
    "swin-small": [96, 192, 384, 768],
    "swin-base": [128, 256, 512, 1024],
    "swin-large": [192, 384, 768, 1536],
    "efficientvit-b0": [16, 32, 64, 128],
    "efficientvit-b1": [32, 64, 128, 256],
    "efficientvit-b2": [48, 96, 192, 384],
    "efficientvit-b3": [64, 128, 256, 512],
    "efficientvit-l0": [64, 128, 256, 512],
    "efficientvit-l1": [64, 128, 256, 512],
    "efficientvit-l2": [64, 128, 256, 512],
    "efficientvit-l3": [128, 256, 512, 1024],
}


def _backbone_config(variant: str) -> dict:
    family, name = variant.split("-")
    if family == "swin":
        return {"kind": "swin", **SWIN_PRESETS[name], "drop_path_rate": 0.0}
    timm_name, overrides = EFFICIENTVIT_MODELS[name]
    return {"kind": "timm", "name": timm_name, "kwargs": overrides}


def _loss(outputs: dict) -> torch.Tensor:
    sets = [outputs, *outputs["aux_outputs"]]
    return sum(s["pred_logits"].square().mean() + s["pred_masks"].tanh().mean() for s in sets)


def _probe_grads(model: Mask2Former) -> dict[str, torch.Tensor]:
    """Gradients of a few parameters spread over the network (all of them would double a large model's memory)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    picked = [n for n in names if n.startswith("backbone.")][:: max(1, len(names) // 40)]
    picked += [n for n in names if not n.startswith("backbone.")]
    params = dict(model.named_parameters())
    return {n: params[n].grad.detach().clone() for n in picked if params[n].grad is not None}


HEAVY = {"swin-large", "efficientvit-l3"}  # ~200M parameters: 10-20 s each on 2 shared cores


@pytest.mark.parametrize(
    "variant", [pytest.param(v, marks=pytest.mark.slow) if v in HEAVY else v for v in EXPECTED_CHANNELS]
)
def test_every_backbone_variant_builds_runs_and_backpropagates(variant):
    torch.manual_seed(0)
    model = build_model_from_config({**SMALL_HEAD, "backbone": _backbone_config(variant)})
    assert model.backbone.strides == [4, 8, 16, 32]
    assert list(model.backbone.channels) == EXPECTED_CHANNELS[variant]

    images = torch.randn(2, 3, 64, 96)
    features = model.backbone(images)
    assert [tuple(f.shape) for f in features] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(EXPECTED_CHANNELS[variant], (4, 8, 16, 32), strict=True)
    ]

    losses, grads = [], []
    for policy in (None, "selective", "full"):
        model.zero_grad(set_to_none=True)
        model.set_activation_checkpoint(policy is not None, policy or "selective")
        outputs = model(images)
        assert outputs["pred_logits"].shape == (2, 5, 4)
        assert outputs["pred_masks"].shape == (2, 5, 16, 24)
        assert len(outputs["aux_outputs"]) == 3
        loss = _loss(outputs)
        assert torch.isfinite(loss)
        loss.backward()
        grads.append(_probe_grads(model))
        losses.append(loss.detach())
        assert all(torch.isfinite(g).all() for g in grads[-1].values())
    for checkpointed_loss, checkpointed_grads in zip(losses[1:], grads[1:], strict=True):
        torch.testing.assert_close(checkpointed_loss, losses[0])
        assert checkpointed_grads.keys() == grads[0].keys() and len(grads[0]) > 10
        for name in grads[0]:
            torch.testing.assert_close(checkpointed_grads[name], grads[0][name], rtol=1e-4, atol=1e-5, msg=name)

    model.eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 96, 64))
    assert outputs["pred_masks"].shape == (1, 5, 24, 16)
    assert torch.isfinite(outputs["pred_masks"]).all()


def _tiny_swin_model(**overrides) -> Mask2Former:
    backbone = {"kind": "swin", "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
                "window_size": 7, "drop_path_rate": 0.0}
    return build_model_from_config({**SMALL_HEAD, "backbone": backbone, **overrides})


@pytest.mark.parametrize("policy, recomputed", [
    ("selective", {"stride-4 swin block", "stride-8 swin block", "encoder layer"}),
    ("full", {"stride-4 swin block", "stride-8 swin block", "stride-16 swin block", "encoder layer",
              "decoder ffn"}),
])
def test_activation_checkpointing_recomputes_what_its_policy_names(policy, recomputed):
    model = _tiny_swin_model()
    watched = {
        "stride-4 swin block": model.backbone.layers[0].blocks[0],
        "stride-8 swin block": model.backbone.layers[1].blocks[0],
        "stride-16 swin block": model.backbone.layers[2].blocks[1],
        "encoder layer": model.pixel_decoder.transformer.encoder.layers[0],
        "decoder ffn": model.decoder.transformer_ffn_layers[1],
    }
    calls = dict.fromkeys(watched, 0)
    for key, module in watched.items():
        # A pre-hook: the recompute stops early, once the last tensor needed by backward exists.
        module.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    images = torch.randn(1, 3, 64, 64)

    _loss(model(images)).backward()
    assert calls == dict.fromkeys(watched, 1)
    model.set_activation_checkpoint(True, policy)
    _loss(model(images)).backward()
    assert calls == {key: 3 if key in recomputed else 2 for key in watched}  # forward + recompute in backward
    with torch.no_grad():
        model(images)
    assert calls == {key: 4 if key in recomputed else 3 for key in watched}  # nothing to recompute without grad


def test_unknown_activation_checkpoint_policy_is_refused():
    with pytest.raises(ValueError, match="'everything'"):
        _tiny_swin_model().set_activation_checkpoint(True, "everything")


def test_swin_accepts_sizes_that_are_not_window_multiples_and_batch_items_are_independent():
    torch.manual_seed(0)
    model = _tiny_swin_model().eval()
    images = torch.randn(2, 3, 96, 160)  # stages 24x40, 12x20, 6x10, 3x5: none a multiple of 7
    with torch.no_grad():
        both = model(images)
        first = model(images[:1])
    assert both["pred_masks"].shape == (2, 5, 24, 40)
    torch.testing.assert_close(both["pred_logits"][:1], first["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both["pred_masks"][:1], first["pred_masks"], atol=1e-4, rtol=1e-4)


def test_pixel_decoder_stays_fp32_under_autocast():
    model = _tiny_swin_model().eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = model.pixel_decoder(model.backbone(images))
        outputs = model(images)
    assert mask_features.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in multi_scale)
    assert torch.isfinite(outputs["pred_masks"].float()).all()
    with torch.no_grad():
        reference = model(images)
    # bf16 decoder vs fp32 everywhere: same predictions up to bf16 rounding
    assert (outputs["pred_logits"].float() - reference["pred_logits"]).abs().max() < 0.25


def test_fully_masked_queries_attend_everywhere_instead_of_producing_nan():
    model = _tiny_swin_model().eval()
    with torch.no_grad():
        # Strongly negative mask embeddings: every query's mask is empty at every level.
        model.decoder.mask_embed.layers[-1].bias.fill_(-1e3)
        model.decoder.mask_embed.layers[-1].weight.zero_()
        model.pixel_decoder.mask_features.weight.zero_()
        model.pixel_decoder.mask_features.bias.fill_(1.0)
        outputs = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(outputs["pred_logits"]).all()
    assert (outputs["pred_masks"] < 0).all()


@pytest.mark.parametrize("pre_norm", [False, True])
def test_dropout_and_pre_norm_variants_train(pre_norm):
    model = _tiny_swin_model(pre_norm=pre_norm, dropout=0.1)
    model.train()
    images = torch.randn(2, 3, 64, 64)
    loss = _loss(model(images))
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
