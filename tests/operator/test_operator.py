"""The real operator (kopf) against the Kubernetes API emulator: children, transitions, failure handling."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException
from operator_harness import BACKENDS, cluster_on, running_operator, wait_for
from reconcile_factories import TINY_EXPERIMENT

from m2f_operator import metrics
from m2f_operator.builders import meta

TRAIN = "Mask2FormerTrain"
# One control plane + operator per backend for the module: keep its tests on one xdist worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("m2f-operator-cluster")


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request, tmp_path_factory):
    with cluster_on(request.param, tmp_path_factory.mktemp(f"cluster-{request.param}")) as (cluster, _), \
            running_operator() as runner:
        yield cluster
    assert runner.exception is None, runner.output[-3000:]


def train_spec(**extra) -> dict:
    return {"experiment": TINY_EXPERIMENT, "nodes": 2, "gpusPerNode": 0, "terminationGracePeriodSeconds": 1, **extra}


def sample(name: str, **labels) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_train_children_and_status_driven_by_pods(cluster):
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec())
    pods = cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"])
    env = {e.name: e.value for e in pods[1].spec.containers[0].env}
    assert env["MASTER_ADDR"] == f"run-worker-0.run.{ns}.svc" and env["NODE_RANK"] == "1" and env["WORLD_SIZE"] == "2"
    assert pods[0].metadata.owner_references[0].kind == TRAIN
    assert cluster.core.read_namespaced_service("run", ns).spec.cluster_ip == "None"
    assert "spec.yaml" in cluster.core.read_namespaced_config_map("run-experiment", ns).data
    assert cluster.wait_phase(ns, TRAIN, "run", "Created")["workers"]["active"] == 2
    assert sample("m2f_operator_pods_created_total", kind=TRAIN, namespace=ns) == 2

    for pod in pods:
        cluster.set_pod(ns, pod.metadata.name, "Running")
    status = cluster.wait_phase(ns, TRAIN, "run", "Running")
    assert status["startTime"] and status["observedGeneration"] == 1

    for pod in pods:
        cluster.set_pod(ns, pod.metadata.name, "Succeeded", exit_code=0)
    status = cluster.wait_phase(ns, TRAIN, "run", "Succeeded")
    assert status["completionTime"] and status["workers"] == {"active": 0, "succeeded": 2, "failed": 0}
    assert status["artifacts"]["latestCheckpoint"].endswith("/train/mask2former_model_latest.pth")
    # Events are posted after the status write that a phase wait sees.
    wait_for(lambda: {"GangCreated", "AllPodsRunning", "Succeeded"} <= {r for _, r in cluster.events(ns, "run")},
             what="the transitions' Events")
    time.sleep(1.5)  # a resync or two later: no transition was announced twice
    reasons = [r for _, r in cluster.events(ns, "run") if r in ("GangCreated", "AllPodsRunning", "Succeeded")]
    assert sorted(reasons) == ["AllPodsRunning", "GangCreated", "Succeeded"], reasons
    wait_for(lambda: sample("m2f_operator_resources", kind=TRAIN, namespace=ns, phase="Succeeded") == 1,
             what="phase gauge")
    assert sample("m2f_operator_jobs_finished_total", kind=TRAIN, namespace=ns, phase="Succeeded", reason="Succeeded") == 1
    assert sample("m2f_operator_gang_startup_seconds_count", kind=TRAIN, namespace=ns) == 1
    assert sample("m2f_operator_reconcile_duration_seconds_count", kind=TRAIN) >= 3


def test_gang_restart_then_backoff_limit(cluster):
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(backoffLimit=1))
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"], attempt=0)
    cluster.set_pod(ns, "run-worker-0", "Running")
    cluster.set_pod(ns, "run-worker-1", "Failed", exit_code=1, message="NCCL watchdog timeout")
    # The whole gang goes, then attempt 1 comes back under the same names.
    pods = cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"], attempt=1)
    assert cluster.status(ns, TRAIN, "run")["restarts"] == 1
    restarting = cluster.condition(ns, TRAIN, "run", "Restarting")
    assert "NCCL watchdog timeout" in restarting["message"]
    assert sample("m2f_operator_gang_restarts_total", kind=TRAIN, namespace=ns, cause="GangRestart") == 1

    cluster.set_pod(ns, pods[0].metadata.name, "Failed", exit_code=137)
    status = cluster.wait_phase(ns, TRAIN, "run", "Failed")
    assert status["restarts"] == 1  # backoffLimit 1: never a second restart
    assert cluster.condition(ns, TRAIN, "run", "Failed")["reason"] == "BackoffLimitExceeded"
    wait_for(lambda: sample("m2f_operator_jobs_finished_total", kind=TRAIN, namespace=ns, phase="Failed",
                            reason="BackoffLimitExceeded") == 1, what="the outcome counter")
    time.sleep(1.5)  # a few resyncs later: still no attempt 2
    assert all(p.metadata.labels[meta.LABEL_ATTEMPT] == "1" for p in cluster.pods(ns))


def test_permanent_exit_code_fails_at_once_with_the_message(cluster):
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec())
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"])
    cluster.set_pod(ns, "run-worker-0", "Failed", exit_code=2, message="error: dataset.train.panoptic_json: not found")
    cluster.wait_phase(ns, TRAIN, "run", "Failed")
    failed = cluster.condition(ns, TRAIN, "run", "Failed")
    assert failed["reason"] == "PermanentError" and "dataset.train.panoptic_json: not found" in failed["message"]
    assert cluster.status(ns, TRAIN, "run")["restarts"] == 0
    # cleanPodPolicy Running: the worker that was still running is deleted, the failed one kept for logs.
    wait_for(lambda: [p.metadata.name for p in cluster.pods(ns)] == ["run-worker-0"], what="cleanup")


def test_stuck_terminating_pod_on_a_lost_node_restarts_the_gang(cluster):
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec())
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"], attempt=0)
    for name in ("run-worker-0", "run-worker-1"):
        cluster.set_pod(ns, name, "Running")
    cluster.wait_phase(ns, TRAIN, "run", "Running")
    cluster.lost_namespaces.add(ns)  # the node stops answering: deletions are never confirmed
    cluster.core.delete_namespaced_pod("run-worker-1", ns)  # e.g. a drain: grace 1 s, then stuck
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"], attempt=1, timeout=45)
    assert cluster.status(ns, TRAIN, "run")["restarts"] == 1
    assert "stuck terminating" in cluster.condition(ns, TRAIN, "run", "Restarting")["message"]
    cluster.lost_namespaces.discard(ns)


def test_force_deleted_worker_restarts_the_gang(cluster):
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec())
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"], attempt=0)
    for name in ("run-worker-0", "run-worker-1"):
        cluster.set_pod(ns, name, "Running")
    cluster.wait_phase(ns, TRAIN, "run", "Running")
    # `kubectl delete pod --force --grace-period=0`, as done for pods of a dead node.
    cluster.core.delete_namespaced_pod("run-worker-1", ns, grace_period_seconds=0)
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"], attempt=1)
    assert cluster.status(ns, TRAIN, "run")["restarts"] == 1


def test_suspend_and_resume(cluster):
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec())
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"])
    cluster.patch_spec(ns, TRAIN, "run", {"suspend": True})
    cluster.wait_phase(ns, TRAIN, "run", "Suspended")
    wait_for(lambda: cluster.pods(ns) == [], what="pods deleted on suspend")
    cluster.patch_spec(ns, TRAIN, "run", {"suspend": False})
    cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"])
    cluster.wait_phase(ns, TRAIN, "run", "Created")
    assert cluster.condition(ns, TRAIN, "run", "Suspended")["status"] == "False"
    assert cluster.status(ns, TRAIN, "run")["restarts"] == 0  # a suspension is not a failure


def test_ttl_after_finished_deletes_the_resource_and_its_children(cluster):
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1, ttlSecondsAfterFinished=1))
    (pod,) = cluster.wait_pods(ns, ["run-worker-0"])
    cluster.set_pod(ns, pod.metadata.name, "Succeeded", exit_code=0)
    wait_for(lambda: cluster.get(ns, TRAIN, "run") is None, what="TTL deletion")
    wait_for(lambda: cluster.pods(ns) == [], what="garbage collection of the pods")


def test_invalid_spec_names_the_field_creates_nothing_and_does_not_retry(cluster):
    ns = cluster.namespace()
    # A value the CRD schema cannot reject (a nullable enum; 1.20 cannot store null in an enum), the trainer's
    # validation does.
    experiment = {**TINY_EXPERIMENT, "dataset": {"type": "bogus"}}
    cluster.create(ns, TRAIN, "run", train_spec(experiment=experiment))
    status = cluster.wait_phase(ns, TRAIN, "run", "InvalidSpec")
    assert status["message"].startswith("spec.experiment: dataset.type: 'bogus' is not allowed")
    wait_for(lambda: ("Warning", "InvalidSpec") in cluster.events(ns, "run"), what="the InvalidSpec Event")
    time.sleep(1.5)
    assert cluster.pods(ns) == []
    assert cluster.events(ns, "run").count(("Warning", "InvalidSpec")) == 1


def test_evaluate_metrics_land_in_status(cluster):
    ns = cluster.namespace()
    cluster.create(ns, "Mask2FormerEvaluate", "ev", {"experiment": TINY_EXPERIMENT})
    (pod,) = cluster.wait_pods(ns, ["ev-worker-0"])
    summary = {"metrics": {"PQ": 41.5, "AP": 30.0, "mIoU": 52.25}, "artifacts": {"metrics_file": "/r/metrics.json"}}
    cluster.set_pod(ns, pod.metadata.name, "Succeeded", exit_code=0, message=json.dumps(summary))
    status = cluster.wait_phase(ns, "Mask2FormerEvaluate", "ev", "Succeeded")
    assert status["metrics"] == {"PQ": 41.5, "AP": 30.0, "mIoU": 52.25}
    assert status["artifacts"]["metricsFile"] == "/r/metrics.json"
    table = cluster.kubectl("get", "m2feval", "-n", ns).splitlines()
    assert table[0].split()[:5] == ["NAME", "PHASE", "PQ", "AP", "MIOU"]
    assert table[1].split()[:5] == ["ev", "Succeeded", "41.5", "30", "52.25"]


def test_export_waits_for_train_then_onnx_then_engine(cluster):
    ns = cluster.namespace()
    cluster.create(ns, "Mask2FormerExport", "exp", {
        "experiment": TINY_EXPERIMENT, "trainRef": "run", "tensorRT": {"enabled": True, "precision": "fp16"}})
    cluster.wait_phase(ns, "Mask2FormerExport", "exp", "WaitingForTrain")
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1))
    (worker,) = cluster.wait_pods(ns, ["run-worker-0"])
    cluster.set_pod(ns, worker.metadata.name, "Succeeded", exit_code=0)
    wait_for(lambda: any(p.metadata.name == "exp-onnx-0" for p in cluster.pods(ns)), what="ONNX export pod")
    onnx = next(p for p in cluster.pods(ns) if p.metadata.name == "exp-onnx-0")
    assert any(arg.startswith("export.checkpoint=/results/train/run/") for arg in onnx.spec.containers[0].command)
    cluster.set_pod(ns, "exp-onnx-0", "Succeeded", exit_code=0)
    wait_for(lambda: any(p.metadata.name == "exp-trt-0" for p in cluster.pods(ns)), what="TensorRT builder pod")
    trt = next(p for p in cluster.pods(ns) if p.metadata.name == "exp-trt-0")
    assert trt.spec.containers[0].resources.limits[meta.GPU_RESOURCE] == "1"
    # The status (conditions) is written after the children are created.
    wait_for(lambda: (cluster.condition(ns, "Mask2FormerExport", "exp", "OnnxExported") or {}).get("status") == "True",
             what="OnnxExported=True")
    cluster.set_pod(ns, "exp-trt-0", "Succeeded", exit_code=0)
    status = cluster.wait_phase(ns, "Mask2FormerExport", "exp", "Succeeded")
    assert status["artifacts"]["engineFile"] == "/results/export/exp/model.engine"
    assert cluster.condition(ns, "Mask2FormerExport", "exp", "EngineBuilt")["status"] == "True"


def test_export_quantizes_before_the_engine(cluster):
    ns = cluster.namespace()
    cluster.create(ns, "Mask2FormerExport", "exp", {
        "experiment": TINY_EXPERIMENT, "checkpoint": "/results/train/run/model.pth", "tensorRT": {"enabled": True},
        "quantize": {"enabled": True, "calibrationImagesDir": "/datasets/calib"}})
    cluster.wait_pods(ns, ["exp-onnx-0"])
    cluster.set_pod(ns, "exp-onnx-0", "Succeeded", exit_code=0)

    def pod(name: str):  # earlier stages' finished pods stay until cleanup
        return wait_for(lambda: next((p for p in cluster.pods(ns) if p.metadata.name == name), None), what=name)

    quantize = pod("exp-quantize-0")
    command = quantize.spec.containers[0].command
    assert command[:2] == ["m2f", "quantize"] and "quantize.model_path=/results/export/exp/model.onnx" in command
    assert meta.GPU_RESOURCE not in (quantize.spec.containers[0].resources.limits or {})
    cluster.set_pod(ns, "exp-quantize-0", "Succeeded", exit_code=0,
                    message='{"metrics": {}, "artifacts": {"quantized_model": "/results/export/exp/quantize/model.int8.onnx"}}')
    trt = pod("exp-trt-0")
    assert "gen_trt_engine.onnx_file=/results/export/exp/quantize/model.int8.onnx" in trt.spec.containers[0].command
    wait_for(lambda: (cluster.condition(ns, "Mask2FormerExport", "exp", "Quantized") or {}).get("status") == "True",
             what="Quantized=True")
    cluster.set_pod(ns, "exp-trt-0", "Succeeded", exit_code=0)
    status = cluster.wait_phase(ns, "Mask2FormerExport", "exp", "Succeeded")
    assert status["artifacts"]["quantizedOnnxFile"] == "/results/export/exp/quantize/model.int8.onnx"
    assert status["artifacts"]["onnxFile"] == "/results/export/exp/model.onnx"


def test_kubectl_apply_example_then_get_shows_printer_columns(cluster, repo_root):
    ns = cluster.namespace()
    cluster.kubectl("apply", "-n", ns, "-f", str(repo_root / "examples" / "train.yaml"))
    cluster.wait_pods(ns, ["coco-swint-worker-0", "coco-swint-worker-1"])
    cluster.wait_phase(ns, TRAIN, "coco-swint", "Created")
    pod = next(p for p in cluster.pods(ns) if p.metadata.name == "coco-swint-worker-0")
    assert pod.spec.containers[0].resources.limits[meta.GPU_RESOURCE] == "8"
    table = cluster.kubectl("get", "m2ftrain", "-n", ns)
    header = table.splitlines()[0].split()
    assert header[:2] == ["NAME", "PHASE"] and {"NODES", "EPOCH", "TOTAL", "METRIC", "RESTARTS", "AGE"} <= set(header)
    assert table.splitlines()[1].split()[:3] == ["coco-swint", "Created", "2"]
    # Progress (what the operator reads from rank 0's metrics endpoint) shows up in the columns.
    cluster.custom.patch_namespaced_custom_object_status(
        meta.GROUP, meta.VERSION, ns, "mask2formertrains", "coco-swint",
        {"status": {"progress": {"epoch": 3, "totalEpochs": 50, "lastMetric": {"name": "PQ", "value": 41.5}}}})
    row = cluster.kubectl("get", "mask2former", "-n", ns).splitlines()[1].split()
    assert {"3", "50", "PQ", "41.5"} <= set(row)
    # The operator's next status write keeps the progress it has (a failed read never erases it).
    cluster.set_pod(ns, "coco-swint-worker-0", "Running")
    cluster.set_pod(ns, "coco-swint-worker-1", "Running")
    status = cluster.wait_phase(ns, TRAIN, "coco-swint", "Running")
    assert status["progress"]["epoch"] == 3


def test_experiment_is_immutable_but_suspend_is_not(cluster):
    from kubernetes.client.rest import ApiException

    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1))
    wait_for(lambda: cluster.status(ns, TRAIN, "run").get("experimentDigest"), what="the experiment's digest")
    edit = {"experiment": {**TINY_EXPERIMENT, "train": {"num_epochs": 99}}}
    if cluster.backend == "emulator":  # like a 1.25+ server: the CRD's CEL rule refuses the edit
        with pytest.raises(ApiException) as rejected:
            cluster.patch_spec(ns, TRAIN, "run", edit)
        assert rejected.value.status == 422 and "spec.experiment is immutable" in rejected.value.body
    else:  # 1.20 has no CEL and stores it: the operator keeps the original experiment and says so
        cluster.patch_spec(ns, TRAIN, "run", edit)
        changed = wait_for(lambda: cluster.condition(ns, TRAIN, "run", "ExperimentChanged"), what="ExperimentChanged")
        assert changed["status"] == "True" and "keeps the experiment it was created with" in changed["message"]
        config = cluster.core.read_namespaced_config_map("run-experiment", ns).data["spec.yaml"]
        assert "num_epochs: 99" not in config
    cluster.patch_spec(ns, TRAIN, "run", {"suspend": True})
    cluster.wait_phase(ns, TRAIN, "run", "Suspended")


def test_the_gang_shape_changes_only_while_suspended(cluster):
    # Neither control plane evaluates the CRD's gang-shape CEL rule (1.20 has no CEL; the emulator only
    # `self == oldSelf`), so this is the operator's own enforcement, as on any server without CEL.
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec())
    for pod in cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"]):
        cluster.set_pod(ns, pod.metadata.name, "Running")
    cluster.wait_phase(ns, TRAIN, "run", "Running")
    cluster.patch_spec(ns, TRAIN, "run", {"nodes": 3})
    changed = wait_for(lambda: cluster.condition(ns, TRAIN, "run", "GangShapeChanged"), what="GangShapeChanged")
    assert changed["status"] == "True" and "spec.nodes" in changed["message"]
    time.sleep(2)  # a resync or two: still no third worker beside the running gang
    assert [p.metadata.name for p in cluster.pods(ns)] == ["run-worker-0", "run-worker-1"]
    cluster.patch_spec(ns, TRAIN, "run", {"suspend": True})
    cluster.wait_phase(ns, TRAIN, "run", "Suspended")
    wait_for(lambda: cluster.status(ns, TRAIN, "run").get("gangShape", {}).get("nodes") == 3, what="the edit applied",
             report=lambda: json.dumps(cluster.status(ns, TRAIN, "run")))
    cluster.patch_spec(ns, TRAIN, "run", {"suspend": False})
    cluster.wait_pods(ns, [f"run-worker-{i}" for i in range(3)])


def test_a_pod_template_reaches_the_pods_the_api_server_stores(cluster):
    ns = cluster.namespace()
    template = {"metadata": {"labels": {"team": "vision"}}, "spec": {
        "initContainers": [{"name": "fetch", "image": "busybox:1.36", "command": ["true"]}],
        "containers": [{"name": "m2f", "envFrom": [{"configMapRef": {"name": "tuning", "optional": True}}]},
                       {"name": "exporter", "image": "dcgm-exporter:4"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"team": "vision"}}}]}}
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1, podTemplate=template))
    (pod,) = cluster.wait_pods(ns, ["run-worker-0"])
    assert [c.name for c in pod.spec.containers] == ["m2f", "exporter"]
    assert pod.spec.init_containers[0].name == "fetch" and pod.spec.topology_spread_constraints[0].max_skew == 1
    assert pod.spec.containers[0].env_from[0].config_map_ref.name == "tuning"
    assert pod.metadata.labels["team"] == "vision" and pod.spec.restart_policy == "Never"


def test_gitops_tools_read_live_resources_as_progressing_healthy_or_degraded(cluster):
    """Argo CD's health (docs/gitops.md's Lua) and kstatus on resources the operator is driving right now."""
    from gitops_health import EXPECTED, argo_health, kstatus, record

    def check(ns: str, name: str, phase: str) -> None:
        cluster.wait_phase(ns, TRAIN, name, phase)
        obj = wait_for(lambda: (o := cluster.get(ns, TRAIN, name)) and kstatus(o) == EXPECTED[phase][1] and o,
                       what=f"{name}: kstatus {EXPECTED[phase][1]} in phase {phase}")
        assert argo_health(obj)[0] == EXPECTED[phase][0], (phase, argo_health(obj))
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert ready["observedGeneration"] == obj["metadata"]["generation"]
        record(obj, cluster.backend)

    def job(name: str, **spec) -> tuple[str, object]:
        ns = cluster.namespace()
        cluster.create(ns, TRAIN, name, train_spec(nodes=1, **spec))
        return ns, (cluster.wait_pods(ns, [f"{name}-worker-0"])[0] if not spec else None)

    ns, pod = job("ok")
    check(ns, "ok", "Created")
    cluster.set_pod(ns, pod.metadata.name, "Running")
    check(ns, "ok", "Running")
    cluster.set_pod(ns, pod.metadata.name, "Succeeded", exit_code=0)
    check(ns, "ok", "Succeeded")
    ns, pod = job("broken")
    cluster.set_pod(ns, pod.metadata.name, "Failed", exit_code=2, message="error: dataset.train.img_dir: not found")
    check(ns, "broken", "Failed")
    # Valid for the CRD's schema, refused by the operator: the experiment contradicts the gang's shape.
    ns, _ = job("invalid", experiment={**TINY_EXPERIMENT, "train": {"num_epochs": 2, "num_nodes": 3}})
    check(ns, "invalid", "InvalidSpec")
    ns, _ = job("parked", suspend=True)
    check(ns, "parked", "Suspended")


# -- what a real API server showed (regression tests; both backends unless the skip says why) -------------


def test_a_recreated_resource_never_adopts_its_predecessors_children(cluster):
    """Children belong to a resource by uid: a new resource of the same name whose predecessor's children still
    exist (garbage collection is asynchronous; here orphaned, so they stay) does not count or finish on them."""
    from kubernetes.client import V1DeleteOptions

    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1))
    (old,) = cluster.wait_pods(ns, ["run-worker-0"])
    cluster.set_pod(ns, "run-worker-0", "Succeeded", exit_code=0)
    cluster.wait_phase(ns, TRAIN, "run", "Succeeded")
    cluster.custom.delete_namespaced_custom_object(meta.GROUP, meta.VERSION, ns, "mask2formertrains", "run",
                                                   body=V1DeleteOptions(propagation_policy="Orphan"))
    wait_for(lambda: cluster.get(ns, TRAIN, "run") is None, what="the first Train to be gone")
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1))
    blocked = wait_for(lambda: cluster.condition(ns, TRAIN, "run", "Created"), what="the Created condition")
    assert (blocked["status"], blocked["reason"]) == ("False", "WaitingForGarbageCollection"), blocked
    assert "run-experiment" in blocked["message"]
    time.sleep(2)  # a few retries later it still has not taken the old Succeeded pod for its own
    status = cluster.status(ns, TRAIN, "run")
    assert status["phase"] == "Pending" and status.get("workers", {}).get("succeeded", 0) == 0, status
    wait_for(lambda: ("Warning", "WaitingForGarbageCollection") in cluster.events(ns, "run"), what="the Event")
    # What garbage collection would do: the old children go, and the new resource creates its own.
    cluster.core.delete_namespaced_pod("run-worker-0", ns, grace_period_seconds=0)
    cluster.core.delete_namespaced_config_map("run-experiment", ns)
    cluster.core.delete_namespaced_service("run", ns, _preload_content=False)  # (1.20's reply trips the model)
    (new,) = cluster.wait_pods(ns, ["run-worker-0"], timeout=60)
    assert new.metadata.uid != old.metadata.uid
    assert new.metadata.owner_references[0].uid == cluster.get(ns, TRAIN, "run")["metadata"]["uid"]
    assert cluster.wait_phase(ns, TRAIN, "run", "Created")


def test_a_pod_the_api_rejects_is_failed_create_until_the_spec_is_fixed(cluster):
    """A 422 (here an env var name the API refuses) shows as phase FailedCreate, Created=False with the API's
    message and one Warning Event; nothing is retried until the spec is edited, which then recovers."""
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1, env=[{"name": "1BAD", "value": "x"}]))
    status = cluster.wait_phase(ns, TRAIN, "run", "FailedCreate")
    created = cluster.condition(ns, TRAIN, "run", "Created")
    assert (created["status"], created["reason"]) == ("False", "FailedCreate")
    assert "Pod run-worker-0 was rejected: 422:" in status["message"] and '"1BAD"' in status["message"]
    from gitops_health import EXPECTED, argo_health, kstatus, record

    obj = cluster.get(ns, TRAIN, "run")
    assert (argo_health(obj)[0], kstatus(obj)) == EXPECTED["FailedCreate"]  # only a spec edit heals it
    record(obj, cluster.backend)
    time.sleep(2)
    assert cluster.events(ns, "run").count(("Warning", "FailedCreate")) == 1  # no retry storm
    cluster.patch_spec(ns, TRAIN, "run", {"env": [{"name": "GOOD", "value": "x"}]})
    cluster.wait_pods(ns, ["run-worker-0"])
    cluster.wait_phase(ns, TRAIN, "run", "Created")
    assert cluster.condition(ns, TRAIN, "run", "FailedCreate")["status"] == "False"


def test_a_missing_service_account_is_retried_until_it_exists(cluster):
    if cluster.backend == "emulator":
        pytest.skip("the emulator has no ServiceAccount admission (a real API server refuses the pod with 403)")
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(nodes=1, serviceAccountName="trainer"))
    status = cluster.wait_phase(ns, TRAIN, "run", "FailedCreate")
    assert "403" in status["message"] and "error looking up service account" in status["message"], status
    from gitops_health import RETRIED_FAILED_CREATE, argo_health, kstatus, record

    obj = cluster.get(ns, TRAIN, "run")
    assert (argo_health(obj)[0], kstatus(obj)) == RETRIED_FAILED_CREATE  # the operator heals it by itself
    record(obj, cluster.backend, "-retried")
    cluster.core.create_namespaced_service_account(ns, {"metadata": {"name": "trainer"}})
    # Retried with backoff (1, 2, 5, 10 s ...) without any edit of the resource.
    cluster.wait_pods(ns, ["run-worker-0"], timeout=60)
    cluster.wait_phase(ns, TRAIN, "run", "Created")


def test_rbac_workers_can_write_nothing_and_the_operator_only_what_it_needs(cluster):
    if cluster.backend == "emulator":
        pytest.skip("the emulator does not authorize requests; RBAC is the real API server's")
    ns = cluster.namespace()
    worker = f"system:serviceaccount:{ns}:{meta.DEFAULT_WORKER_SERVICE_ACCOUNT}"
    operator_account = "system:serviceaccount:m2f-system:m2f-mask2former-operator"

    def can_i(who: str, *args: str) -> bool:
        answer = cluster.kubectl_result("auth", "can-i", *args, f"--as={who}", "-n", ns)
        return answer.stdout.strip() == "yes"

    assert not can_i(worker, "patch", "mask2formertrains/any", "--subresource=status")
    assert not can_i(worker, "get", "mask2formertrains")
    assert not can_i(worker, "create", "pods")
    assert can_i(operator_account, "update", "mask2formertrains", "--subresource=finalizers")
    assert can_i(operator_account, "create", "pods") and can_i(operator_account, "get", "configmaps")
    assert not can_i(operator_account, "update", "pods") and not can_i(operator_account, "get", "secrets")


def _install_pod_group_crds(cluster) -> None:
    """The coscheduling plugin's and Volcano's PodGroup kinds, as their installs would add them (idempotent)."""
    cluster.kubectl("apply", "-f", str(Path(__file__).parent / "fixtures" / "podgroup-crds.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/podgroups.scheduling.x-k8s.io", "crd/podgroups.scheduling.volcano.sh")


@pytest.mark.parametrize(
    ("scheduling", "group", "labels", "annotations"),
    [
        ({"gang": "coscheduling", "startupTimeoutSeconds": 120},
         ("scheduling.x-k8s.io", "v1alpha1", {"minMember": 2, "scheduleTimeoutSeconds": 120}),
         {"scheduling.x-k8s.io/pod-group": "run-worker-0"}, {}),
        ({"gang": "volcano", "queueName": "research"},
         ("scheduling.volcano.sh", "v1beta1", {"minMember": 2, "queue": "research"}),
         {}, {"scheduling.k8s.io/group-name": "run-worker-0"}),
        ({"gang": "kueue", "queueName": "team-a"}, None,
         {"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/pod-group-name": "run-worker-0"},
         {"kueue.x-k8s.io/pod-group-total-count": "2", "kueue.x-k8s.io/retriable-in-group": "false"}),
    ],
)
def test_gang_schedulers_see_the_gang(cluster, scheduling, group, labels, annotations):
    _install_pod_group_crds(cluster)
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(scheduling=scheduling))
    pods = cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"])
    for pod in pods:
        assert labels.items() <= pod.metadata.labels.items()
        assert annotations.items() <= (pod.metadata.annotations or {}).items()
    if group is not None:
        api_group, version, spec = group
        pod_group = cluster.custom.get_namespaced_custom_object(api_group, version, ns, "podgroups", "run-worker-0")
        assert pod_group["spec"] == spec
        (owner,) = pod_group["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == (TRAIN, "run", True)
    if scheduling["gang"] == "volcano":
        assert {p.spec.scheduler_name for p in pods} == {"volcano"}


def test_a_gang_held_by_kueues_scheduling_gates_is_queued(cluster):
    if cluster.backend == "real":
        pytest.skip("pod scheduling gates are Kubernetes 1.26+ (the real control plane here is 1.20)")
    ns = cluster.namespace()
    cluster.create(ns, TRAIN, "run", train_spec(scheduling={"gang": "kueue", "queueName": "team-a"}))
    pods = cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"])
    gate = {"spec": {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]}}
    for pod in pods:  # what Kueue's pod webhook does at creation
        cluster.core.patch_namespaced_pod(pod.metadata.name, ns, gate)
    status = cluster.wait_phase(ns, TRAIN, "run", "Queued")
    assert "scheduling gate" in status["message"] and "startupStartTime" not in status
    for pod in pods:  # admitted: Kueue lifts the gates
        cluster.core.patch_namespaced_pod(pod.metadata.name, ns, {"spec": {"schedulingGates": None}})
    wait_for(lambda: cluster.condition(ns, TRAIN, "run", "Queued")["status"] == "False", what="admission")
    assert cluster.status(ns, TRAIN, "run")["phase"] == "Created"


def _gpu_node(name: str) -> dict:
    capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", meta.GPU_RESOURCE: "8"}
    return {"metadata": {"name": name}, "status": {"capacity": capacity, "allocatable": capacity, "conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake"}]}}


def test_two_jobs_each_holding_one_of_two_gpu_nodes_both_finish(cluster):
    """Two 2-node x 8-GPU jobs on two 8-GPU nodes, each placed half (a partial-gang deadlock, forced by
    cordoning): the startup timeout deletes the gangs, their jittered retries come apart, both finish."""
    if cluster.backend == "emulator":
        pytest.skip("the emulator's binding ignores resource requests; capacity is the real kube-scheduler's")
    ns, gpus = cluster.namespace(), {"limits": {meta.GPU_RESOURCE: "8"}, "requests": {meta.GPU_RESOURCE: "8"}}
    # Processes stay on CPU (gpusPerNode 0); the scheduler sees 8 GPUs per pod through resources.
    # No startup timeout while the cordon dance below builds the deadlock (on a busy machine it can take longer
    # than any short timeout); once both gangs hold half, a short one is set.
    spec = train_spec(resources=gpus, backoffLimit=0, scheduling={"startupTimeoutSeconds": 0})
    cluster.core.create_node(_gpu_node("node-b"))
    cluster.core.patch_node("node-b", {"spec": {"taints": None}})

    def cordon(node: str, unschedulable: bool) -> None:
        cluster.core.patch_node(node, {"spec": {"unschedulable": unschedulable}})

    def bound(job: str) -> dict[str, str]:
        return {p.metadata.name: p.spec.node_name for p in cluster.pods(ns)
                if p.metadata.labels[meta.LABEL_JOB_NAME] == job and p.spec.node_name and not p.metadata.deletion_timestamp}

    # The real scheduler retries an unschedulable pod after a backoff or a node event: on a busy machine that
    # took over 30 s once (CI9); the bound is a deadline, not what the test measures.
    try:
        cordon("node-b", True)
        cluster.create(ns, TRAIN, "big-a", spec)
        wait_for(lambda: set(bound("big-a").values()) == {"node-a"} or None, 90, "big-a half placed on node-a")
        cordon("node-a", True)
        cordon("node-b", False)
        cluster.create(ns, TRAIN, "big-b", spec)
        wait_for(lambda: set(bound("big-b").values()) == {"node-b"} or None, 90, "big-b half placed on node-b")
        cordon("node-a", False)
        time.sleep(1)  # deadlocked: each holds one node and waits for the other
        assert set(bound("big-a").values()) == {"node-a"} and set(bound("big-b").values()) == {"node-b"}
        for job in ("big-a", "big-b"):
            cluster.patch_spec(ns, TRAIN, job, {"scheduling": {"startupTimeoutSeconds": 5}})

        def kubelet_step():
            # The test is the kubelet: bound pods run; a gang with every worker running finishes.
            pods = [p for p in cluster.pods(ns) if not p.metadata.deletion_timestamp]
            with contextlib.suppress(ApiException):  # a pod the operator deleted meanwhile
                for pod in pods:
                    if pod.spec.node_name and pod.status.phase == "Pending":
                        cluster.set_pod(ns, pod.metadata.name, "Running")
                for job in ("big-a", "big-b"):
                    gang = [p for p in pods if p.metadata.labels[meta.LABEL_JOB_NAME] == job]
                    if len(gang) == 2 and all(p.status.phase == "Running" for p in gang):
                        for pod in gang:
                            cluster.set_pod(ns, pod.metadata.name, "Succeeded", exit_code=0)
            phases = [(cluster.get(ns, TRAIN, job).get("status") or {}).get("phase") for job in ("big-a", "big-b")]
            return phases if phases == ["Succeeded", "Succeeded"] else None

        def report() -> str:
            statuses = {job: cluster.status(ns, TRAIN, job) for job in ("big-a", "big-b")}
            pods = [(p.metadata.name, p.metadata.labels.get(meta.LABEL_ATTEMPT), p.spec.node_name, p.status.phase)
                    for p in cluster.pods(ns)]
            return json.dumps({"statuses": statuses, "pods": pods}, indent=1, default=str)[-6000:]

        wait_for(kubelet_step, 240, "both jobs Succeeded", report, interval=0.5)
    finally:
        cordon("node-a", False)
        cluster.core.delete_node("node-b")
    timeouts = [(job, reason) for job in ("big-a", "big-b") for _, reason in cluster.events(ns, job)
                if reason == "StartupTimeout"]
    assert timeouts, "the deadlock was never broken by a startup timeout"
    for job in ("big-a", "big-b"):
        status = cluster.status(ns, TRAIN, job)
        assert status.get("restartsCountTowardsLimit", 0) == 0, status  # backoffLimit 0 and still Succeeded
    messages = [e.message for e in cluster.core.list_namespaced_event(ns).items if e.reason == "StartupTimeout"]
    assert any("Insufficient nvidia.com/gpu" in m for m in messages), messages
