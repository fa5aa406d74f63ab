"""A spec that validates builds: the model rules run in `m2f validate` and the operator, not only in the pods."""

from __future__ import annotations

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from m2f_spec import config_from_dict, load_spec
from m2f_trainer.cli import main
from m2f_trainer.errors import SpecError
from m2f_trainer.model import build_model


@pytest.fixture
def tiny_raw(repo_root) -> dict:
    return yaml.safe_load((repo_root / "examples" / "specs" / "tiny_cpu_panoptic.yaml").read_text())


# The specs of the issue that used to validate and then fail in the trainer, with the field each names.
@pytest.mark.parametrize("override, field", [
    ("model.sem_seg_head.convs_dim=48", "model.sem_seg_head.convs_dim"),
    ("model.mask_former.hidden_dim=251", "model.mask_former.hidden_dim"),
    ("model.backbone.swin.qk_scale=0.5", "model.backbone.swin.qk_scale"),
    ("model.backbone.swin.patch_norm=false", "model.backbone.swin.patch_norm"),
    ("model.sem_seg_head.deformable_transformer_encoder_in_features=[res2,res3]",
     "model.sem_seg_head.deformable_transformer_encoder_in_features"),
    ("train.freeze=[transformer]", "train.freeze[0]"),
])
def test_m2f_validate_rejects_what_the_builder_cannot_build(repo_root, capsys, override, field):
    spec = repo_root / "examples" / "specs" / "tiny_cpu_panoptic.yaml"
    overrides = [override] + (["model.backbone.timm_name=null"] if "swin" in override else [])
    assert main(["validate", "-e", str(spec), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{field}: " in err, err


def test_the_operator_check_rejects_them_too(tiny_raw):
    from m2f_operator.validation import experiment_error

    problem = experiment_error(tiny_raw, ("model.mask_former.nheads=3",))
    assert problem and "model.mask_former.hidden_dim: must be a multiple of model.mask_former.nheads" in problem


MODEL_SECTIONS = st.fixed_dictionaries({
    "backbone": st.one_of(
        st.just({"timm_name": "resnet18"}),
        st.fixed_dictionaries({"type": st.just("swin"), "swin": st.fixed_dictionaries({
            "type": st.just("tiny"), "window_size": st.sampled_from([4, 7]),
            "out_indices": st.sampled_from([[0, 1, 2, 3]] * 4 + [[1, 2, 3]]),
            "out_features": st.sampled_from([["res2", "res3", "res4", "res5"]] * 4 + [["res3", "res4", "res5"]]),
            "qk_scale": st.sampled_from([None] * 4 + [0.5]), "patch_norm": st.sampled_from([True] * 4 + [False]),
        })}),
        st.fixed_dictionaries({"type": st.just("efficientvit"), "efficientvit": st.fixed_dictionaries({
            "name": st.sampled_from(["b0", "l0"])})}),
    ),
    "mask_former": st.fixed_dictionaries({
        "num_object_queries": st.integers(1, 8), "hidden_dim": st.sampled_from([8, 16, 24, 32, 48, 6, 250]),
        "nheads": st.sampled_from([1, 2, 4, 8, 3]), "dim_feedforward": st.sampled_from([8, 32]),
        "dec_layers": st.integers(1, 3), "pre_norm": st.booleans(), "enforce_input_proj": st.booleans(),
        "train_num_points": st.just(64),
    }),
    "sem_seg_head": st.fixed_dictionaries({
        "num_classes": st.integers(1, 6), "convs_dim": st.sampled_from([32, 64, 32, 48]),
        "mask_dim": st.sampled_from([8, 16, 32]), "norm": st.sampled_from(["GN", "BN", "LN"]),
        "transformer_enc_layers": st.integers(0, 1),
        "deformable_transformer_encoder_in_features": st.sampled_from([
            ["res5"], ["res4", "res5"], ["res3", "res4", "res5"], ["res2", "res3", "res4", "res5"], ["res3", "res4"]]),
    }),
    "mode": st.sampled_from(["panoptic", "instance", "semantic"]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=MODEL_SECTIONS, freeze=st.sampled_from([[], [], ["backbone"], ["input_proj"], ["sem_seg_head"], ["neck"]]))
def test_every_spec_that_validates_builds_and_runs(tiny_raw, model, freeze):
    raw = dict(tiny_raw, model=model, train=dict(tiny_raw["train"], freeze=freeze))
    try:
        cfg = config_from_dict(raw)
    except SpecError:
        event("rejected by validation")
        return
    event("valid")
    built = build_model(cfg).eval()
    with torch.no_grad():
        outputs = built(torch.randn(1, 3, 64, 64))
    assert outputs["pred_logits"].shape[-1] == model["sem_seg_head"]["num_classes"] + 1


def test_load_spec_reports_every_model_problem_at_once(repo_root):
    spec = repo_root / "examples" / "specs" / "tiny_cpu_panoptic.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(spec, ["model.sem_seg_head.convs_dim=48", "model.mask_former.hidden_dim=251"])
    assert "convs_dim" in str(info.value) and "hidden_dim" in str(info.value)
