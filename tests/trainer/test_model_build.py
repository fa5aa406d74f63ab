"""build_model from experiment specs, pretrained backbone weights, checkpoints and detectron2 conversion."""

from __future__ import annotations

import logging
import pickle
import re

import numpy as np
import pytest
import timm
import torch

from m2f_spec import load_spec
from m2f_trainer.cli import main
from m2f_trainer.errors import SpecError, UserError
from m2f_trainer.model import (
    build_model,
    build_model_from_config,
    load_model_checkpoint,
    save_model_checkpoint,
)
from m2f_trainer.model.backbone import build_backbone, load_backbone_weights


@pytest.fixture
def tiny_spec(repo_root):
    return repo_root / "examples" / "specs" / "tiny_cpu_panoptic.yaml"


@pytest.mark.parametrize("mode", ["semantic", "instance", "panoptic"])
def test_tiny_spec_builds_the_documented_output_contract(tiny_spec, mode):
    cfg = load_spec(tiny_spec, [f"model.mode={mode}"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 96))
    classes = cfg.model.sem_seg_head.num_classes
    queries = cfg.model.mask_former.num_object_queries
    assert outputs["pred_logits"].shape == (2, queries, classes + 1)
    assert outputs["pred_masks"].shape == (2, queries, 16, 24)
    assert len(outputs["aux_outputs"]) == cfg.model.mask_former.dec_layers - 1
    assert model.model_config["backbone"] == {"kind": "timm", "name": "resnet18"}


def test_swin_spec_fields_reach_the_backbone(tiny_spec):
    cfg = load_spec(tiny_spec, [
        "model.backbone.timm_name=null", "model.backbone.swin.type=tiny", "model.backbone.swin.window_size=5",
        "model.backbone.swin.ape=true", "model.backbone.swin.pretrain_img_size=160", "model.mask_former.dec_layers=4",
    ])
    model = build_model(cfg).eval()
    backbone_config = model.model_config["backbone"]
    assert backbone_config["embed_dim"] == 96 and backbone_config["depths"] == [2, 2, 6, 2]
    assert model.model_config["decoder_layers"] == 3
    assert model.backbone.layers[0].blocks[0].window_size == (5, 5)
    assert model.backbone.layers[0].blocks[1].shift_size == (2, 2)
    assert model.backbone.absolute_pos_embed.shape == (1, 96, 40, 40)
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 96))  # APE resized from 40x40 to the 16x24 patch grid
    assert torch.isfinite(outputs["pred_masks"]).all()


def test_efficientvit_l0_is_l1_with_tao_depths(tiny_spec):
    overrides = ["model.backbone.timm_name=null", "model.backbone.type=efficientvit"]
    l0 = build_model(load_spec(tiny_spec, [*overrides, "model.backbone.efficientvit.name=l0"]))
    l1 = build_model(load_spec(tiny_spec, [*overrides, "model.backbone.efficientvit.name=l1"]))
    assert l0.model_config["backbone"] == {"kind": "timm", "name": "efficientvit_l1", "kwargs": {"depths": [1, 1, 1, 4, 4]}}
    assert l0.backbone.channels == l1.backbone.channels == [64, 128, 256, 512]
    assert len(l0.backbone.body.stages_3.blocks) < len(l1.backbone.body.stages_3.blocks)


@pytest.mark.parametrize("levels", [["res5"], ["res4", "res5"], ["res2", "res3", "res4", "res5"]])
def test_deformable_encoder_levels_from_the_spec(tiny_spec, levels):
    spec_levels = "[" + ", ".join(levels) + "]"
    cfg = load_spec(tiny_spec, [f"model.sem_seg_head.deformable_transformer_encoder_in_features={spec_levels}"])
    model = build_model(cfg)
    assert model.model_config["transformer_in_levels"] == len(levels)
    outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs["pred_masks"].shape == (1, cfg.model.mask_former.num_object_queries, 16, 16)
    outputs["pred_masks"].mean().backward()


def test_deformable_encoder_levels_must_be_the_coarsest(tiny_spec):
    with pytest.raises(SpecError, match="deformable_transformer_encoder_in_features: must be the coarsest"):
        load_spec(tiny_spec, ["model.sem_seg_head.deformable_transformer_encoder_in_features=[res3, res4]"])


def test_freeze_comes_from_the_spec(tiny_spec):
    model = build_model(load_spec(tiny_spec, ["train.freeze=[backbone, decoder.query_feat]"]))
    for name, param in model.named_parameters():
        frozen = name.startswith("backbone.") or name.startswith("decoder.query_feat.")
        assert param.requires_grad is not frozen, name


