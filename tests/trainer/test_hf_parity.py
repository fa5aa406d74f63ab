"""Parity with HuggingFace transformers' Mask2Former: random HF weights -> `m2f convert-checkpoint` -> same logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the test-only parity oracle")

from m2f_trainer.cli import main  # noqa: E402
from m2f_trainer.model import load_model_checkpoint  # noqa: E402
from m2f_trainer.model.convert import convert_hf_state_dict  # noqa: E402


def _random_hf_model(pre_norm: bool, enforce_input_projection: bool):
    """A tiny HF Mask2Former whose every parameter is random (not HF's near-zero init), so that the
    deformable offsets, attention weights and the masked attention all do something."""
    swin = transformers.SwinConfig(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4, image_size=224,
        out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0,
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=48,
        encoder_layers=2, decoder_layers=5, num_attention_heads=4, dim_feedforward=40, num_queries=7,
        num_labels=5, pre_norm=pre_norm, enforce_input_projection=enforce_input_projection,
    )
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("sampling_offsets.bias"):
                continue  # keep the offset grid: random biases of size 1 would send every sample off-map
            param.add_(torch.randn_like(param) * (0.1 if param.dim() > 1 else 0.05))
    return model


@pytest.mark.parametrize("pre_norm,enforce_input_projection", [(False, False), (True, True)])
def test_converted_hf_model_gives_the_same_logits_for_every_prediction_set(
    tmp_path, pre_norm, enforce_input_projection
):
    hf_model = _random_hf_model(pre_norm, enforce_input_projection)
    hf_model.save_pretrained(tmp_path / "hf")

    assert main(["convert-checkpoint", "--source", "hf", "--input", str(tmp_path / "hf"),
                 "--output", str(tmp_path / "model.pth")]) == 0
    ours, payload = load_model_checkpoint(tmp_path / "model.pth")
    ours.eval()
    assert payload["model_config"]["decoder_layers"] == 4 and payload["model_config"]["num_classes"] == 5

    # 160x192: every Swin stage is larger than the window (HF clamps windows otherwise) and stages 3-4
    # (10x12, 5x6) are not multiples of it, so window padding and shift masks are exercised.
    torch.manual_seed(1)
    images = torch.randn(2, 3, 160, 192)
    with torch.no_grad():
        expected = hf_model(pixel_values=images, output_auxiliary_logits=True)
        got = ours(images)

    hf_sets = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in expected.auxiliary_logits]
    hf_sets.append((expected.class_queries_logits, expected.masks_queries_logits))
    our_sets = [(a["pred_logits"], a["pred_masks"]) for a in got["aux_outputs"]]
    our_sets.append((got["pred_logits"], got["pred_masks"]))
    assert len(our_sets) == len(hf_sets) == 5
    for index, ((hf_cls, hf_mask), (cls, mask)) in enumerate(zip(hf_sets, our_sets, strict=True)):
        assert cls.shape == hf_cls.shape == (2, 7, 6)
        assert mask.shape == hf_mask.shape == (2, 7, 40, 48)
        torch.testing.assert_close(cls, hf_cls, atol=1e-4, rtol=0, msg=f"class logits of prediction set {index}")
        torch.testing.assert_close(mask, hf_mask, atol=1e-4, rtol=0, msg=f"mask logits of prediction set {index}")
    # The masked attention was really exercised: masks are neither all-on nor all-off.
    foreground = (torch.stack([m for _, m in our_sets[:-1]]) > 0).float().mean().item()
    assert 0.02 < foreground < 0.98


def test_runtime_and_saved_hf_names_convert_to_the_same_state_dict(tmp_path):
    """transformers >= 5 renamed Swin's modules (q_proj, o_proj, ...); Hub files keep the old names."""
    from safetensors.torch import load_file

    hf_model = _random_hf_model(False, False)
    hf_model.save_pretrained(tmp_path / "hf")
    from_runtime, _ = convert_hf_state_dict(hf_model.state_dict())
    from_file, skipped = convert_hf_state_dict(load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert from_runtime.keys() == from_file.keys()
    for key in from_file:
        torch.testing.assert_close(from_runtime[key], from_file[key], rtol=0, atol=0)
    assert "criterion.empty_weight" in skipped


def test_convert_rejects_a_directory_without_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["convert-checkpoint", "--source", "hf", "--input", str(tmp_path / "empty"),
                 "--output", str(tmp_path / "out.pth")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "config.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.pth").exists()
