"""The CRDs: generated from the trainer's spec schema, not stale, structural, valid; the examples conform."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml

from m2f_operator import crds
from m2f_operator.builders import build_configmap, build_gang, build_service, build_stages, meta
from m2f_operator.validation import spec_error

EXAMPLES = ["train.yaml", "train-s3.yaml", "evaluate.yaml", "inference.yaml", "export.yaml", "demo/train.yaml",
            "demo/export.yaml", "demo/inference.yaml"]


@pytest.mark.parametrize("folder", ["crds", "charts/mask2former-operator/crds"])
def test_committed_crds_are_not_stale(repo_root, folder):
    assert crds.stale_files(repo_root / folder) == [], "run `make crds`"
    assert crds.main(["check", str(repo_root / folder)]) == 0


def test_pre_1_25_crds_are_the_same_without_cel_and_no_crd_has_a_null_enum(repo_root):
    """Servers before 1.25 have no CEL (kubectl refuses the unknown field), and before 1.21 a JSON null in an
    enum breaks the CRD's conversion: crds/pre-1.25 are the CRDs without the rules, and no enum holds null."""
    assert crds.main(["check", "--no-cel", str(repo_root / "crds" / "pre-1.25")]) == 0
    for with_cel, without in zip(crds.build_crds(), crds.build_crds(cel=False), strict=True):
        cel_paths = [path for path, node in _walk(with_cel) if "x-kubernetes-validations" in node]
        # The sweep has no rule: the operator fixes its search (status.searchDigest), on every server alike.
        sweep = with_cel["spec"]["names"]["kind"] == "Mask2FormerSweep"
        assert (cel_paths or sweep) and not [path for path, node in _walk(without) if "x-kubernetes-validations" in node]
        stripped = copy.deepcopy(with_cel)
        for _, node in list(_walk(stripped)):
            node.pop("x-kubernetes-validations", None)
        assert stripped == without
        assert not [path for path, node in _walk(with_cel) if None in (node.get("enum") or [])]


