"""Experiment spec: every field accepted, JSON Schema validity (draft-07 and CRD), `m2f validate`/`m2f schema`."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from m2f_spec import ExperimentConfig, config_from_dict, json_schema, load_spec, spec_to_dict
from m2f_spec.fields import field_default
from m2f_spec.loader import list_item_type, unwrap_optional
from m2f_spec.reference import fields_markdown
from m2f_trainer.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "specs"
TAO_SAMPLE = EXAMPLES / "tao_coco_panoptic_swin_tiny.yaml"

# Fields whose valid values depend on each other: set consistently so that nothing is resolved away.
CONSISTENT_VALUES = {
    "train.num_gpus": 2, "train.gpu_ids": [3, 5],
    "evaluate.num_gpus": 2, "evaluate.gpu_ids": [1, 2],
    "inference.num_gpus": 3, "inference.gpu_ids": [0, 2, 4],
    "gen_trt_engine.tensorrt.min_batch_size": 1,
    "gen_trt_engine.tensorrt.opt_batch_size": 2,
    "gen_trt_engine.tensorrt.max_batch_size": 4,
    "dataset.augmentation.lsj_scale_range": [0.5, 1.5],
    "model.backbone.swin.out_indices": [1, 2, 3],
    "model.backbone.swin.out_features": ["res3", "res4", "res5"],
    "model.sem_seg_head.deformable_transformer_encoder_in_features": ["res4", "res5"],
    "export.batch_size": 8,
    # what the model builder needs (m2f_spec.model_rules)
    "model.sem_seg_head.convs_dim": 64,
    "model.mask_former.hidden_dim": 64,
    "model.mask_former.nheads": 4,
    "train.freeze": ["backbone", "input_proj"],
    # a list of sections, a free mapping and a pattern-checked string
    "quantize.layers": [{"module_name": "decoder.*", "weights": {
        "dtype": "int8", "observer_or_fake_quant": "minmax", "quant_axis": 0, "observer_or_fake_quant_kwargs": {"a": 1}},
        "activations": None}],
    "quantize.backend_kwargs": {"ActivationSymmetric": False},
    "quantize.device": "cpu",
    "gen_trt_engine.batch_size": 2,
    # a single allowed value
    "export.input_channel": 3,
    "gen_trt_engine.input_channel": 3,
}


def leaf_fields(cls: type, prefix: str = ""):
    """(dotted path, type, field) for every leaf field of the schema."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], f"{path}.")
        else:
            yield path, hints[f.name], f


def non_default_value(path: str, tp: Any, f: dataclasses.Field) -> Any:
    """A valid value for the field that differs from its default."""
    if path in CONSISTENT_VALUES:
        return CONSISTENT_VALUES[path]
    meta, default = f.metadata, field_default(f)
    inner, _ = unwrap_optional(tp)
    item = list_item_type(inner)
    if item is not None:
        if meta.get("item_choices"):
            return list(meta["item_choices"][-2:])
        low, high = meta.get("length") or (1, 3)
        count = max(low, min(high, 2))
        base = {int: 7, float: 0.25, str: "name"}[item]
        if meta.get("item_minimum") is not None:
            base = type(base)(max(base, meta["item_minimum"]))
        if meta.get("item_maximum") is not None:
            base = type(base)(min(base, meta["item_maximum"]))
        return [base] * count
    if meta.get("choices"):
        return next(c for c in meta["choices"] if c != default)
    if inner is bool:
        return not default
    if inner is str:
        return f"/somewhere/{path.replace('.', '_')}"
    low = meta.get("minimum")
    high = meta.get("maximum")
    if meta.get("exclusive_minimum") is not None:
        low = meta["exclusive_minimum"]
    if inner is int:
        candidate = (default if default is not None else (low or 0)) + 1
        if high is not None and candidate > high:
            candidate = low if low is not None and low != default else high - 1
        return candidate
    if low is not None and high is not None:
        return (low + high) / 2 if (low + high) / 2 != default else (low + 3 * high) / 4
    return (default or 0.5) * 2 + 0.5