@pytest.mark.parametrize("overrides, backbone, encoder, decoder", [
    (["train.activation_checkpoint=false"], False, False, False),
    (["train.activation_checkpoint=true"], True, True, False),  # selective: timm backbones are all or nothing
    (["train.activation_checkpoint=true", "train.activation_checkpoint_policy=full"], True, True, True),
    (["train.activation_checkpoint=false", "model.backbone.swin.use_checkpoint=true"], True, False, False),
])
def test_activation_checkpoint_comes_from_the_spec(tiny_spec, overrides, backbone, encoder, decoder):
    model = build_model(load_spec(tiny_spec, overrides))
    assert model.backbone.activation_checkpoint is backbone
    assert model.pixel_decoder.transformer.encoder.activation_checkpoint is encoder
    assert model.decoder.activation_checkpoint is decoder


def test_selective_checkpointing_of_a_swin_spec_stops_at_stride_8(tiny_spec):
    model = build_model(load_spec(tiny_spec, ["model.backbone.timm_name=null", "train.activation_checkpoint=true"]))
    assert model.backbone.checkpointed_stages == {0, 1}
    model.set_activation_checkpoint(True, "full")
    assert model.backbone.checkpointed_stages == {0, 1, 2, 3}


def test_unknown_activation_checkpoint_policy_is_a_spec_error(tiny_spec):
    with pytest.raises(SpecError, match="train.activation_checkpoint_policy"):
        load_spec(tiny_spec, ["train.activation_checkpoint_policy=most"])


def test_freeze_name_of_no_module_is_a_spec_error(tiny_spec):
    with pytest.raises(SpecError, match=r"train\.freeze\[0\]: 'backbon' names no module; use backbone, "):
        load_spec(tiny_spec, ["train.freeze=[backbon]"])
    # A deeper name that the spec rules cannot judge without the model: the builder names it the same way.
    with pytest.raises(SpecError, match=r"train\.freeze\[1\]: 'decoder\.nothing' matches no parameter"):
        build_model(load_spec(tiny_spec, ["train.freeze=[backbone, decoder.nothing]"]))


def test_freeze_takes_taos_module_names(tiny_spec):
    """TAO's documented example freezes the backbone, the deformable encoder and the input projections."""
    model = build_model(load_spec(tiny_spec, ["train.freeze=[backbone, transformer.encoder, input_proj]"]))
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    expected = {name for name, _ in model.named_parameters()
                if name.split(".")[0] == "backbone" or name.startswith(("pixel_decoder.transformer.encoder.",
                                                                        "pixel_decoder.input_proj."))}
    assert frozen == expected and expected
    model = build_model(load_spec(tiny_spec, ["train.freeze=[sem_seg_head.predictor]"]))
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("decoder.")}


def test_unknown_timm_backbone_is_a_spec_error_naming_the_field(tiny_spec):
    with pytest.raises(SpecError, match="model.backbone"):
        build_model(load_spec(tiny_spec, ["model.backbone.timm_name=no_such_net"]))


# ------------------------------------------------------------------------------------ pretrained


TINY_SWIN = {"kind": "swin", "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": 7}


def _to_microsoft_names(state: dict) -> dict:
    """timm names -> the original Swin repo's (downsample at the end of the previous stage, classifier head)."""
    out = {}
    for key, value in state.items():
        if re.match(r"norm\d\.", key):
            continue  # segmentation-only output norms are not in ImageNet checkpoints
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key] = value
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    out["norm.weight"], out["norm.bias"] = torch.ones(256), torch.zeros(256)
    out["head.weight"], out["head.bias"] = torch.zeros(10, 256), torch.zeros(10)
    return out


def test_microsoft_swin_checkpoint_loads_and_reports_missing_output_norms(tmp_path, caplog):
    torch.manual_seed(0)
    source = build_backbone(TINY_SWIN)
    path = tmp_path / "swin_tiny_22k.pth"
    torch.save({"model": _to_microsoft_names(source.state_dict())}, path)

    torch.manual_seed(1)
    target = build_backbone(TINY_SWIN)
    with caplog.at_level(logging.WARNING):
        missing, unexpected = load_backbone_weights(target, path)
    assert sorted(missing) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert unexpected == []
    assert "missing keys: norm0.weight" in caplog.text
    for name, value in source.state_dict().items():
        if not name.startswith("norm"):
            torch.testing.assert_close(target.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_timm_format_weights_load_into_features_only_backbones(tmp_path, tiny_spec):
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18_timm.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(load_spec(tiny_spec, [f"model.backbone.pretrained_weights={path}"]))
    torch.testing.assert_close(model.backbone.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)

    vit = timm.create_model("efficientvit_b0", pretrained=False)
    torch.save({"state_dict": vit.state_dict()}, tmp_path / "b0.pth")
    backbone = build_backbone({"kind": "timm", "name": "efficientvit_b0"})
    missing, _ = load_backbone_weights(backbone, tmp_path / "b0.pth")
    assert missing == []
    loaded_stage, source_stage = backbone.body.stages_3.state_dict(), vit.stages[3].state_dict()
    assert loaded_stage.keys() == source_stage.keys()
    for name, value in source_stage.items():
        torch.testing.assert_close(loaded_stage[name], value, rtol=0, atol=0, msg=name)


def test_bad_pretrained_weights_are_spec_errors(tmp_path, tiny_spec):
    with pytest.raises(SpecError, match="model.backbone.pretrained_weights: file not found"):
        build_model(load_spec(tiny_spec, [f"model.backbone.pretrained_weights={tmp_path / 'nope.pth'}"]))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SpecError, match="cannot read"):
        load_backbone_weights(build_backbone(TINY_SWIN), tmp_path / "garbage.pth")
    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(SpecError, match="no parameter"):
        load_backbone_weights(build_backbone(TINY_SWIN), tmp_path / "other.pth")