def test_check_fails_on_a_stale_or_missing_crd(tmp_path, capsys):
    assert crds.main(["write", str(tmp_path)]) == 0
    assert crds.main(["check", str(tmp_path)]) == 0
    victim = next(tmp_path.glob("*trains.yaml"))
    victim.write_text(victim.read_text().replace("Immutable.", "Mutable."))
    (tmp_path / "mask2former.io_mask2formerevaluates.yaml").unlink()
    assert crds.main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "mask2formertrains" in err and "mask2formerevaluates" in err and "make crds" in err
    assert crds.main(["bogus"]) == 2


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("info", list(meta.KINDS.values()), ids=lambda i: i.kind)
def test_crd_is_valid_structural_and_complete(info):
    crd = crds.build_crd(info)
    kubernetes_validate.validate(crd, "1.30", strict=True)
    names = crd["spec"]["names"]
    assert names["categories"] == ["mask2former"] and names["shortNames"] == list(info.short_names)
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Restarts", "Age"} <= columns
    if info.task == "train":
        assert {"Nodes", "Epoch", "Total", "Metric", "Value"} <= columns
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    experiment = spec["properties"]["experiment"]
    assert experiment["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert "x-kubernetes-validations" not in spec["properties"]["suspend"]
    assert schema["properties"]["status"]["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    # A real API server prunes undeclared status fields: every field the operator writes must be declared.
    from m2f_operator.status import OWNED_FIELDS

    assert set(OWNED_FIELDS) <= set(schema["properties"]["status"]["properties"])
    # Structural-schema rules the API server enforces on CRDs.
    for path, node in _walk(schema):
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path
        assert "default" not in node or not path.startswith("$.properties.spec.properties.experiment"), path
    # The experiment schema is the trainer's: the same sections and enums.
    from m2f_spec import json_schema

    assert set(experiment["properties"]) == set(json_schema()["properties"])


def _openapi_to_jsonschema(node):
    """OpenAPI v3.0 `nullable` -> JSON Schema type lists, so jsonschema can check examples."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    return out


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_conform_to_their_crd_and_render_valid_pods(repo_root, example):
    documents = list(yaml.safe_load_all((repo_root / "examples" / example).read_text()))
    # An example may bring what its resource needs (train-s3.yaml: the credentials' Secret) as further documents.
    [body] = [d for d in documents if d["kind"] in meta.KINDS]
    for other in documents:
        if other is not body:
            kubernetes_validate.validate(other, "1.30", strict=True)
    info = meta.KINDS[body["kind"]]
    schema = crds.build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(body, _openapi_to_jsonschema(schema))
    body = copy.deepcopy(body)
    body["metadata"].update(namespace="ml", uid="0000")
    assert spec_error(body) is None
    checkpoint = "/results/train/x/model.pth" if info.task == "export" else None
    for stage in build_stages(body, checkpoint=checkpoint):
        for pod in build_gang(body, stage, attempt=0):
            kubernetes_validate.validate(pod, "1.30", strict=True)
    kubernetes_validate.validate(build_service(body), "1.30", strict=True)
    kubernetes_validate.validate(build_configmap(body), "1.30", strict=True)


def test_crd_schema_rejects_a_wrong_example():
    schema = _openapi_to_jsonschema(crds.build_crd(meta.KINDS["Mask2FormerTrain"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    bad = {"apiVersion": meta.API_VERSION, "kind": "Mask2FormerTrain", "metadata": {"name": "x"},
           "spec": {"experiment": {"model": {"mode": "bogus"}}, "nodes": 0}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _cel(rule: str, new: dict, old: dict | None = None) -> bool:
    import celpy

    env = celpy.Environment()
    activation = {"self": celpy.json_to_cel(new)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return bool(env.program(env.compile(rule)).evaluate(activation))


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ({"nodes": 2}, {"nodes": 2, "backoffLimit": 5}, True),  # anything else may change
        ({"nodes": 2}, {"nodes": 3}, False),
        ({}, {"nodes": 1}, True),  # the default, spelled out
        ({"nodes": 2, "gpusPerNode": 8}, {"nodes": 2, "gpusPerNode": 4}, False),
        ({"image": "a:1"}, {"image": "a:2"}, False),
        ({"image": "a:1"}, {}, False),
        ({"nodes": 2, "suspend": True}, {"nodes": 4, "suspend": True}, True),  # edited while suspended
        ({"nodes": 2}, {"nodes": 4, "suspend": True}, True),  # suspended by the same edit
        ({"nodes": 2, "suspend": True}, {"nodes": 4, "suspend": False}, True),  # resumed by the same edit
        ({"nodes": 2, "suspend": False}, {"nodes": 4, "suspend": False}, False),
    ],
)
def test_the_gang_shape_cel_rule(old, new, allowed):
    (rule,) = [r for r in crds.build_crd(meta.KINDS["Mask2FormerTrain"])["spec"]["versions"][0]["schema"]
               ["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]]
    assert _cel(rule["rule"], new, old) is allowed


def test_every_cel_rule_compiles_and_the_export_source_rule_holds():
    rules = [rule["rule"] for crd in crds.build_crds() for _, node in _walk(crd)
             for rule in node.get("x-kubernetes-validations", [])]
    assert len(rules) == 2 * len(meta.KINDS) + 1  # experiment immutability, gang shape, Export's source
    for rule in rules:
        valid = {"experiment": {}, "trainRef": "t"}
        assert _cel(rule, valid, valid) is True  # compiles; an unchanged valid object passes
    export_rules = crds.build_crd(meta.KINDS["Mask2FormerExport"])["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    (source,) = [r["rule"] for r in export_rules if "trainRef" in r["rule"]]
    assert _cel(source, {"trainRef": "t"}) and not _cel(source, {}) and not _cel(source, {"trainRef": "t", "checkpoint": "c"})
