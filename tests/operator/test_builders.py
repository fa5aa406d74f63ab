"""Table tests of the pure builders: every manifest is valid Kubernetes 1.30 (strict) and follows the env contract."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from reconcile_factories import resource

from m2f_operator.builders import PodDefaults, build_configmap, build_gang, build_service, build_stages, meta


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def assert_valid(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, "1.30", strict=True)


@pytest.mark.parametrize(
    ("nodes", "gpus", "world_size", "per_node"),
    [(1, 1, 1, 1), (2, 8, 16, 8), (3, 0, 3, 1), (4, 2, 8, 2)],
)
def test_train_gang_env_contract(nodes, gpus, world_size, per_node):
    body = resource(nodes=nodes, gpusPerNode=gpus)
    (stage,) = build_stages(body)
    pods = build_gang(body, stage, attempt=3)
    assert [p["metadata"]["name"] for p in pods] == [f"run-worker-{i}" for i in range(nodes)]
    for index, pod in enumerate(pods):
        assert_valid(pod)
        env = env_of(pod)
        assert env["MASTER_ADDR"] == "run-worker-0.run.ml.svc"
        assert env["MASTER_PORT"] == str(meta.MASTER_PORT)
        assert env["NODE_RANK"] == str(index)
        assert env["WORLD_SIZE"] == str(world_size)
        assert env["NUM_GPU_PER_NODE"] == str(per_node)
        assert env["M2F_RESULTS_DIR"] == "/results/train/run"
        assert "M2F_STATUS_TARGET" not in env  # no pod writes status: the operator reads rank 0's metrics
        assert pod["spec"]["automountServiceAccountToken"] is False  # and no pod gets an API token
        assert env["M2F_METRICS_PORT"] == ("9091" if index == 0 else "0")
        spec = pod["spec"]
        assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == (f"run-worker-{index}", "run", "Never")
        assert pod["metadata"]["labels"][meta.LABEL_ATTEMPT] == "3"
        assert pod["metadata"]["labels"][meta.LABEL_REPLICA_INDEX] == str(index)
        assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-run"
        container = spec["containers"][0]
        assert container["command"] == ["m2f", "train", "-e", "/etc/m2f/spec.yaml"]
        limits = container["resources"].get("limits", {})
        assert limits.get(meta.GPU_RESOURCE) == (str(gpus) if gpus else None)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_pod_template_subset_and_user_volumes_pass_through():
    template = {
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "priorityClassName": "training",
        "schedulerName": "volcano",
        "serviceAccountName": "custom-sa",
        "imagePullSecrets": [{"name": "registry"}],
        "securityContext": {"runAsUser": 4242},
        "podLabels": {"team": "vision"},
        "podAnnotations": {"note": "x"},
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "coco"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": {"requests": {"cpu": 4, "memory": "16Gi"}},
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "NODE_RANK", "value": "99"}],
    }
    body = resource(image="registry.local/m2f:1", **template)
    pod = build_gang(body, build_stages(body)[0], attempt=0)[0]
    assert_valid(pod)
    spec = pod["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "schedulerName", "imagePullSecrets"):
        assert spec[key] == template[key]
    assert spec["serviceAccountName"] == "custom-sa"
    assert spec["securityContext"]["runAsUser"] == 4242 and spec["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["labels"]["team"] == "vision" and pod["metadata"]["annotations"] == {"note": "x"}
    container = spec["containers"][0]
    assert container["image"] == "registry.local/m2f:1"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", meta.GPU_RESOURCE: "1"}
    # The contract's variables win over user env of the same name.
    assert env_of(pod)["NODE_RANK"] == "0" and env_of(pod)["NCCL_DEBUG"] == "INFO"


@pytest.mark.parametrize(
    ("kind", "task", "results"),
    [
        ("Mask2FormerEvaluate", "evaluate", "/results/evaluate/run"),
        ("Mask2FormerInference", "inference", "/results/inference/run"),
    ],
)
def test_single_pod_kinds(kind, task, results):
    body = resource(kind)
    (stage,) = build_stages(body)
    (pod,) = build_gang(body, stage, attempt=0)
    assert_valid(pod)
    assert pod["spec"]["containers"][0]["command"][:2] == ["m2f", task]
    assert env_of(pod)["WORLD_SIZE"] == "1" and env_of(pod)["M2F_RESULTS_DIR"] == results
    assert meta.GPU_RESOURCE not in pod["spec"]["containers"][0]["resources"].get("limits", {})


def test_export_stages_onnx_then_tensorrt_with_one_gpu():
    body = resource(
        "Mask2FormerExport", checkpoint="/results/train/run/model.pth",
        tensorRT={"enabled": True, "precision": "fp16", "minBatch": 1, "optBatch": 2, "maxBatch": 4, "workspaceMiB": 2048},
    )
    defaults = PodDefaults(trt_image="trt:10")
    onnx, trt = build_stages(body, defaults, checkpoint="/results/train/run/model.pth")
    onnx_pod = build_gang(body, onnx, 0, defaults)[0]
    trt_pod = build_gang(body, trt, 0, defaults)[0]
    for pod in (onnx_pod, trt_pod):
        assert_valid(pod)
    assert onnx_pod["metadata"]["name"] == "run-onnx-0"
    assert onnx_pod["spec"]["containers"][0]["command"] == [
        "m2f", "export", "-e", "/etc/m2f/spec.yaml",
        "export.checkpoint=/results/train/run/model.pth", "export.onnx_file=/results/export/run/model.onnx",
    ]
    trt_container = trt_pod["spec"]["containers"][0]
    assert trt_container["image"] == "trt:10"
    assert trt_container["resources"]["limits"] == {meta.GPU_RESOURCE: "1"}
    assert "gen_trt_engine.tensorrt.data_type=FP16" in trt_container["command"]
    assert "gen_trt_engine.tensorrt.max_batch_size=4" in trt_container["command"]
    # The overrides the operator passes are accepted by the trainer's own spec validation.
    from m2f_operator.validation import experiment_error

    assert experiment_error(body["spec"]["experiment"], tuple(trt_container["command"][4:])) is None
    assert experiment_error(body["spec"]["experiment"], tuple(onnx_pod["spec"]["containers"][0]["command"][4:])) is None


def test_export_quantize_stage_sits_between_onnx_and_the_engine():
    body = resource("Mask2FormerExport", checkpoint="/x.pth", tensorRT={"enabled": True},
                    quantize={"enabled": True, "calibrationImagesDir": "/datasets/calib", "algorithm": "entropy"})
    onnx, quantize, trt = build_stages(body, checkpoint="/x.pth")
    assert [onnx.role, quantize.role, trt.role] == ["onnx", "quantize", "trt"]
    assert quantize.gpus_per_node == 0 and quantize.task == "quantize"
    assert "quantize.model_path=/results/export/run/model.onnx" in quantize.overrides
    assert "dataset.quant_calibration_dataset.images_dir=/datasets/calib" in quantize.overrides
    assert "quantize.algorithm=entropy" in quantize.overrides
    # TensorRT builds from the INT8 model (explicit quantization).
    assert "gen_trt_engine.onnx_file=/results/export/run/quantize/model.int8.onnx" in trt.overrides
    from m2f_operator.validation import experiment_error

    assert experiment_error(body["spec"]["experiment"], quantize.overrides) is None
    pod = build_gang(body, quantize, 0)[0]
    assert_valid(pod)
    assert pod["spec"]["containers"][0]["command"][:2] == ["m2f", "quantize"]


@pytest.mark.parametrize(("quantize", "error"), [
    ({"enabled": True}, "spec.quantize.calibrationImagesDir: required when spec.quantize.enabled"),
    ({"enabled": True, "calibrationImagesDir": "/c", "algorithm": "awq_lite"}, "spec.quantize.algorithm: 'awq_lite'"),
    ({"enabled": True, "calibrationImagesDir": "/c", "maxImages": 0}, "spec.quantize.maxImages: must be an integer >= 1"),
    ({"enabled": False}, None),  # nothing to check when off
    ({"enabled": True, "calibrationImagesDir": "/c", "maxImages": 64}, None),
])
def test_export_quantize_settings_are_validated(quantize, error):
    from m2f_operator.validation import spec_error

    problem = spec_error(resource("Mask2FormerExport", checkpoint="/x.pth", quantize=quantize))
    assert (problem is None) if error is None else (problem or "").startswith(error), problem


def test_export_without_tensorrt_has_one_stage():
    body = resource("Mask2FormerExport", checkpoint="/x.pth", tensorRT={"enabled": False})
    assert [s.role for s in build_stages(body, checkpoint="/x.pth")] == ["onnx"]


def test_configmap_renders_experiment_with_operator_results_dir():
    body = resource(resultsDir="/mnt/out/run1")
    cm = build_configmap(body)
    assert_valid(cm)
    rendered = yaml.safe_load(cm["data"]["spec.yaml"])
    assert rendered["results_dir"] == "/mnt/out/run1"
    assert rendered["model"]["sem_seg_head"]["num_classes"] == 4
    assert cm["metadata"]["name"] == "run-experiment"
    # The gang's shape, which the trainer checks against WORLD_SIZE / NUM_GPU_PER_NODE.
    assert rendered["train"] == {"num_epochs": 2, "num_nodes": 1, "num_gpus": 1}
    rendered = yaml.safe_load(build_configmap(resource(nodes=4, gpusPerNode=8))["data"]["spec.yaml"])
    assert (rendered["train"]["num_nodes"], rendered["train"]["num_gpus"]) == (4, 8)
    evaluate = yaml.safe_load(build_configmap(resource("Mask2FormerEvaluate"))["data"]["spec.yaml"])
    assert "num_nodes" not in evaluate.get("train", {})


def test_headless_service_selects_the_gang():
    svc = build_service(resource())
    assert_valid(svc)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {meta.LABEL_JOB_NAME: "run", meta.LABEL_KIND: "train"}
