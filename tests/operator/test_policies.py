"""Table tests: each policy is a pure function of (spec/status, observed pods, now)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from reconcile_factories import NOW, gang, iso, pod

from m2f_operator.builders.pods import Stage
from m2f_operator.policies import (
    deadline_remaining,
    decide_failure,
    decide_suspend,
    pods_to_clean,
    stage_succeeded,
    ttl_remaining,
    views,
)

STAGE = Stage("worker", "train", 2, 1, "img")


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        (gang(phase="Succeeded"), True),
        ([pod(index=0, phase="Succeeded")], False),  # worker 1 missing
        ([pod(index=0, phase="Succeeded"), pod(index=1, phase="Running")], False),
        ([pod(index=0, phase="Succeeded"), pod(index=1, phase="Failed", exit_code=1)], False),
        ([pod(index=0, phase="Succeeded", role="onnx"), pod(index=1, phase="Succeeded", role="onnx")], False),
        ([], False),
    ],
)
def test_success(pods, expected):
    assert stage_succeeded(STAGE, views(pods)) is expected


DISRUPTED = {"conditions": {"DisruptionTarget": "EvictionByEvictionAPI"}}
OOM_RULE = {"failurePolicy": {"rules": [{"name": "oom", "action": "FailJob", "onExitCodes": {"values": [137]}}]}}


@pytest.mark.parametrize(
    ("spec", "restarts", "pods", "expected"),
    [
        ({}, 0, gang(), None),
        ({}, 0, gang(phase="Pending"), None),
        # Default rules: anything -> RestartGang, counted against backoffLimit.
        ({}, 0, [pod(index=0), pod(index=1, phase="Failed", exit_code=1)], ("restart", "GangRestart", True)),
        ({}, 0, [pod(index=0), pod(index=1, phase="Failed", exit_code=137)], ("restart", "GangRestart", True)),
        ({"backoffLimit": 2}, 1, [pod(index=0, phase="Failed", exit_code=1)], ("restart", "GangRestart", True)),
        ({"backoffLimit": 2}, 2, [pod(index=0, phase="Failed", exit_code=1)], ("fail", "BackoffLimitExceeded", True)),
        ({"backoffLimit": 0}, 0, [pod(index=0, phase="Failed", exit_code=1)], ("fail", "BackoffLimitExceeded", True)),
        # Exit 2 and permanentExitCodes -> FailJob.
        ({}, 0, [pod(index=0), pod(index=1, phase="Failed", exit_code=2, message="error: bad")],
         ("fail", "PermanentError", True)),
        ({"permanentExitCodes": [42]}, 0, [pod(index=0, phase="Failed", exit_code=42)], ("fail", "PermanentError", True)),
        # retryableExitCodes: any other code fails the job...
        ({"retryableExitCodes": [137, 143]}, 0, [pod(index=0, phase="Failed", exit_code=1)],
         ("fail", "PermanentError", True)),
        ({"retryableExitCodes": [137, 143]}, 0, [pod(index=0, phase="Failed", exit_code=143)],
         ("restart", "GangRestart", True)),
        # ...but a drain's SIGTERM (143, the pod deleted by someone else) is a disruption even without 143 listed.
        ({"retryableExitCodes": [137]}, 0,
         [pod(index=0, phase="Failed", exit_code=143, deleting_since=timedelta(seconds=-20))],
         ("restart", "GangRestartIgnoringLimit", False)),
        # Disruptions -> RestartGangIgnoringLimit, even with backoffLimit reached.
        ({"backoffLimit": 0}, 0, [pod(index=0), pod(index=1, phase="Failed", reason="Evicted", message="low memory")],
         ("restart", "GangRestartIgnoringLimit", False)),
        ({"backoffLimit": 0}, 0, [pod(index=0, phase="Failed", exit_code=143, **DISRUPTED)],
         ("restart", "GangRestartIgnoringLimit", False)),
        ({}, 0, [pod(index=0, phase="Failed", exit_code=137, conditions={"DisruptionTarget": "PreemptionByScheduler"})],
         ("restart", "GangRestartIgnoringLimit", False)),
        ({}, 0, [pod(index=0, phase="Failed", reason="Shutdown")], ("restart", "GangRestartIgnoringLimit", False)),
        # Terminating within its grace: wait for it; past grace + margin: the node is lost (a disruption).
        ({}, 0, [pod(index=0), pod(index=1, deleting_since=timedelta(seconds=5))], None),
        ({"backoffLimit": 0}, 0, [pod(index=0), pod(index=1, deleting_since=timedelta(minutes=5))],
         ("restart", "GangRestartIgnoringLimit", False)),
        ({}, 0, [pod(index=0, phase="Succeeded", deleting_since=timedelta(minutes=5))], None),
        # User rules come first (after exit 2) and can turn any of the defaults around.
        (OOM_RULE, 0, [pod(index=0, phase="Failed", exit_code=137)], ("fail", "PermanentError", True)),
        (OOM_RULE, 0, [pod(index=0, phase="Failed", exit_code=1)], ("restart", "GangRestart", True)),
        ({"failurePolicy": {"rules": [{"action": "RestartGang", "onReasons": ["Preempted"]}]}, "backoffLimit": 0}, 0,
         [pod(index=0, phase="Failed", reason="Preempted")], ("fail", "BackoffLimitExceeded", True)),
        ({"failurePolicy": {"rules": [{"action": "FailJob", "onPodConditions": ["DisruptionTarget"]}]}}, 0,
         [pod(index=0, phase="Failed", exit_code=143, **DISRUPTED)], ("fail", "PermanentError", True)),
        ({"failurePolicy": {"rules": [{"action": "RestartGangIgnoringLimit",
                                       "onExitCodes": {"operator": "NotIn", "values": [1]}}]}, "backoffLimit": 0}, 0,
         [pod(index=0, phase="Failed", exit_code=75)], ("restart", "GangRestartIgnoringLimit", False)),
        ({"failurePolicy": {"rules": [{"action": "RestartGangIgnoringLimit", "onExitCodes": {"values": [2]}}]}}, 0,
         [pod(index=0, phase="Failed", exit_code=2)], ("fail", "PermanentError", True)),  # exit 2 always fails
        # A rule with exit codes and reasons needs both.
        ({"failurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"values": [137]},
                                       "onReasons": ["Evicted"]}]}}, 0,
         [pod(index=0, phase="Failed", exit_code=137)], ("restart", "GangRestart", True)),
    ],
)
def test_failure_rules(spec, restarts, pods, expected):
    decision = decide_failure(spec, restarts, views(pods), NOW)
    assert (decision and (decision.action, decision.reason, decision.counted)) == expected


def test_the_cause_decides_unless_a_peer_is_fatal():
    # A drained worker 0 (SIGTERM: 143) is the cause; worker 1 then lost its rendezvous peer (exit 1). The
    # restart is the disruption's: not counted against backoffLimit.
    drained = [pod(index=0, phase="Failed", exit_code=143, finished_ago=timedelta(seconds=9), **DISRUPTED),
               pod(index=1, phase="Failed", exit_code=1, finished_ago=timedelta(seconds=5))]
    decision = decide_failure({"backoffLimit": 0}, 0, views(drained), NOW)
    assert (decision.reason, decision.counted) == ("GangRestartIgnoringLimit", False)
    assert decision.message.startswith("pod run-worker-0 was disrupted (EvictionByEvictionAPI) and exited with code 143")
    # Swapped order: worker 1's plain failure came first, so the restart counts.
    drained[1]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = iso(NOW - timedelta(seconds=20))
    assert decide_failure({"backoffLimit": 1}, 0, views(drained), NOW).reason == "GangRestart"
    fatal_peer = [pod(index=0, phase="Failed", exit_code=137, finished_ago=timedelta(seconds=9), **DISRUPTED),
                  pod(index=1, phase="Failed", exit_code=2, message="error: x", finished_ago=timedelta(seconds=5))]
    decision = decide_failure({}, 0, views(fatal_peer), NOW)
    assert (decision.action, decision.message) == ("fail", "pod run-worker-1 exited with code 2: error: x")


def test_a_named_rule_is_named_in_the_message():
    decision = decide_failure(OOM_RULE, 0, views([pod(index=0, phase="Failed", exit_code=137)]), NOW)
    assert decision.message == "pod run-worker-0 exited with code 137 (rule oom)"


def test_a_vanished_pod_of_a_running_gang_restarts_it_without_counting():
    decision = decide_failure({"backoffLimit": 0}, 0, views([pod(index=0)]), NOW, vanished=("run-worker-1",))
    assert (decision.action, decision.reason, decision.counted) == ("restart", "GangRestartIgnoringLimit", False)
    assert decision.message.startswith("pod run-worker-1 of the running gang disappeared")


def test_failure_message_carries_termination_message_and_forces_lost_pods():
    pods = [pod(index=0, phase="Failed", exit_code=2, message="error: dataset.train.panoptic_json: not found"),
            pod(index=1, deleting_since=timedelta(minutes=10))]
    decision = decide_failure({}, 0, views(pods), NOW)
    assert decision.action == "fail"
    assert "exited with code 2: error: dataset.train.panoptic_json: not found" in decision.message
    assert decision.force_delete == {"run-worker-1"}


@pytest.mark.parametrize(
    ("finished_ago", "cause"),
    [
        ((5, 9), "run-worker-1"),  # worker 1 failed first, worker 0 lost its peer later
        ((9, 5), "run-worker-0"),
        ((7, 7), "run-worker-0"),  # the same second: the lower index
        ((None, 7), "run-worker-1"),  # a pod without a finish time (evicted) comes after those with one
    ],
)
def test_the_cause_is_the_first_pod_to_fail(finished_ago, cause):
    pods = [pod(index=i, phase="Failed", exit_code=1, finished_ago=None if ago is None else timedelta(seconds=ago))
            for i, ago in enumerate(finished_ago)]
    decision = decide_failure({}, 0, views(pods), NOW)
    assert decision.message.startswith(f"pod {cause} exited with code 1"), decision.message


@pytest.mark.parametrize(
    ("suspend", "phase", "expected"),
    [(True, "Running", "suspend"), (True, "Suspended", None), (False, "Suspended", "resume"),
     (False, "Running", None), (None, "Pending", None)],
)
def test_suspend(suspend, phase, expected):
    assert decide_suspend({"suspend": suspend}, phase) == expected


@pytest.mark.parametrize(
    ("deadline", "started_ago", "expected"),
    [(None, 100, None), (60, None, None), (60, 10, 50.0), (60, 60, 0.0), (60, 100, -40.0)],
)
def test_deadline(deadline, started_ago, expected):
    spec = {} if deadline is None else {"activeDeadlineSeconds": deadline}
    start = None if started_ago is None else iso(NOW - timedelta(seconds=started_ago))
    assert deadline_remaining(spec, start, NOW) == expected


@pytest.mark.parametrize(
    ("ttl", "finished_ago", "expected"),
    [(None, 100, None), (30, None, None), (30, 10, 20.0), (0, 0, 0.0), (30, 100, -70.0)],
)
def test_ttl(ttl, finished_ago, expected):
    spec = {} if ttl is None else {"ttlSecondsAfterFinished": ttl}
    finished = None if finished_ago is None else iso(NOW - timedelta(seconds=finished_ago))
    assert ttl_remaining(spec, finished, NOW) == expected


MIXED = [pod(index=0, phase="Succeeded"), pod(index=1, phase="Running"), pod(index=2, phase="Failed", exit_code=1),
         pod(index=3, phase="Running", deleting_since=timedelta(seconds=1))]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, ["run-worker-1"]),
        ("Running", ["run-worker-1"]),
        ("All", ["run-worker-0", "run-worker-1", "run-worker-2"]),
        ("None", []),
    ],
)
def test_cleanup(policy, expected):
    spec = {} if policy is None else {"cleanPodPolicy": policy}
    assert pods_to_clean(spec, views(MIXED)) == expected


def test_startup_retry_delay_is_exponential_capped_and_jittered_per_resource():
    from m2f_operator.policies.startup import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS, retry_delay

    for retries in range(8):
        nominal = min(BACKOFF_BASE_SECONDS * 2**retries, BACKOFF_CAP_SECONDS)
        assert 0.5 * nominal <= retry_delay("uid-a", retries) < 1.5 * nominal
    assert retry_delay("uid-a", 0) == retry_delay("uid-a", 0)  # a pure function of its inputs
    assert len({round(retry_delay(f"uid-{i}", 0), 3) for i in range(20)}) == 20  # jobs retry apart


def _with_sidecar(trainer_state: dict, phase: str = "Running") -> dict:
    body = pod(index=0, phase=phase)
    body["status"]["containerStatuses"] = [  # the kubelet sorts by name: the sidecar comes first
        {"name": "envoy", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "m2f", "state": trainer_state},
    ]
    return body


def test_the_trainers_container_decides_even_behind_a_sidecar():
    failed = views([_with_sidecar({"terminated": {"exitCode": 2, "message": "error: bad spec"}}, phase="Failed")])
    assert (failed[0].exit_code, failed[0].message) == (2, "error: bad spec")
    assert decide_failure({}, 0, failed, NOW).action == "fail"
    running = views([_with_sidecar({"running": {}})])
    assert running[0].exit_code is None and running[0].phase == "Running"


def test_a_trainer_that_ended_while_a_sidecar_runs_on_is_its_outcome_and_is_cleaned_up():
    (done,) = views([_with_sidecar({"terminated": {"exitCode": 0}})])
    assert done.phase == "Succeeded" and done.lingering
    assert pods_to_clean({}, [done]) == ["run-worker-0"]  # it still holds the node's resources
    assert pods_to_clean({"cleanPodPolicy": "None"}, [done]) == []


def test_a_pod_held_by_a_scheduling_gate_is_not_unschedulable():
    gated = pod(index=0, phase="Pending", gated=True)
    gated["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]
    (view,) = views([gated])
    assert view.gated and view.unschedulable == ""
