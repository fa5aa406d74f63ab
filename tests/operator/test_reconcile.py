"""Table-driven tests of the pure reconcile: (resource, pods, now) -> creates, deletes, status, events."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta

import pytest
from reconcile_factories import NOW, gang, iso, pod, resource

from m2f_operator.reconcile import Observed, reconcile


def applied(body: dict, plan) -> dict:
    """The resource after the plan's status patch (merge-patch semantics: None deletes)."""
    body = copy.deepcopy(body)
    status = body.setdefault("status", {})
    for key, value in plan.status_patch.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return body


def run(body, pods=(), now=NOW, train=None):
    return reconcile(Observed(body, list(pods), now, train))


def condition(body_or_status, type_):
    status = body_or_status.get("status", body_or_status)
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def test_new_train_creates_configmap_service_and_gang():
    plan = run(resource(nodes=2))
    kinds = [(m["kind"], m["metadata"]["name"]) for m in plan.creates]
    assert kinds == [("ConfigMap", "run-experiment"), ("Service", "run"), ("Pod", "run-worker-0"), ("Pod", "run-worker-1")]
    assert plan.phase == "Created" and plan.deletes == []
    status = plan.status_patch
    assert status["startTime"] == iso(NOW) and status["observedGeneration"] == 1 and status["restarts"] == 0
    assert condition(status, "Created")["status"] == "True"
    assert status["workers"] == {"active": 2, "succeeded": 0, "failed": 0}
    assert [e.reason for e in plan.events] == ["GangCreated"]


def test_steady_state_is_idempotent_and_keeps_transition_times():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    running = applied(body, run(body, gang()))
    assert running["status"]["phase"] == "Running"
    first_transition = condition(running, "Running")["lastTransitionTime"]
    again = run(running, gang(), now=NOW + timedelta(minutes=5))
    assert again.creates == [] and again.deletes == [] and again.events == [] and again.status_patch == {}
    assert condition(applied(running, again), "Running")["lastTransitionTime"] == first_transition


def test_partial_gang_is_completed_without_touching_existing_pods():
    body = applied(resource(nodes=3), run(resource(nodes=3)))
    plan = run(body, [pod(index=0), pod(index=2, phase="Pending")])
    assert [m["metadata"]["name"] for m in plan.creates if m["kind"] == "Pod"] == ["run-worker-1"]
    assert plan.deletes == []


def test_a_pod_vanishing_from_a_running_gang_restarts_it():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    body = applied(body, run(body, gang()))
    assert body["status"]["phase"] == "Running"
    plan = run(body, [pod(index=0)])  # run-worker-1 was force-deleted with its node
    assert plan.phase == "Restarting" and plan.gang_restarted and plan.creates == []
    assert plan.deletes == [("run-worker-0", False)]
    assert "run-worker-1 of the running gang disappeared" in applied(body, plan)["status"]["message"]


def test_success_records_artifacts_and_completion():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    plan = run(body, gang(phase="Succeeded", exit_code=0))
    assert plan.phase == "Succeeded" and plan.finished == ("Succeeded", "Succeeded")
    assert run(applied(body, plan), gang(phase="Succeeded", exit_code=0)).finished is None  # counted once
    status = applied(body, plan)["status"]
    assert status["completionTime"] == iso(NOW)
    assert status["artifacts"]["latestCheckpoint"] == "/results/train/run/train/mask2former_model_latest.pth"
    assert status["workers"] == {"active": 0, "succeeded": 2, "failed": 0}
    assert plan.deletes == []  # finished pods stay for their logs (cleanPodPolicy Running)


