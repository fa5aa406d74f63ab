"""Children a resource cannot create: reserved names refused up front, and a refused or foreign create shown in
status (phase, condition, one Warning Event) with the retry the cause allows. Table-driven, pure."""

from __future__ import annotations

import json

import pytest
from reconcile_factories import NOW, resource

from m2f_operator.builders import build_gang, build_stages
from m2f_operator.policies import creation
from m2f_operator.reconcile import Observed, blocked_creation
from m2f_operator.validation import spec_error

DATASETS = {"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets"}}


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"volumes": [DATASETS, {"name": "dshm", "emptyDir": {}}]}, "spec.volumes[1].name: 'dshm' is reserved"),
        ({"volumes": [{"name": "experiment", "emptyDir": {}}]}, "spec.volumes[0].name: 'experiment' is reserved"),
        ({"volumes": [DATASETS, DATASETS]}, "spec.volumes[1].name: 'datasets' is used by another volume"),
        ({"volumeMounts": [{"name": "datasets", "mountPath": "/dev/shm/"}]},
         "spec.volumeMounts[0].mountPath: '/dev/shm' is reserved"),
        ({"volumeMounts": [{"name": "x", "mountPath": "/etc/m2f"}]}, "spec.volumeMounts[0].mountPath: '/etc/m2f'"),
        ({"podLabels": {"mask2former.io/job-name": "other"}}, "spec.podLabels: 'mask2former.io/job-name' is reserved"),
        ({"podLabels": {"mask2former.io/attempt": "9"}}, "spec.podLabels: 'mask2former.io/attempt' is reserved"),
        ({"podLabels": {"app.kubernetes.io/managed-by": "me"}}, "spec.podLabels: 'app.kubernetes.io/managed-by'"),
    ],
)
def test_names_the_operator_owns_are_an_invalid_spec(spec, error):
    assert (spec_error(resource(**spec)) or "").startswith(error), spec_error(resource(**spec))


def test_user_volumes_mounts_and_labels_that_do_not_collide_are_valid():
    body = resource(volumes=[DATASETS], volumeMounts=[{"name": "datasets", "mountPath": "/datasets"}],
                    podLabels={"team": "vision", "mask2former.io/team": "vision"})  # only the owned keys are refused
    assert spec_error(body) is None
    (stage,) = build_stages(body)
    labels = build_gang(body, stage, 0)[0]["metadata"]["labels"]
    assert labels["team"] == "vision" and labels["mask2former.io/job-name"] == "run"


def _status_body(code: int, message: str) -> bytes:
    return json.dumps({"kind": "Status", "code": code, "message": message}).encode()


@pytest.mark.parametrize(
    ("status", "message", "retry"),
    [
        (422, 'Pod "run-worker-0" is invalid: spec.volumes[3].name: Duplicate value: "dshm"', False),
        (400, "bad request", False),
        (403, "error looking up service account ml/mask2former-worker: serviceaccount not found", True),
        (403, 'pods "run-worker-1" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=8', True),
    ],
)
def test_a_refused_create_is_failed_create_with_the_apis_message(status, message, retry):
    blocked = creation.refused("Pod", "run-worker-0", status, _status_body(status, message))
    assert (blocked.reason, blocked.retry) == ("FailedCreate", retry)
    assert blocked.message == f"Pod run-worker-0 was rejected: {status}: {message}"
    plan = blocked_creation(Observed(resource(status={"phase": "Pending"}), [], NOW), blocked)
    assert plan.phase == "FailedCreate" and plan.status_patch["message"] == blocked.message
    created = next(c for c in plan.status_patch["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"], created["message"]) == ("False", "FailedCreate", blocked.message)
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "FailedCreate")]


def test_the_same_refusal_again_writes_nothing_new():
    blocked = creation.refused("Pod", "run-worker-0", 403, _status_body(403, "quota"))
    first = blocked_creation(Observed(resource(status={"phase": "Pending"}), [], NOW), blocked)
    status = {"phase": "Pending", **first.status_patch}
    again = blocked_creation(Observed(resource(status=status), [], NOW), blocked)
    assert again.events == [] and again.status_patch == {}


@pytest.mark.parametrize(
    ("owner", "says"),
    [
        ({"kind": "Mask2FormerTrain", "name": "run", "uid": "old-uid", "controller": True},
         "still belongs to a previous Mask2FormerTrain run (uid old-uid); waiting for garbage collection"),
        (None, "exists and is not controlled by this resource"),
    ],
)
def test_a_childs_name_held_by_another_owner_waits_and_stays_pending(owner, says):
    blocked = creation.foreign("ConfigMap", "run-experiment", owner)
    assert blocked.reason == "WaitingForGarbageCollection" and blocked.retry and says in blocked.message
    plan = blocked_creation(Observed(resource(status={"phase": "Pending"}), [], NOW), blocked)
    assert plan.phase == "Pending"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "WaitingForGarbageCollection")]


def test_retry_backoff_is_bounded():
    delays = [creation.retry_delay(attempt) for attempt in range(20)]
    assert delays == sorted(delays) and delays[0] == 1.0 and max(delays) == 300.0
