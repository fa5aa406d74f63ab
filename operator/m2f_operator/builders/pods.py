"""Pure builders of the pods that run `m2f <task>`: one Stage describes a gang of identical workers."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from m2f_operator.builders import meta, scheduling, template


@dataclass(frozen=True)
class PodDefaults:
    """Operator-wide defaults (from the chart's values through environment variables)."""

    image: str = meta.DEFAULT_IMAGE
    trt_image: str = meta.DEFAULT_TRT_IMAGE
    worker_service_account: str = meta.DEFAULT_WORKER_SERVICE_ACCOUNT
    results_root: str = meta.DEFAULT_RESULTS_ROOT
    image_pull_policy: str = "IfNotPresent"


@dataclass(frozen=True)
class Stage:
    """One gang of pods: `replicas` pods named <name>-<role>-<i>, all running `m2f <task>`."""

    role: str
    task: str
    replicas: int
    gpus_per_node: int
    image: str
    overrides: tuple[str, ...] = field(default=())


_POD_TEMPLATE_FIELDS = ("nodeSelector", "tolerations", "affinity")

_DEFAULT_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def processes_per_node(gpus_per_node: int) -> int:
    # gpusPerNode 0 runs one CPU process per node (the dev cluster does that).
    return max(int(gpus_per_node), 1)


def master_addr(body: dict, stage: Stage) -> str:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    return f"{meta.pod_name(name, stage.role, 0)}.{meta.service_name(name)}.{namespace}.svc"


def build_env(body: dict, stage: Stage, index: int, defaults: PodDefaults) -> list[dict]:
    """The pod environment contract of docs/architecture.md."""
    per_node = processes_per_node(stage.gpus_per_node)
    values = {
        "MASTER_ADDR": master_addr(body, stage),
        "MASTER_PORT": str(meta.MASTER_PORT),
        "NODE_RANK": str(index),
        "WORLD_SIZE": str(stage.replicas * per_node),
        "NUM_GPU_PER_NODE": str(per_node),
        "M2F_RESULTS_DIR": meta.results_dir(body, defaults.results_root),
        "M2F_METRICS_PORT": str(meta.METRICS_PORT if index == 0 else 0),
        "M2F_TERMINATION_MESSAGE_PATH": meta.TERMINATION_MESSAGE_PATH,
    }
    user_env = [e for e in body["spec"].get("env", []) if e.get("name") not in values]
    return [{"name": key, "value": value} for key, value in values.items()] + copy.deepcopy(user_env)


def build_resources(spec_resources: dict | None, gpus: int) -> dict:
    # Quantities are strings in the API (the typed client rejects bare numbers).
    resources = {
        section: {name: str(quantity) for name, quantity in (values or {}).items()}
        for section, values in (spec_resources or {}).items()
        if section in ("limits", "requests")
    }
    if (spec_resources or {}).get("claims"):
        resources["claims"] = copy.deepcopy(spec_resources["claims"])  # dynamic resource allocation
    if gpus > 0:
        # Extended resources must have requests == limits.
        resources.setdefault("limits", {})[meta.GPU_RESOURCE] = str(gpus)
        resources.setdefault("requests", {})[meta.GPU_RESOURCE] = str(gpus)
    return resources


def build_pod(body: dict, stage: Stage, index: int, attempt: int, defaults: PodDefaults | None = None) -> dict:
    """Worker `index` of `stage` for the gang's `attempt` (restart count): the operator's fields over
    `spec.podTemplate` (builders/template.py), the dedicated spec fields over both."""
    defaults = defaults or PodDefaults()
    spec = body["spec"]
    name = body["metadata"]["name"]
    pod_name = meta.pod_name(name, stage.role, index)
    template_meta, template_spec, template_main, sidecars = template.template_parts(spec)
    gang_labels, gang_annotations = scheduling.pod_metadata(body, stage.role, stage.replicas, attempt)
    labels = {
        **(template_meta.get("labels") or {}),
        **spec.get("podLabels", {}),  # reserved keys are refused by validation and overridden here
        **gang_labels,
        meta.LABEL_ROLE: stage.role,
        meta.LABEL_REPLICA_INDEX: str(index),
        meta.LABEL_ATTEMPT: str(attempt),
    }
    metadata = meta.child_metadata(body, pod_name, labels)
    annotations = {**(template_meta.get("annotations") or {}), **spec.get("podAnnotations", {}), **gang_annotations}
    if annotations:
        metadata["annotations"] = annotations

    ours = {
        "name": template.MAIN_CONTAINER,
        "image": stage.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["m2f", stage.task, "-e", meta.SPEC_FILE, *stage.overrides],
        "env": build_env(body, stage, index, defaults),
        "ports": [
            {"name": "dist", "containerPort": meta.MASTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": meta.METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": build_resources(template.template_resources(template_main, spec.get("resources")),
                                     stage.gpus_per_node),
        "volumeMounts": [
            {"name": "experiment", "mountPath": meta.SPEC_MOUNT_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *copy.deepcopy(spec.get("volumeMounts", [])),
        ],
        "securityContext": copy.deepcopy(_CONTAINER_SECURITY),
        "terminationMessagePath": meta.TERMINATION_MESSAGE_PATH,
        # On a crash the log tail (the CLI's one-line `error: ...`) becomes the message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec = {
        **template_spec,
        "hostname": pod_name,
        "subdomain": meta.service_name(name),
        "restartPolicy": "Never",
        "serviceAccountName": (spec.get("serviceAccountName") or template_spec.get("serviceAccountName")
                               or defaults.worker_service_account),
        # No API credentials in worker pods (user code, pip packages) unless the spec asks for them: the
        # operator reads progress from rank 0's metrics endpoint instead.
        "automountServiceAccountToken": bool(spec.get("automountServiceAccountToken",
                                                      template_spec.get("automountServiceAccountToken", False))),
        "securityContext": {**_DEFAULT_POD_SECURITY, **(template_spec.get("securityContext") or {}),
                            **copy.deepcopy(spec.get("securityContext", {}))},
        "terminationGracePeriodSeconds": int(spec.get("terminationGracePeriodSeconds",
                                                      template_spec.get("terminationGracePeriodSeconds", 60))),
        "containers": [template.merge_container(template_main, ours), *sidecars],
        "volumes": [
            {"name": "experiment", "configMap": {"name": meta.configmap_name(name)}},
            # DataLoader workers share tensors through /dev/shm; the container default (64 MiB) is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            *(template_spec.get("volumes") or []),
            *copy.deepcopy(spec.get("volumes", [])),
        ],
    }
    for key in _POD_TEMPLATE_FIELDS:
        if spec.get(key):
            pod_spec[key] = copy.deepcopy(spec[key])
    for key, value in (("priorityClassName", scheduling.priority_class(spec)),
                       ("schedulerName", scheduling.scheduler_name(spec))):
        if value:
            pod_spec[key] = value
    if spec.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = copy.deepcopy(spec["imagePullSecrets"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def build_gang(body: dict, stage: Stage, attempt: int, defaults: PodDefaults | None = None) -> list[dict]:
    return [build_pod(body, stage, index, attempt, defaults) for index in range(stage.replicas)]