def test_gang_restart_then_recreate_with_next_attempt():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    plan = run(body, [pod(index=0), pod(index=1, phase="Failed", exit_code=1, message="NCCL timeout")])
    assert plan.phase == "Restarting" and plan.gang_restarted and plan.restart_cause == "GangRestart"
    assert sorted(plan.deletes) == [("run-worker-0", False), ("run-worker-1", False)]
    assert plan.creates == []
    restarting = applied(body, plan)
    assert restarting["status"]["restarts"] == 1
    assert "NCCL timeout" in condition(restarting, "Restarting")["message"]
    # Old pods still terminating: wait, do not recreate the same names.
    waiting = run(restarting, gang(deleting_since=timedelta(seconds=-20)))
    assert waiting.creates == [] and waiting.phase == "Restarting" and not waiting.gang_restarted
    # All gone: attempt 1 is created.
    recreate = run(restarting, [])
    pods = [m for m in recreate.creates if m["kind"] == "Pod"]
    assert [p["metadata"]["labels"]["mask2former.io/attempt"] for p in pods] == ["1", "1"]
    assert recreate.status_patch.get("restarts") is None  # unchanged: still 1


def test_failed_pods_of_an_old_attempt_do_not_count_again():
    body = resource(nodes=2, status={"phase": "Restarting", "restarts": 1, "conditions": []})
    plan = run(body, gang(phase="Failed", exit_code=1, attempt=0))
    assert plan.phase == "Restarting" and not plan.gang_restarted and plan.creates == []
    assert "restarts" not in plan.status_patch
    assert sorted(plan.deletes) == [("run-worker-0", False), ("run-worker-1", False)]


def test_permanent_exit_code_fails_at_once_with_the_message():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    plan = run(body, [pod(index=0), pod(index=1, phase="Failed", exit_code=2, message="error: model.mode: 'x'")])
    assert plan.phase == "Failed" and not plan.gang_restarted
    failed = condition(applied(body, plan), "Failed")
    assert failed["reason"] == "PermanentError" and "error: model.mode: 'x'" in failed["message"]
    assert plan.deletes == [("run-worker-0", False)]  # the still-running worker


def test_backoff_limit_is_never_exceeded():
    body = resource(nodes=1, backoffLimit=2)
    for expected_restarts in (1, 2):
        body = applied(body, run(body, [pod(index=0, phase="Failed", exit_code=1, attempt=expected_restarts - 1)]))
        assert body["status"]["restarts"] == expected_restarts and body["status"]["phase"] == "Restarting"
    plan = run(body, [pod(index=0, phase="Failed", exit_code=1, attempt=2)])
    final = applied(body, plan)
    assert final["status"]["phase"] == "Failed" and final["status"]["restarts"] == 2
    assert condition(final, "Failed")["reason"] == "BackoffLimitExceeded"


def test_a_disruption_restarts_without_counting_against_the_backoff_limit():
    body = applied(resource(nodes=2, backoffLimit=0), run(resource(nodes=2, backoffLimit=0)))
    evicted = [pod(index=0), pod(index=1, phase="Failed", exit_code=143,
                                 conditions={"DisruptionTarget": "EvictionByEvictionAPI"})]
    body = applied(body, run(body, evicted))
    assert body["status"]["phase"] == "Restarting"
    assert (body["status"]["restarts"], body["status"]["restartsCountTowardsLimit"]) == (1, 0)
    assert condition(body, "Restarting")["reason"] == "GangRestartIgnoringLimit"
    # The next plain failure is the first counted one: backoffLimit 0 fails the job.
    plan = run(body, [pod(index=0, attempt=1), pod(index=1, attempt=1, phase="Failed", exit_code=1)])
    assert plan.phase == "Failed" and condition(applied(body, plan), "Failed")["reason"] == "BackoffLimitExceeded"