# ----------------------------------------------------------------------------------- checkpoints

SMALL = dict(num_classes=4, num_queries=6, hidden_dim=32, nheads=4, dim_feedforward=48, decoder_layers=3,
             conv_dim=32, mask_dim=32, transformer_enc_layers=2, transformer_dim_feedforward=48)


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = build_model_from_config({**SMALL, "backbone": TINY_SWIN}).eval()
    save_model_checkpoint(tmp_path / "model.pth", model.state_dict(), model.model_config, epoch=3)
    # Lightning-style keys ("model." prefix) load too.
    prefixed = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_model_checkpoint(tmp_path / "lightning.pth", prefixed, model.model_config)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)["pred_masks"]
        for name in ("model.pth", "lightning.pth"):
            loaded, payload = load_model_checkpoint(tmp_path / name)
            torch.testing.assert_close(loaded.eval()(images)["pred_masks"], expected, rtol=0, atol=0)
    assert payload["model_config"] == model.model_config
    torch.save({"weights": {}}, tmp_path / "foreign.pth")
    with pytest.raises(UserError, match="not an m2f checkpoint"):
        load_model_checkpoint(tmp_path / "foreign.pth")


def _to_detectron2_names(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        elif key.startswith("pixel_decoder."):
            key = "sem_seg_head." + key
        elif key.startswith("decoder."):
            key = "sem_seg_head.predictor." + key.removeprefix("decoder.")
        out[key] = value.numpy()
    out["backbone.layers.0.blocks.0.attn.relative_position_index"] = np.zeros((49, 49), dtype=np.int64)
    out["criterion.empty_weight"] = np.ones(SMALL["num_classes"] + 1, dtype=np.float32)
    return out


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_detectron2_checkpoint_converts_with_architecture_read_from_shapes(tmp_path, suffix):
    torch.manual_seed(0)
    model = build_model_from_config({**SMALL, "backbone": TINY_SWIN}).eval()
    d2_state = _to_detectron2_names(model.state_dict())
    path = tmp_path / f"model_final{suffix}"
    if suffix == ".pkl":
        with path.open("wb") as handle:
            pickle.dump({"model": d2_state, "__author__": "detectron2"}, handle)
    else:
        torch.save({"model": {k: torch.from_numpy(v) for k, v in d2_state.items()}}, path)

    code = main(["convert-checkpoint", "--source", "detectron2", "--input", str(path), "--nheads", "4",
                 "--output", str(tmp_path / "model.pth")])
    assert code == 0
    converted, payload = load_model_checkpoint(tmp_path / "model.pth")
    assert payload["model_config"]["backbone"]["depths"] == [1, 1, 2, 1]
    assert payload["model_config"]["backbone"]["num_heads"] == [1, 2, 2, 4]
    assert payload["model_config"]["backbone"]["window_size"] == 7
    assert payload["model_config"]["decoder_layers"] == 3
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(images)["pred_masks"], model(images)["pred_masks"])


def test_detectron2_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": print}}))
    code = main(["convert-checkpoint", "--source", "detectron2", "--input", str(path),
                 "--output", str(tmp_path / "out.pth")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "refusing to load builtins.print" in err


def test_detectron2_resnet_checkpoint_is_reported_unsupported(tmp_path, capsys):
    path = tmp_path / "r50.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.res2.0.conv1.weight": np.zeros((1,), np.float32)}}))
    code = main(["convert-checkpoint", "--source", "detectron2", "--input", str(path),
                 "--output", str(tmp_path / "out.pth")])
    assert code == 2 and "only Swin-backbone detectron2 checkpoints" in capsys.readouterr().err


def test_package_exports_the_contract_functions():
    import types

    import m2f_trainer.model as model_package
    import m2f_trainer.model.postprocess  # noqa: F401  (importing the submodule must not shadow the function)

    assert callable(model_package.postprocess) and not isinstance(model_package.postprocess, types.ModuleType)
    assert callable(model_package.build_criterion) and callable(model_package.build_model)
