"""Gang admission: what Kueue, the coscheduling plugin or Volcano need to see a gang as one unit.

`spec.scheduling.gang` picks one (default `none`):
- `kueue`: Kueue's plain pod groups. Every pod carries the LocalQueue (`kueue.x-k8s.io/queue-name`), a group
  name per attempt and the group's size; Kueue's webhook gates the pods until the whole group is admitted.
  A failed pod ends its group (`retriable-in-group: false`): the operator's restart is a new group.
  Every gang scheduler gets one group per attempt, named `<name>-<role>-<attempt>`.
- `coscheduling` (kubernetes-sigs/scheduler-plugins): a `scheduling.x-k8s.io/v1alpha1` PodGroup with
  minMember = the gang, and the pods labelled with it. `spec.schedulerName` names the scheduler that runs
  the plugin when it is not the default one.
- `volcano`: a `scheduling.volcano.sh/v1beta1` PodGroup in the queue, the pods annotated with it and
  scheduled by `volcano` unless `spec.schedulerName` says otherwise.
"""

from __future__ import annotations

from m2f_operator.builders import meta

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
COSCHEDULING_API_VERSION = "scheduling.x-k8s.io/v1alpha1"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_API_VERSION = "scheduling.volcano.sh/v1beta1"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
VOLCANO_SCHEDULER = "volcano"
# Custom resources the operator creates for a gang scheduler: apiVersion -> (group, version, plural).
POD_GROUP_APIS = {
    COSCHEDULING_API_VERSION: ("scheduling.x-k8s.io", "v1alpha1", "podgroups"),
    VOLCANO_API_VERSION: ("scheduling.volcano.sh", "v1beta1", "podgroups"),
}


def gang_kind(spec: dict) -> str:
    return (spec.get("scheduling") or {}).get("gang") or "none"


def pod_group_name(body: dict, role: str, attempt: int) -> str:
    """One group per attempt, for every gang scheduler: a restarted gang is admitted anew (Kueue ends a group
    when one of its pods fails), and a shape edited while suspended gets a PodGroup of its own minMember."""
    return f"{body['metadata']['name']}-{role}-{attempt}"


def priority_class(spec: dict) -> str | None:
    return (spec.get("scheduling") or {}).get("priorityClassName") or spec.get("priorityClassName")


def pod_metadata(body: dict, role: str, replicas: int, attempt: int) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) a gang's pods carry for its gang scheduler."""
    spec = body["spec"]
    kind, queue = gang_kind(spec), (spec.get("scheduling") or {}).get("queueName")
    if kind == "kueue":
        labels = {KUEUE_QUEUE_LABEL: queue, KUEUE_GROUP_LABEL: pod_group_name(body, role, attempt)}
        return labels, {KUEUE_TOTAL_ANNOTATION: str(replicas), KUEUE_RETRIABLE_ANNOTATION: "false"}
    if kind == "coscheduling":
        return {COSCHEDULING_LABEL: pod_group_name(body, role, attempt)}, {}
    if kind == "volcano":
        return {}, {VOLCANO_GROUP_ANNOTATION: pod_group_name(body, role, attempt)}
    return {}, {}


def scheduler_name(spec: dict) -> str | None:
    if spec.get("schedulerName"):
        return spec["schedulerName"]
    return VOLCANO_SCHEDULER if gang_kind(spec) == "volcano" else None


def build_pod_group(body: dict, role: str, replicas: int, attempt: int) -> dict | None:
    """The PodGroup a coscheduling or Volcano gang needs before its pods; None for the others."""
    spec, kind = body["spec"], gang_kind(body["spec"])
    scheduling = spec.get("scheduling") or {}
    if kind == "coscheduling":
        group_spec: dict = {"minMember": replicas}
        if scheduling.get("startupTimeoutSeconds"):
            # The plugin's own clock for a gang it cannot place: the same budget as the operator's.
            group_spec["scheduleTimeoutSeconds"] = int(scheduling["startupTimeoutSeconds"])
        api_version = COSCHEDULING_API_VERSION
    elif kind == "volcano":
        group_spec = {"minMember": replicas}
        if scheduling.get("queueName"):
            group_spec["queue"] = scheduling["queueName"]
        if priority_class(spec):
            group_spec["priorityClassName"] = priority_class(spec)
        api_version = VOLCANO_API_VERSION
    else:
        return None
    metadata = meta.child_metadata(body, pod_group_name(body, role, attempt),
                                   {meta.LABEL_ROLE: role, meta.LABEL_ATTEMPT: str(attempt)})
    return {"apiVersion": api_version, "kind": "PodGroup", "metadata": metadata, "spec": group_spec}