def test_the_gang_shape_is_kept_while_pods_run_and_applied_once_suspended():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    body = applied(body, run(body, gang()))
    assert body["status"]["gangShape"] == {"nodes": 2}
    body["spec"]["nodes"] = 3  # stored by a server without CEL
    plan = run(body, gang())
    edited = applied(body, plan)
    assert plan.creates == [] and plan.phase == "Running"  # no worker-2 beside a WORLD_SIZE-2 gang
    changed = condition(edited, "GangShapeChanged")
    assert changed["status"] == "True" and changed["message"].startswith("spec.nodes changed while the gang runs")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "GangShapeImmutable")]
    assert run(edited, gang()).events == []  # said once
    # A restart while the edit waits keeps the recorded shape too.
    restart = applied(edited, run(edited, [pod(index=0), pod(index=1, phase="Failed", exit_code=1)]))
    recreated = run(restart, [])
    assert [m["metadata"]["name"] for m in recreated.creates if m["kind"] == "Pod"] == ["run-worker-0", "run-worker-1"]
    # Suspended: the edit applies, and resuming starts a gang of three.
    restart["spec"]["suspend"] = True
    suspended = applied(restart, run(restart, []))
    suspended = applied(suspended, run(suspended, []))
    assert suspended["status"]["phase"] == "Suspended" and suspended["status"]["gangShape"] == {"nodes": 3}
    assert condition(suspended, "GangShapeChanged")["status"] == "False"
    suspended["spec"]["suspend"] = False
    resumed = run(suspended, [])
    assert [m["metadata"]["name"] for m in resumed.creates if m["kind"] == "Pod"] == [f"run-worker-{i}" for i in range(3)]


@pytest.mark.parametrize(
    ("policy", "worker1", "expected_phase", "deletes"),
    [
        ("Rank0", "Running", "Succeeded", [("run-worker-1", False)]),  # hung in teardown: deleted
        ("Rank0", "Failed", "Succeeded", []),  # failed after rank 0 finished: the job is done
        ("AllWorkers", "Running", "Running", []),
        ("AllWorkers", "Failed", "Restarting", [("run-worker-0", False), ("run-worker-1", False)]),
    ],
)
def test_success_policy(policy, worker1, expected_phase, deletes):
    body = applied(resource(nodes=2, successPolicy=policy), run(resource(nodes=2, successPolicy=policy)))
    body = applied(body, run(body, gang()))
    pods = [pod(index=0, phase="Succeeded", exit_code=0), pod(index=1, phase=worker1, exit_code=1 if worker1 == "Failed" else None)]
    plan = run(body, pods)
    assert plan.phase == expected_phase
    assert sorted(plan.deletes) == deletes


def test_stuck_terminating_pod_restarts_the_gang_with_force():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    plan = run(body, [pod(index=0), pod(index=1, deleting_since=timedelta(minutes=3))])
    assert plan.phase == "Restarting"
    assert sorted(plan.deletes) == [("run-worker-0", False), ("run-worker-1", True)]


def test_suspend_and_resume():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    body = applied(body, run(body, gang()))
    body["spec"]["suspend"] = True
    plan = run(body, gang())
    assert plan.phase == "Suspended" and sorted(plan.deletes) == [("run-worker-0", False), ("run-worker-1", False)]
    suspended = applied(body, plan)
    assert run(suspended, []).creates == []
    suspended["spec"]["suspend"] = False
    resumed = run(suspended, [], now=NOW + timedelta(hours=1))
    assert [m["metadata"]["name"] for m in resumed.creates if m["kind"] == "Pod"] == ["run-worker-0", "run-worker-1"]
    assert resumed.status_patch["startTime"] == iso(NOW + timedelta(hours=1))
    assert condition(applied(suspended, resumed), "Suspended")["status"] == "False"


def test_active_deadline_fails_and_deletes_running_pods():
    body = applied(resource(nodes=1, activeDeadlineSeconds=60), run(resource(nodes=1, activeDeadlineSeconds=60)))
    plan = run(body, [pod(index=0)], now=NOW + timedelta(seconds=61))
    assert plan.phase == "Failed" and condition(applied(body, plan), "Failed")["reason"] == "DeadlineExceeded"
    assert plan.deletes == [("run-worker-0", False)]


