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


@pytest.mark.parametrize(
    ("spec", "restarts", "pods", "expected"),
    [
        ({}, 0, gang(), None),
        ({}, 0, gang(phase="Pending"), None),
        ({}, 0, [pod(index=0), pod(index=1, phase="Failed", exit_code=1)], ("restart", "GangRestart")),
        ({}, 0, [pod(index=0), pod(index=1, phase="Failed", exit_code=137)], ("restart", "GangRestart")),
        ({}, 0, [pod(index=0), pod(index=1, phase="Failed", reason="Evicted", message="low memory")],
         ("restart", "GangRestart")),
        ({}, 0, [pod(index=0), pod(index=1, phase="Failed", exit_code=2, message="error: bad")], ("fail", "PermanentError")),
        ({"permanentExitCodes": [42]}, 0, [pod(index=0, phase="Failed", exit_code=42)], ("fail", "PermanentError")),
        ({"retryableExitCodes": [137, 143]}, 0, [pod(index=0, phase="Failed", exit_code=1)], ("fail", "PermanentError")),
        ({"retryableExitCodes": [137, 143]}, 0, [pod(index=0, phase="Failed", exit_code=143)], ("restart", "GangRestart")),
        ({"backoffLimit": 2}, 1, [pod(index=0, phase="Failed", exit_code=1)], ("restart", "GangRestart")),
        ({"backoffLimit": 2}, 2, [pod(index=0, phase="Failed", exit_code=1)], ("fail", "BackoffLimitExceeded")),
        ({"backoffLimit": 0}, 0, [pod(index=0, phase="Failed", exit_code=1)], ("fail", "BackoffLimitExceeded")),
        # Terminating within its grace: wait for it; past grace + margin: the node is lost.
        ({}, 0, [pod(index=0), pod(index=1, deleting_since=timedelta(seconds=5))], None),
        ({}, 0, [pod(index=0), pod(index=1, deleting_since=timedelta(minutes=5))], ("restart", "GangRestart")),
        ({}, 0, [pod(index=0, phase="Succeeded", deleting_since=timedelta(minutes=5))], None),
    ],
)
def test_failure(spec, restarts, pods, expected):
    decision = decide_failure(spec, restarts, views(pods), NOW)
    assert (decision and (decision.action, decision.reason)) == expected


@pytest.mark.parametrize(
    ("spec", "restarts", "expected"),
    [({}, 0, ("restart", "GangRestart")), ({"backoffLimit": 1}, 1, ("fail", "BackoffLimitExceeded"))],
)
def test_a_vanished_pod_of_a_running_gang_is_a_failure(spec, restarts, expected):
    decision = decide_failure(spec, restarts, views([pod(index=0, attempt=restarts)]), NOW, vanished=("run-worker-1",))
    assert (decision.action, decision.reason) == expected
    assert "run-worker-1 of the running gang disappeared" in decision.message


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
