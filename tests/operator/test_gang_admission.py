"""Table tests of gang admission: each gang scheduler sees the gang as one unit (labels, annotations, PodGroup)."""

from __future__ import annotations

import kubernetes_validate
import pytest
from reconcile_factories import NOW, resource

from m2f_operator.builders import build_gang, build_stages
from m2f_operator.builders.scheduling import build_pod_group
from m2f_operator.reconcile import Observed, reconcile
from m2f_operator.validation import spec_error

KUEUE = {"gang": "kueue", "queueName": "team-a"}


def _gang(scheduling: dict, attempt: int = 0, **spec) -> list[dict]:
    body = resource(nodes=2, gpusPerNode=8, scheduling=scheduling, **spec)
    (stage,) = build_stages(body)
    return build_gang(body, stage, attempt)


@pytest.mark.parametrize(
    ("scheduling", "labels", "annotations", "scheduler"),
    [
        ({}, {}, {}, None),
        ({"gang": "none"}, {}, {}, None),
        (KUEUE, {"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/pod-group-name": "run-worker-0"},
         {"kueue.x-k8s.io/pod-group-total-count": "2", "kueue.x-k8s.io/retriable-in-group": "false"}, None),
        ({"gang": "coscheduling"}, {"scheduling.x-k8s.io/pod-group": "run-worker-0"}, {}, None),
        ({"gang": "volcano", "queueName": "q"}, {}, {"scheduling.k8s.io/group-name": "run-worker-0"}, "volcano"),
    ],
)
def test_pods_carry_what_their_gang_scheduler_reads(scheduling, labels, annotations, scheduler):
    for pod in _gang(scheduling):
        kubernetes_validate.validate(pod, "1.30", strict=True)
        metadata = pod["metadata"]
        assert labels.items() <= metadata["labels"].items()
        assert not {k for k in metadata["labels"] if k.startswith(("kueue.", "scheduling."))} - set(labels)
        assert metadata.get("annotations", {}) == annotations
        assert pod["spec"].get("schedulerName") == scheduler


@pytest.mark.parametrize(("scheduling", "where", "key"), [
    (KUEUE, "labels", "kueue.x-k8s.io/pod-group-name"),
    ({"gang": "coscheduling"}, "labels", "scheduling.x-k8s.io/pod-group"),
    ({"gang": "volcano"}, "annotations", "scheduling.k8s.io/group-name"),
])
def test_each_attempt_is_a_new_group(scheduling, where, key):
    (first, _), (restarted, _) = _gang(scheduling, attempt=0), _gang(scheduling, attempt=3)
    assert first["metadata"][where][key] == "run-worker-0" and restarted["metadata"][where][key] == "run-worker-3"


def test_a_users_scheduler_name_and_priority_class_win():
    (pod, _) = _gang({"gang": "volcano", "priorityClassName": "high"}, schedulerName="my-volcano")
    assert (pod["spec"]["schedulerName"], pod["spec"]["priorityClassName"]) == ("my-volcano", "high")
    (pod, _) = _gang({}, priorityClassName="low")
    assert pod["spec"]["priorityClassName"] == "low"


@pytest.mark.parametrize(
    ("scheduling", "expected"),
    [
        ({}, None),
        (KUEUE, None),
        ({"gang": "coscheduling", "startupTimeoutSeconds": 300},
         {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "spec": {"minMember": 2, "scheduleTimeoutSeconds": 300}}),
        ({"gang": "volcano", "queueName": "research", "priorityClassName": "high"},
         {"apiVersion": "scheduling.volcano.sh/v1beta1",
          "spec": {"minMember": 2, "queue": "research", "priorityClassName": "high"}}),
    ],
)
def test_pod_group_for_the_gang_schedulers_that_need_one(scheduling, expected):
    body = resource(nodes=2, scheduling=scheduling)
    group = build_pod_group(body, "worker", 2, attempt=1)
    if expected is None:
        assert group is None
        return
    assert {k: group[k] for k in ("apiVersion", "spec")} == expected
    assert group["kind"] == "PodGroup" and group["metadata"]["name"] == "run-worker-1"
    (owner,) = group["metadata"]["ownerReferences"]
    assert (owner["uid"], owner["controller"]) == ("uid-run", True)


def test_the_pod_group_is_created_before_the_pods():
    body = resource(nodes=2, scheduling={"gang": "coscheduling"})
    kinds = [m["kind"] for m in reconcile(Observed(body, [], NOW)).creates]
    assert kinds == ["ConfigMap", "Service", "PodGroup", "Pod", "Pod"]


@pytest.mark.parametrize(
    ("scheduling", "error"),
    [
        ({"gang": "slurm"}, "spec.scheduling.gang: 'slurm' is not one of none, kueue, coscheduling, volcano"),
        ({"gang": "kueue"}, "spec.scheduling.queueName: required with gang kueue"),
        ({"gang": "kueue", "queueName": "Team A"}, "spec.scheduling.queueName: 'Team A' must be a queue name"),
        ({"startupTimeoutSeconds": -1}, "spec.scheduling.startupTimeoutSeconds: must be an integer >= 0"),
        ({"queue": "a"}, "spec.scheduling: unknown field(s) queue"),
    ],
)
def test_invalid_scheduling_names_the_field(scheduling, error):
    assert (spec_error(resource(nodes=2, scheduling=scheduling)) or "").startswith(error)


def test_two_priority_classes_that_disagree_are_invalid():
    body = resource(scheduling={"priorityClassName": "high"}, priorityClassName="low")
    assert spec_error(body).startswith("spec.scheduling.priorityClassName: disagrees with spec.priorityClassName")