@pytest.mark.parametrize(("ttl", "after", "deleted"), [(30, 10, False), (30, 31, True), (None, 10_000, False)])
def test_ttl_after_finished(ttl, after, deleted):
    spec = {} if ttl is None else {"ttlSecondsAfterFinished": ttl}
    body = resource(status={"phase": "Succeeded", "completionTime": iso(NOW), "conditions": []}, **spec)
    assert run(body, [], now=NOW + timedelta(seconds=after)).delete_resource is deleted


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"experiment": {"model": {"mode": "bogus"}}}, "spec.experiment: model.mode"),
        ({"nodes": 0}, "spec.nodes"),
        ({"cleanPodPolicy": "Sometimes"}, "spec.cleanPodPolicy"),
        ({"retryableExitCodes": [2]}, "spec.retryableExitCodes"),
        ({"nodes": 2, "experiment": {"train": {"num_nodes": 3}}}, "spec.experiment.train.num_nodes"),
        ({"gpusPerNode": 8, "experiment": {"train": {"num_gpus": 4}}}, "spec.experiment.train.num_gpus"),
        ({"successPolicy": "AnyWorker"}, "spec.successPolicy"),
        ({"failurePolicy": {"rules": "FailJob"}}, "spec.failurePolicy"),
        ({"failurePolicy": {"rules": [{"action": "Ignore"}]}}, "spec.failurePolicy.rules[0].action"),
        ({"failurePolicy": {"rules": [{"action": "FailJob"}, {"action": "FailJob", "onExitCodes": {"values": []}}]}},
         "spec.failurePolicy.rules[1].onExitCodes.values"),
        ({"failurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "Gt", "values": [1]}}]}},
         "spec.failurePolicy.rules[0].onExitCodes.operator"),
        ({"failurePolicy": {"rules": [{"action": "FailJob", "onReasons": ["OOMKilled"]}]}},
         "spec.failurePolicy.rules[0].onReasons"),
        ({"failurePolicy": {"rules": [{"action": "FailJob", "onExitCode": {"values": [1]}}]}},
         "spec.failurePolicy.rules[0]: unknown field(s) onExitCode"),
    ],
)
def test_invalid_spec_names_the_field_and_creates_nothing(spec, field):
    plan = run(resource(**spec))
    assert plan.creates == [] and plan.phase == "InvalidSpec"
    assert plan.invalid_spec.startswith(field)
    assert condition(plan.status_patch, "InvalidSpec")["message"].startswith(field)
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidSpec")]


def test_invalid_name():
    plan = run(resource(name="9-starts-with-digit"))
    assert plan.invalid_spec.startswith("metadata.name")


def test_evaluate_metrics_from_the_termination_message():
    body = resource("Mask2FormerEvaluate")
    body = applied(body, run(body))
    summary = json.dumps({"metrics": {"PQ": 41.5, "AP": 30.1, "mIoU": 52.0},
                          "artifacts": {"metrics_file": "/results/evaluate/run/evaluate/metrics.json"}})
    plan = run(body, [pod(index=0, phase="Succeeded", exit_code=0, message=summary)])
    status = applied(body, plan)["status"]
    assert status["phase"] == "Succeeded" and status["metrics"] == {"PQ": 41.5, "AP": 30.1, "mIoU": 52.0}
    assert status["artifacts"]["metricsFile"] == "/results/evaluate/run/evaluate/metrics.json"


def test_export_waits_for_train_then_onnx_then_engine():
    body = resource("Mask2FormerExport", name="exp", trainRef="run", tensorRT={"enabled": True, "precision": "fp16"})
    plan = run(body)
    assert plan.phase == "WaitingForTrain" and plan.creates == []
    train = resource(status={"phase": "Running"})
    body = applied(body, plan)
    assert run(body, train=train).phase == "WaitingForTrain"
    train["status"] = {"phase": "Succeeded", "artifacts": {"latestCheckpoint": "/results/train/run/train/latest.pth"}}
    plan = run(body, train=train)
    (onnx,) = [m for m in plan.creates if m["kind"] == "Pod"]
    assert onnx["metadata"]["name"] == "exp-onnx-0"
    assert "export.checkpoint=/results/train/run/train/latest.pth" in onnx["spec"]["containers"][0]["command"]
    body = applied(body, plan)
    assert condition(body, "WaitingForTrain")["status"] == "False"
    plan = run(body, [pod("exp", 0, "Succeeded", role="onnx", exit_code=0)], train=train)
    (trt,) = [m for m in plan.creates if m["kind"] == "Pod"]
    assert trt["metadata"]["name"] == "exp-trt-0"
    body = applied(body, plan)
    assert condition(body, "OnnxExported")["status"] == "True"
    assert body["status"]["artifacts"]["onnxFile"] == "/results/export/exp/model.onnx"
    plan = run(body, [pod("exp", 0, "Succeeded", role="onnx", exit_code=0),
                      pod("exp", 0, "Succeeded", role="trt", exit_code=0)], train=train)
    done = applied(body, plan)
    assert done["status"]["phase"] == "Succeeded" and condition(done, "EngineBuilt")["status"] == "True"
    assert done["status"]["artifacts"]["engineFile"] == "/results/export/exp/model.engine"


