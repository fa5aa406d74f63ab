"""Experiment spec: loading, validation errors, overrides, the num_gpus/gpu_ids rule, data/dataset alias."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from m2f_spec import (
    ExperimentConfig,
    config_from_dict,
    dump_yaml,
    load_spec,
    parse_task_args,
    spec_to_dict,
    task_results_dir,
)
from m2f_trainer.errors import SpecError, UserError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "specs"
TAO_SAMPLE = EXAMPLES / "tao_coco_panoptic_swin_tiny.yaml"


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def spec_error(raw: dict, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpecError) as info:
        config_from_dict(raw, overrides)
    message = str(info.value)
    assert "\n" not in message, "spec errors are one line"
    return message


# ---------------------------------------------------------------------------------- TAO sample


def test_tao_sample_validates_unchanged_with_documented_values():
    cfg = load_spec(TAO_SAMPLE)
    assert cfg.results_dir == "/workspace/mask2former_coco_swint"
    assert cfg.dataset.type == "coco_panoptic"
    assert cfg.dataset.train.type == cfg.dataset.val.type == cfg.dataset.test.type == "coco_panoptic"
    assert cfg.dataset.train.panoptic_json == "/datasets/coco/annotations/panoptic_train2017.json"
    assert cfg.dataset.val.target_size == [1024, 1024]
    assert cfg.dataset.augmentation.train_crop_size == [1024, 1024]
    assert cfg.model.backbone.swin.type == "tiny"
    assert cfg.model.mask_former.num_object_queries == 100
    assert cfg.model.sem_seg_head.num_classes == 200
    assert cfg.model.object_mask_threshold == 0.0
    assert cfg.train.precision == "fp16"
    assert cfg.train.optim.lr == pytest.approx(1e-4)
    assert cfg.train.clip_grad_norm == pytest.approx(0.1)
    assert cfg.export.opset_version == 12 and cfg.export.on_cpu is False and cfg.quantize.backend == "modelopt.onnx"


def test_defaults_match_tao_documentation():
    cfg = config_from_dict({})
    assert cfg.model.mode == "panoptic"
    assert cfg.model.sem_seg_head.num_classes == 200
    assert cfg.model.mask_former.num_object_queries == 100
    assert cfg.model.mask_former.dec_layers == 10
    assert cfg.train.optim.lr == pytest.approx(2e-4)
    assert cfg.train.optim.type == "AdamW"
    assert cfg.train.clip_grad_norm == pytest.approx(0.1)
    assert cfg.export.opset_version == 17
    assert cfg.gen_trt_engine.tensorrt.data_type == "FP32"
    assert cfg.results_dir == "/results"
    assert cfg.dataset.type == "coco_panoptic"
    # project extensions
    assert cfg.train.distributed_timeout_s == 600
    assert cfg.train.metrics_port == 9091
    assert cfg.train.optim.warmup_iters == 0
    assert cfg.export.parity_tolerance == pytest.approx(1e-3)
    assert cfg.model.backbone.timm_name is None


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_validates_and_round_trips(example):
    cfg = load_spec(example)
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg, redact_secrets=False)))
    assert again == cfg


def test_config_module_does_not_import_torch():
    import subprocess

    code = "import sys, m2f_spec, m2f_spec.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------- errors


def test_typo_names_the_path_and_the_closest_key():
    message = spec_error({"model": {"mask_former": {"num_object_querys": 50}}})
    assert "model.mask_former.num_object_querys: unknown key" in message
    assert "model.mask_former.num_object_queries" in message


def test_typo_in_a_section_name_suggests_the_section():
    message = spec_error({"trian": {"num_gpus": 2}})
    assert "trian: unknown key" in message and "'train'" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = spec_error({"export": {"zzzzzz": 1}})
    assert "export.zzzzzz: unknown key; valid keys here:" in message
    assert "opset_version" in message


def test_wrong_type_names_path_value_and_allowed():
    message = spec_error({"train": {"num_gpus": "two"}})
    assert "train.num_gpus" in message and "'two'" in message and "an integer >= 1" in message


def test_bool_is_not_an_integer_and_float_is_not_an_integer():
    assert "train.num_epochs" in spec_error({"train": {"num_epochs": True}})
    assert "train.num_epochs" in spec_error({"train": {"num_epochs": 2.5}})


def test_out_of_range_names_path_value_and_range():
    message = spec_error({"model": {"overlap_threshold": 1.5}})
    assert "model.overlap_threshold: 1.5 is out of range" in message and "[0, 1]" in message
    message = spec_error({"train": {"optim": {"lr": 0}}})
    assert "train.optim.lr: 0 is out of range" in message and "> 0" in message


def test_enum_names_path_value_allowed_and_suggestion():
    message = spec_error({"model": {"mode": "panoptc"}})
    assert "model.mode: 'panoptc' is not allowed" in message
    assert "semantic, instance, panoptic" in message and "did you mean 'panoptic'" in message


def test_enum_matching_is_case_insensitive_with_aliases():
    cfg = config_from_dict(
        {
            "train": {"precision": "FP16", "distributed_strategy": "ddp_sharded", "optim": {"lr_scheduler": "multistep"}},
            "gen_trt_engine": {"tensorrt": {"data_type": "fp16"}},
            "dataset": {"type": "semantic"},
        }
    )
    assert cfg.train.precision == "fp16"
    assert cfg.train.distributed_strategy == "fsdp"
    assert cfg.train.optim.lr_scheduler == "MultiStep"
    assert cfg.gen_trt_engine.tensorrt.data_type == "FP16"
    assert cfg.dataset.type == "ade"


def test_int_is_accepted_for_float_fields_and_yaml_exponent_strings_too():
    cfg = config_from_dict({"model": {"overlap_threshold": 1}, "train": {"optim": {"lr": "1e-4"}}})
    assert cfg.model.overlap_threshold == 1.0 and isinstance(cfg.model.overlap_threshold, float)
    assert cfg.train.optim.lr == pytest.approx(1e-4)


def test_list_errors_name_the_item():
    message = spec_error({"dataset": {"augmentation": {"train_crop_size": [512]}}})
    assert "dataset.augmentation.train_crop_size: has 1 items" in message and "a list of 2 integers" in message
    message = spec_error({"train": {"gpu_ids": [0, -1]}})
    assert "train.gpu_ids[1]" in message
    message = spec_error({"model": {"sem_seg_head": {"deformable_transformer_encoder_in_features": ["res9"]}}})
    assert "deformable_transformer_encoder_in_features[0]: 'res9' is not allowed" in message


def test_null_for_a_required_value_and_a_section_that_is_a_scalar():
    assert "model.mode: must not be null" in spec_error({"model": {"mode": None}})
    assert "model.backbone: expected a mapping" in spec_error({"model": {"backbone": 3}})


def test_every_error_is_reported_at_once():
    message = spec_error({"train": {"num_gpus": 0, "precison": "fp16"}, "model": {"mode": "x"}})
    assert "train.num_gpus" in message and "train.precison" in message and "model.mode" in message


def test_cross_field_checks():
    assert "lsj_scale_range" in spec_error({"dataset": {"augmentation": {"lsj_scale_range": [2.0, 0.5]}}})
    message = spec_error({"gen_trt_engine": {"tensorrt": {"min_batch_size": 4, "max_batch_size": 2}}})
    assert "gen_trt_engine.tensorrt" in message and "min_batch_size <= opt_batch_size <= max_batch_size" in message
    assert "export.batch_size: 0 is not allowed" in spec_error({"export": {"batch_size": 0}})
    message = spec_error({"model": {"backbone": {"swin": {"out_indices": [1, 2, 3]}}}})
    assert "model.backbone.swin.out_features" in message
    message = spec_error({"model": {"sem_seg_head": {"deformable_transformer_encoder_in_features": ["res2"]},
                                    "backbone": {"swin": {"out_indices": [1, 2, 3],
                                                          "out_features": ["res3", "res4", "res5"]}}}})
    assert "not produced by the backbone" in message
    assert "train.gpu_ids" in spec_error({"train": {"gpu_ids": [1, 1]}})
    message = spec_error({"train": {"optim": {"lr_scheduler": "StepLR", "milestones": []}}})
    assert "train.optim.milestones: is empty" in message


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="not found: .*nope.yaml"):
        load_spec(tmp_path / "nope.yaml")
    bad = write_spec(tmp_path, "train: [1, 2\n", "bad.yaml")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML \(line"):
        load_spec(bad)
    scalar = write_spec(tmp_path, "42\n", "scalar.yaml")
    with pytest.raises(SpecError, match="scalar.yaml: the spec must be a YAML mapping"):
        load_spec(scalar)


def test_errors_from_a_file_name_the_file(tmp_path):
    path = write_spec(tmp_path, "model:\n  mode: bogus\n")
    with pytest.raises(SpecError, match=r"spec.yaml: model.mode: 'bogus' is not allowed"):
        load_spec(path)


# ------------------------------------------------------------------------------------ overrides


def test_overrides_nested_lists_bools_null_and_strings(tmp_path):
    cfg = load_spec(
        TAO_SAMPLE,
        [
            "train.optim.lr=3e-4",
            "train.gpu_ids=[0,1]",
            "model.backbone.swin.ape=true",
            "model.backbone.pretrained_weights=null",
            "data.train.batch_size=2",
            "model.backbone.timm_name=resnet18",
            "results_dir=/tmp/out",
            "train.optim.milestones=[3, 4]",
        ],
    )
    assert cfg.train.optim.lr == pytest.approx(3e-4)
    assert cfg.train.gpu_ids == [0, 1] and cfg.train.num_gpus == 2
    assert cfg.model.backbone.swin.ape is True
    assert cfg.model.backbone.pretrained_weights is None
    assert cfg.dataset.train.batch_size == 2
    assert cfg.model.backbone.timm_name == "resnet18"
    assert cfg.results_dir == "/tmp/out"
    assert cfg.train.optim.milestones == [3, 4]


def test_overrides_leave_the_callers_mapping_alone():
    raw = {"train": {"optim": {"lr": 0.1}}}
    assert config_from_dict(raw, ["train.optim.lr=0.5"]).train.optim.lr == 0.5
    assert raw == {"train": {"optim": {"lr": 0.1}}}


@pytest.mark.parametrize("where, value, expected", [
    ("file", "imgs", "imgs"),  # resolved later under root_dir, as TAO does
    ("override", "imgs", "{cwd}/imgs"),  # typed in a shell: that shell's folder
    ("override", "/data/imgs", "/data/imgs"),
    ("override", "s3://bucket/imgs", "s3://bucket/imgs"),
    ("file", "/data/imgs", "/data/imgs"),
])
def test_relative_split_paths_from_overrides_mean_the_working_directory(tmp_path, monkeypatch, where, value, expected):
    monkeypatch.chdir(tmp_path)
    raw = {"dataset": {"test": {"root_dir": "/spec/root", **({"img_dir": value} if where == "file" else {})}}}
    overrides = [f"dataset.test.img_dir={value}"] if where == "override" else []
    cfg = config_from_dict(raw, overrides)
    assert cfg.dataset.test.img_dir == expected.format(cwd=tmp_path)
    assert cfg.dataset.test.root_dir == "/spec/root"


def test_override_creates_a_missing_section():
    cfg = config_from_dict({}, ["evaluate.checkpoint=/ckpt/model.pth", "dataset.val.panoptic_dir=/p"])
    assert cfg.evaluate.checkpoint == "/ckpt/model.pth"
    assert cfg.dataset.val.panoptic_dir == "/p"


def test_unknown_and_malformed_overrides():
    assert "train.optim.lrr: unknown key; did you mean 'train.optim.lr'" in spec_error({}, ["train.optim.lrr=1"])
    assert "must look like section.key=value" in spec_error({}, ["train.optim.lr"])
    assert "must look like section.key=value" in spec_error({}, ["train..lr=1"])
    assert "train.optim is a value, not a section" in spec_error({"train": {"optim": 3}}, ["train.optim.lr=1"])
    assert "train.num_gpus" in spec_error({}, ["train.num_gpus=[1"])  # invalid YAML value


# ---------------------------------------------------------------------------- num_gpus / gpu_ids


@pytest.mark.parametrize(
    "setting, expected",
    [
        ({}, (1, [0])),
        ({"num_gpus": 1, "gpu_ids": [0]}, (1, [0])),
        ({"num_gpus": 4}, (4, [0, 1, 2, 3])),
        ({"gpu_ids": [2, 3]}, (2, [2, 3])),
        ({"num_gpus": 1, "gpu_ids": [0, 1, 2]}, (3, [0, 1, 2])),
        ({"num_gpus": 3, "gpu_ids": [5]}, (3, [0, 1, 2])),
        ({"num_gpus": 2, "gpu_ids": [4, 6]}, (2, [4, 6])),
    ],
)
@pytest.mark.parametrize("task", ["train", "evaluate", "inference"])
def test_num_gpus_gpu_ids_rule(task, setting, expected, caplog):
    cfg = config_from_dict({task: setting})
    section = getattr(cfg, task)
    assert (section.num_gpus, section.gpu_ids) == expected
    conflict = len(setting) == 2 and setting["num_gpus"] != len(setting["gpu_ids"])
    assert ("disagree" in caplog.text) == conflict


@settings(max_examples=60, deadline=None)
@given(num_gpus=st.integers(1, 16), gpu_ids=st.lists(st.integers(0, 31), min_size=1, max_size=16, unique=True))
def test_num_gpus_gpu_ids_rule_properties(num_gpus, gpu_ids):
    cfg = config_from_dict({"train": {"num_gpus": num_gpus, "gpu_ids": gpu_ids}})
    assert cfg.train.num_gpus == len(cfg.train.gpu_ids) == max(num_gpus, len(gpu_ids))
    if len(gpu_ids) >= num_gpus:
        assert cfg.train.gpu_ids == gpu_ids


@settings(max_examples=60, deadline=None)
@given(value=st.integers(-5, 70000))
def test_integer_range_overrides_accept_exactly_the_documented_range(value):
    text = f"train.metrics_port={value}"
    if 0 <= value <= 65535:
        assert config_from_dict({}, [text]).train.metrics_port == value
    else:
        assert f"train.metrics_port: {value} is out of range; allowed: an integer in [0, 65535]" in spec_error({}, [text])


# ---------------------------------------------------------------------------- data/dataset alias


def test_data_and_dataset_are_the_same_section():
    via_data = config_from_dict({"data": {"train": {"batch_size": 3}}})
    via_dataset = config_from_dict({"dataset": {"train": {"batch_size": 3}}})
    assert via_data == via_dataset and via_data.dataset.train.batch_size == 3
    assert "both 'data' and 'dataset'" in spec_error({"data": {}, "dataset": {}})


def test_split_types_inherit_from_dataset_or_the_first_split():
    cfg = config_from_dict({"dataset": {"type": "coco", "val": {"type": "coco_panoptic"}}})
    assert (cfg.dataset.train.type, cfg.dataset.val.type, cfg.dataset.test.type) == ("coco", "coco_panoptic", "coco")
    cfg = config_from_dict({"dataset": {"train": {"type": "ade"}, "val": {"type": "ade"}}})
    assert cfg.dataset.type == "ade" and cfg.dataset.test.type == "ade"
    default = ExperimentConfig()  # consumers building configs in code get resolved types as well
    assert default.dataset.type == default.dataset.train.type == "coco_panoptic"


# ----------------------------------------------------------------------------- round trip, dump


def test_spec_to_dict_uses_yaml_keys_and_dump_redacts_the_key():
    cfg = config_from_dict({"encryption_key": "s3cret"})
    data = spec_to_dict(cfg)
    assert data["encryption_key"] == "s3cret" and "dataset" in data and "data" not in data
    text = dump_yaml(cfg)
    assert "s3cret" not in text and "encryption_key: '***'" in text
    assert "s3cret" in dump_yaml(cfg, redact_secrets=False)
    assert "gpu_ids: [0]" in text


# ------------------------------------------------------------------------------ parse_task_args


def test_parse_task_args_spec_flags_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("M2F_RESULTS_DIR", raising=False)
    spec = write_spec(tmp_path, "train:\n  num_epochs: 3\n  results_dir: /elsewhere\n")
    for flag in ("-e", "--experiment_spec_file", "--experiment_spec"):
        cfg, ns = parse_task_args([flag, str(spec), "train.num_epochs=5"], prog="m2f train")
        assert cfg.train.num_epochs == 5 and ns.overrides == ["train.num_epochs=5"]
    cfg, _ = parse_task_args(["train.num_epochs=7", "-e", str(spec), "train.seed=1"], prog="m2f train")
    assert (cfg.train.num_epochs, cfg.train.seed) == (7, 1)
    assert task_results_dir(cfg, "train") == Path("/elsewhere")
    assert task_results_dir(cfg, "evaluate") == Path("/results/evaluate")


def test_parse_task_args_results_dir_env_wins(tmp_path, monkeypatch):
    spec = write_spec(tmp_path, "results_dir: /mine\ntrain:\n  results_dir: /elsewhere\n")
    monkeypatch.setenv("M2F_RESULTS_DIR", "/volume/job-1")
    cfg, _ = parse_task_args(["-e", str(spec)], prog="m2f train")
    assert cfg.results_dir == "/volume/job-1"
    assert task_results_dir(cfg, "train") == Path("/volume/job-1/train")


def test_parse_task_args_errors(tmp_path):
    with pytest.raises(SpecError, match="missing the experiment spec"):
        parse_task_args([], prog="m2f train")
    spec = write_spec(tmp_path, "{}\n")
    with pytest.raises(SpecError, match="'junk' is not an override"):
        parse_task_args(["-e", str(spec), "junk"], prog="m2f train")
    with pytest.raises(UserError, match="unrecognized arguments: --bogus"):
        parse_task_args(["-e", str(spec), "--bogus"], prog="m2f train")


def test_parse_task_args_lets_a_task_add_options(tmp_path):
    spec = write_spec(tmp_path, "{}\n")

    def add(parser):
        parser.add_argument("--num-images", type=int, default=1)

    cfg, ns = parse_task_args(["-e", str(spec), "--num-images", "4"], prog="m2f x", add_arguments=add)
    assert ns.num_images == 4 and isinstance(cfg, ExperimentConfig)


def test_dataclasses_are_plain_and_mutable_for_consumers():
    cfg = config_from_dict({})
    assert dataclasses.is_dataclass(cfg)
    cfg.train.num_epochs = 2
    assert spec_to_dict(cfg)["train"]["num_epochs"] == 2