def set_path(data: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def get_path(data: dict, path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def test_every_field_is_accepted_and_round_trips(tmp_path):
    leaves = list(leaf_fields(ExperimentConfig))
    assert len(leaves) > 150
    raw: dict = {}
    for path, tp, f in leaves:
        value = non_default_value(path, tp, f)
        assert value != field_default(f) or path in CONSISTENT_VALUES, path
        set_path(raw, path, value)
    raw["data"] = raw.pop("dataset")  # and through TAO's alias, from a real YAML file
    spec = tmp_path / "every_field.yaml"
    spec.write_text(yaml.safe_dump(raw))
    loaded = spec_to_dict(load_spec(spec))
    raw["dataset"] = raw.pop("data")
    for path, _, _ in leaves:
        assert get_path(loaded, path) == get_path(raw, path), path


# ------------------------------------------------------------------------------------ JSON Schema


def walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_draft07_schema_is_valid_and_accepts_the_examples():
    schema = json_schema("draft-07")
    jsonschema.Draft7Validator.check_schema(schema)
    # Every section is closed; the free mappings (keyword arguments for a library) have no properties to close.
    objects = [node for node in walk(schema) if "object" in (node.get("type") or ())]
    assert all(node["additionalProperties"] is False for node in objects if "properties" in node)
    # quantize.backend_kwargs and the observer kwargs of a layer's weights and activations, nothing else.
    assert len([node for node in objects if "properties" not in node]) == 3
    validator = jsonschema.Draft7Validator(schema)
    for example in sorted(EXAMPLES.glob("*.yaml")):
        raw = yaml.safe_load(example.read_text())
        errors = [e.message for e in validator.iter_errors(raw)]
        assert not errors, (example.name, errors)
        # and the fully resolved spec (every field present, nulls included) as well
        assert not list(validator.iter_errors(spec_to_dict(load_spec(example))))


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"model": {"mode": "bogus"}}, "mode"),
        ({"train": {"num_gpus": 0}}, "num_gpus"),
        ({"train": {"optim": {"lr": 0}}}, "lr"),
        ({"train": {"trian": 1}}, "trian"),
        ({"data": {}, "dataset": {}}, ""),
        ({"dataset": {"augmentation": {"train_crop_size": [1]}}}, "train_crop_size"),
    ],
)
def test_draft07_schema_rejects_what_the_loader_rejects(bad, where):
    validator = jsonschema.Draft7Validator(json_schema("draft-07"))
    errors = list(validator.iter_errors(bad))
    assert errors
    assert where in " ".join(str(list(e.absolute_path)) + e.message for e in errors)


def test_openapi_schema_fits_a_crd_openapiv3schema():
    schema = json_schema()
    text = json.dumps(schema)
    assert "$ref" not in text and "definitions" not in text and "$schema" not in text
    for node in walk(schema):
        if isinstance(node.get("type"), list):
            pytest.fail(f"type lists are not allowed in a CRD schema: {node}")
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node
        # Kubernetes: "additionalProperties and properties are mutually exclusive"
        assert not ("properties" in node and "additionalProperties" in node), node.get("description")
    assert schema["properties"]["results_dir"]["default"] == "/results"
    assert schema["properties"]["data"]["properties"] == schema["properties"]["dataset"]["properties"]
    backbone = schema["properties"]["model"]["properties"]["backbone"]["properties"]
    assert backbone["pretrained_weights"]["nullable"] is True
    assert backbone["type"]["enum"][:2] == ["swin", "SWIN"]
    assert "[project extension]" in backbone["timm_name"]["description"]


def test_openapi_schema_is_a_valid_crd_for_kubernetes():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "experiments.test.m2f.io"},
        "spec": {
            "group": "test.m2f.io",
            "names": {"kind": "Experiment", "plural": "experiments", "singular": "experiment"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": json_schema()}}},
            }],
        },
    }
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)


# ------------------------------------------------------------------------------------ CLI


def test_m2f_validate_prints_the_resolved_spec(capsys):
    assert main(["validate", "-e", str(TAO_SAMPLE), "train.num_gpus=2"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["train"]["gpu_ids"] == [0, 1]
    assert config_from_dict(printed) == load_spec(TAO_SAMPLE, ["train.num_gpus=2"])


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["validate", "-e", str(TAO_SAMPLE), "model.mask_former.num_querys=3"],
         "model.mask_former.num_querys: unknown key; did you mean 'model.mask_former.num_object_queries'"),
        (["validate", "-e", "/nonexistent/spec.yaml"], "experiment spec file not found: /nonexistent/spec.yaml"),
        (["validate"], "missing the experiment spec"),
        (["validate", "-e", str(TAO_SAMPLE), "--nope"], "unrecognized arguments: --nope"),
        (["schema", "--nope"], "unknown argument '--nope'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(capsys, argv, expected):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in captured.err


def test_m2f_schema_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    assert main(["schema", "--draft-07"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"].startswith("http://json-schema.org/draft-07")


# ------------------------------------------------------------------------------------ docs


def test_docs_field_reference_is_generated_from_the_schema():
    text = (REPO / "docs" / "spec.md").read_text()
    assert fields_markdown().strip() in text, "regenerate: python -m m2f_spec.reference"


def test_docs_cover_every_field():
    text = (REPO / "docs" / "spec.md").read_text()
    documented = set(re.findall(r"`([a-z_][a-z0-9_.]*)`", text))
    missing = [path for path, _, _ in leaf_fields(ExperimentConfig) if path not in documented]
    assert not missing, f"docs/spec.md lacks {missing}"