def test_export_fails_when_its_train_failed():
    body = resource("Mask2FormerExport", name="exp", trainRef="run")
    plan = run(body, train=resource(status={"phase": "Failed"}))
    assert plan.phase == "Failed" and condition(plan.status_patch, "Failed")["reason"] == "TrainFailed"


def test_fixing_an_operator_field_leaves_invalid_spec():
    body = applied(resource(nodes=0), run(resource(nodes=0)))
    assert body["status"]["phase"] == "InvalidSpec"
    body["spec"]["nodes"] = 2
    body["metadata"]["generation"] = 2
    plan = run(body)
    fixed = applied(body, plan)
    assert plan.phase == "Created" and len([m for m in plan.creates if m["kind"] == "Pod"]) == 2
    assert condition(fixed, "InvalidSpec")["status"] == "False" and fixed["status"]["observedGeneration"] == 2
    assert "SpecFixed" in [e.reason for e in plan.events]


def test_events_of_a_plan_are_valid_kubernetes_events():
    import kubernetes_validate

    from m2f_operator.client import build_event

    plan = run(resource(nodes=1))
    for event in plan.events:
        manifest = build_event(resource(nodes=1), event, NOW)
        kubernetes_validate.validate(manifest, "1.30", strict=True)
        assert manifest["involvedObject"]["kind"] == "Mask2FormerTrain" and manifest["type"] == "Normal"


def test_the_trainers_termination_summary_lands_in_status(tmp_path, monkeypatch):
    """The contract end to end: `m2f evaluate` writes the summary, the operator reads the message."""
    from m2f_trainer.tasks.termination import write_termination_summary

    message_file = tmp_path / "termination-log"
    monkeypatch.setenv("M2F_TERMINATION_MESSAGE_PATH", str(message_file))
    metrics = {"mode": "panoptic", "PQ": 41.25, "SQ": 80.0, "RQ": 50.5, "PQ_th": float("nan"),
               "per_class": {str(i): {"name": f"class-{i}", "PQ": 1.0} for i in range(133)}}
    write_termination_summary(metrics, {"metrics_file": "/results/evaluate/ev/evaluate/metrics.json"})
    assert len(message_file.read_bytes()) < 4096
    body = resource("Mask2FormerEvaluate", name="ev")
    body = applied(body, run(body))
    plan = run(body, [pod("ev", 0, "Succeeded", exit_code=0, message=message_file.read_text())])
    status = applied(body, plan)["status"]
    assert status["metrics"] == {"PQ": 41.25, "SQ": 80.0, "RQ": 50.5}
    assert status["artifacts"]["metricsFile"] == "/results/evaluate/ev/evaluate/metrics.json"


def _unschedulable(body: dict, message: str) -> dict:
    body["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": message}]
    return body


