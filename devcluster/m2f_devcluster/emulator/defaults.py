"""Defaults the API server and its controllers fill in on create (pods, services, nodes, CRD status)."""

from __future__ import annotations

import datetime
from collections.abc import Callable


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _qos_class(containers: list[dict]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(name) is not None
        and (r.get("requests") or r.get("limits") or {}).get(name) == (r.get("limits") or {}).get(name)
        for r in resources for name in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def pod(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("securityContext", {})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        image = container.get("image", "")
        latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("resources", {})
    obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec.get("containers", []))}


def set_pod_condition(obj: dict, condition_type: str, status: str) -> None:
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    conditions[:] = [c for c in conditions if c.get("type") != condition_type]
    conditions.append({"type": condition_type, "status": status, "lastProbeTime": None,
                       "lastTransitionTime": now_rfc3339()})


def service(obj: dict, allocate_ip: Callable[[], str]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec.get("clusterIP") != "None":
        spec["clusterIP"] = spec.get("clusterIP") or allocate_ip()
    spec["clusterIPs"] = [spec["clusterIP"]]
    for port in spec.get("ports", []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    obj.setdefault("status", {"loadBalancer": {}})


# What a dev-cluster node offers the scheduler: GPUs are a number to fit pods against, not devices.
DEFAULT_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8"}


def node(name: str, capacity: dict[str, str] | None = None) -> dict:
    capacity = dict(capacity or DEFAULT_CAPACITY)
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                              "m2f.dev/local-kubelet": "true"}},
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "local kubelet is posting ready status",
                            "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-m2f-local", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "bootID": "", "machineID": "", "systemUUID": "",
                         "containerRuntimeVersion": "local://processes", "kernelVersion": "",
                         "osImage": "local processes (m2f dev cluster)"},
        },
    }


def crd_status(obj: dict) -> None:
    names = (obj.get("spec") or {}).get("names") or {}
    now = now_rfc3339()
    obj["status"] = {
        "acceptedNames": dict(names),
        "storedVersions": [v["name"] for v in (obj.get("spec") or {}).get("versions", []) if v.get("storage")],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    }