def test_the_schedulers_message_is_a_condition_while_a_pod_cannot_be_placed():
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    train = applied(resource(nodes=2), run(resource(nodes=2)))
    pods = [_unschedulable(pod(index=0, phase="Pending"), message), pod(index=1, phase="Pending")]
    plan = run(train, pods)
    scheduled = condition(plan.status_patch, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert scheduled["message"] == f"pod run-worker-0: {message}"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Unschedulable")]
    waiting = applied(train, plan)
    assert run(waiting, pods).events == []  # the same message again: no new Event
    placed = run(waiting, gang(phase="Running"))
    assert condition(applied(waiting, placed), "Scheduled")["status"] == "True"
    assert placed.phase == "Running"


def test_an_experiment_edit_that_a_server_without_cel_stored_never_stops_the_job():
    """1.20 stores an edit of the immutable experiment; even an invalid one must not turn a running job
    InvalidSpec (its pods run the original experiment from the ConfigMap): ExperimentChanged, nothing else."""
    created = run(resource(nodes=2))
    running = applied(resource(nodes=2), created)
    running = applied(running, run(running, gang(phase="Running")))
    assert running["status"]["phase"] == "Running" and running["status"]["experimentDigest"]
    edited = copy.deepcopy(running)
    edited["spec"]["experiment"]["model"]["mode"] = "bogus"  # the trainer would reject it
    plan = run(edited, gang(phase="Running"))
    assert plan.phase == "Running" and plan.deletes == [] and plan.invalid_spec is None
    changed = condition(applied(edited, plan), "ExperimentChanged")
    assert changed["status"] == "True" and [e.reason for e in plan.events] == ["ExperimentImmutable"]


def _started_gang(timeout: int | None = 60, **spec) -> dict:
    scheduling = {} if timeout is None else {"scheduling": {"startupTimeoutSeconds": timeout}}
    body = resource(nodes=2, **scheduling, **spec)
    return applied(body, run(body))


def test_a_gang_not_running_within_its_startup_timeout_is_deleted_and_retried_after_a_backoff():
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    pods = [pod(index=0), _unschedulable(pod(index=1, phase="Pending"), message)]
    body = applied(_started_gang(), run(_started_gang(), pods))
    assert body["status"]["startupStartTime"] == iso(NOW)
    assert run(body, pods, now=NOW + timedelta(seconds=59)).deletes == []
    plan = run(body, pods, now=NOW + timedelta(seconds=60))
    timed_out = applied(body, plan)
    status = timed_out["status"]
    assert plan.phase == "Restarting" and sorted(plan.deletes) == [("run-worker-0", False), ("run-worker-1", False)]
    assert condition(timed_out, "Restarting")["reason"] == "StartupTimeout"
    assert condition(timed_out, "Restarting")["message"].startswith(
        f"1/2 worker pod(s) running after startupTimeoutSeconds 60: pod run-worker-1: {message}")
    assert (status["restarts"], status.get("restartsCountTowardsLimit", 0), status["startupRetries"]) == (1, 0, 1)
    assert ("Warning", "StartupTimeout") in [(e.type, e.reason) for e in plan.events]
    # The next gang waits for the jittered backoff (7.5 to 22.5 s after the first timeout), then starts.
    next_at = datetime.fromisoformat(status["nextAttemptTime"].replace("Z", "+00:00"))
    assert timedelta(seconds=67) <= next_at - NOW <= timedelta(seconds=83)
    assert run(timed_out, [], now=next_at - timedelta(seconds=1)).creates == []
    recreated = run(timed_out, [], now=next_at)
    assert [p["metadata"]["labels"]["mask2former.io/attempt"] for p in recreated.creates if p["kind"] == "Pod"] == ["1", "1"]
    assert "nextAttemptTime" not in applied(timed_out, recreated)["status"]


@pytest.mark.parametrize(
    ("spec", "nodes", "times_out"),
    [
        ({}, 2, True),  # default: 900 s for a gang of several pods without a gang scheduler
        ({}, 1, False),  # one pod cannot deadlock
        ({"scheduling": {"startupTimeoutSeconds": 0}}, 2, False),  # disabled
        ({"scheduling": {"gang": "coscheduling"}}, 2, False),  # the gang scheduler places all or nothing
        ({"scheduling": {"gang": "coscheduling", "startupTimeoutSeconds": 900}}, 2, True),
    ],
)
def test_startup_timeout_defaults(spec, nodes, times_out):
    body = applied(resource(nodes=nodes, **spec), run(resource(nodes=nodes, **spec)))
    pods = [pod(index=i, phase="Pending") for i in range(nodes)]
    body = applied(body, run(body, pods))
    assert (run(body, pods, now=NOW + timedelta(seconds=900)).phase == "Restarting") is times_out


def test_a_container_that_cannot_start_is_a_condition_with_the_kubelets_reason():
    body = _started_gang(timeout=None)
    pods = [pod(index=0), pod(index=1, phase="Pending", waiting=("ImagePullBackOff", 'Back-off pulling image "nope"'))]
    plan = run(body, pods)
    started = condition(plan.status_patch, "Started")
    assert (started["status"], started["reason"]) == ("False", "ImagePullBackOff")
    assert started["message"] == 'pod run-worker-1: ImagePullBackOff: Back-off pulling image "nope"'
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ImagePullBackOff")]
    assert run(applied(body, plan), pods).events == []  # while it lasts: no new Event
    flipped = [pod(index=0), pod(index=1, phase="Pending", waiting=("ErrImagePull", "rpc error: not found"))]
    assert run(applied(body, plan), flipped).events == []  # the kubelet's other name for the same cause
    pulled = run(applied(body, plan), [pod(index=0), pod(index=1, phase="Pending")])
    assert condition(applied(body, pulled), "Started")["status"] == "True"  # no longer blocked
    running = run(applied(body, plan), gang())
    assert condition(applied(body, running), "Started")["status"] == "True" and running.phase == "Running"


def test_gated_pods_are_queued_and_queue_time_is_not_startup_time():
    body = _started_gang(timeout=60)
    gated = [pod(index=i, phase="Pending", gated=True) for i in range(2)]
    plan = run(body, gated, now=NOW + timedelta(seconds=3600))
    queued = applied(body, plan)
    assert plan.phase == "Queued" and condition(queued, "Queued")["reason"] == "WaitingForAdmission"
    assert "startupStartTime" not in queued["status"]
    admitted_at = NOW + timedelta(seconds=3700)
    admitted = applied(queued, run(queued, [pod(index=i, phase="Pending") for i in range(2)], now=admitted_at))
    assert admitted["status"]["phase"] == "Created" and condition(admitted, "Queued")["status"] == "False"
    assert admitted["status"]["startupStartTime"] == iso(admitted_at)


def test_the_time_from_creation_to_all_running_is_measured_once():
    body = applied(resource(nodes=2), run(resource(nodes=2)))
    plan = run(body, gang(created_ago=timedelta(seconds=42)))
    assert plan.phase == "Running" and plan.startup_seconds == 42.0
    assert run(applied(body, plan), gang(created_ago=timedelta(seconds=50))).startup_seconds is None


def test_a_worker_that_finishes_first_is_not_a_gang_that_failed_to_start():
    body = _started_gang(timeout=60)
    body = applied(body, run(body, gang()))
    assert body["status"]["phase"] == "Running" and "startupStartTime" not in body["status"]
    finishing = [pod(index=0, phase="Succeeded", exit_code=0), pod(index=1)]
    plan = run(body, finishing, now=NOW + timedelta(hours=1))
    assert plan.phase == "Running" and plan.deletes == [] and "startupStartTime" not in applied(body, plan)["status"]
    done = applied(body, run(body, gang(phase="Succeeded", exit_code=0)))
    assert done["status"]["phase"] == "Succeeded"
    assert not {"startupStartTime", "startupRetries", "nextAttemptTime"} & set(done["status"])


def test_the_final_validation_replaces_a_stale_progress_value():
    body = applied(resource(nodes=1), run(resource(nodes=1)))
    body["status"].update(phase="Running", progress={"epoch": 2, "totalEpochs": 3,
                                                     "lastMetric": {"name": "PQ", "value": 0.009}})
    done = pod(index=0, phase="Succeeded", exit_code=0, message=json.dumps({"metrics": {"PQ": 0.23576717723}}))
    status = applied(body, run(body, [done]))["status"]
    assert status["metrics"] == {"PQ": 0.235767} and status["progress"]["lastMetric"] == {"name": "PQ", "value": 0.2358}
    assert status["progress"]["epoch"] == 3
