"""`spec.podTemplate`: a PodTemplateSpec the operator's own pod fields are laid over.

Anything a pod can have comes from the template (runtimeClassName, init and sidecar containers, topology
spread, host network, resource claims, and on the container named `m2f`: envFrom, probes, lifecycle,
a securityContext adding IPC_LOCK for RDMA...). What the operator needs to run a gang is its own, listed in
OWNED_* below: the template may not set it (InvalidSpec names the field). The dedicated spec fields win over
the template's: scalars and `nodeSelector`/`tolerations`/`affinity`/`imagePullSecrets` replace them,
`securityContext`/`resources` merge key by key, `volumes`/`volumeMounts`/`env` are appended.
"""

from __future__ import annotations

import copy

from m2f_operator.builders import meta

MAIN_CONTAINER = "m2f"
# Pod fields the operator sets: its rendezvous DNS names and its whole-gang restart policy.
OWNED_POD_FIELDS = ("hostname", "subdomain", "restartPolicy")
# Fields of the `m2f` container the operator sets: what runs, and where its result goes.
OWNED_CONTAINER_FIELDS = ("image", "command", "args", "terminationMessagePath", "terminationMessagePolicy")


def template_parts(spec: dict) -> tuple[dict, dict, dict, list[dict]]:
    """(metadata, pod spec without containers, the `m2f` container's template, the other containers)."""
    template = copy.deepcopy(spec.get("podTemplate") or {})
    metadata, pod_spec = template.get("metadata") or {}, template.get("spec") or {}
    containers = pod_spec.pop("containers", None) or []
    main = next((c for c in containers if c.get("name") == MAIN_CONTAINER), {})
    others = [c for c in containers if c.get("name") != MAIN_CONTAINER]
    return metadata, pod_spec, main, others


def merge_container(template: dict, ours: dict) -> dict:
    """Ours over the template's `m2f` container; lists the template adds to (env, ports, mounts) are joined,
    the contract's env names and our mounts winning."""
    merged = {**{k: v for k, v in template.items() if k not in OWNED_CONTAINER_FIELDS}, **ours}
    ours_env = {e["name"] for e in ours["env"]}
    merged["env"] = ours["env"] + [e for e in template.get("env") or [] if e.get("name") not in ours_env]
    merged["ports"] = ours["ports"] + [p for p in template.get("ports") or []
                                       if p.get("containerPort") not in {q["containerPort"] for q in ours["ports"]}]
    merged["volumeMounts"] = ours["volumeMounts"][:2] + (template.get("volumeMounts") or []) + ours["volumeMounts"][2:]
    merged["securityContext"] = {**ours["securityContext"], **(template.get("securityContext") or {})}
    if template.get("imagePullPolicy"):
        merged["imagePullPolicy"] = template["imagePullPolicy"]
    return merged


def template_resources(template: dict, spec_resources: dict | None) -> dict:
    """spec.resources over the template container's, per section (limits, requests, claims)."""
    resources = copy.deepcopy(template.get("resources") or {})
    for section, values in (spec_resources or {}).items():
        resources[section] = {**(resources.get(section) or {}), **values} if isinstance(values, dict) else values
    return resources


def owned_label_error(labels: dict, field: str) -> str | None:
    for key in labels or {}:
        if key in meta.OWNED_LABELS:
            return f"{field}: {key!r} is reserved (the operator finds its pods by {', '.join(meta.OWNED_LABELS)})"
    return None


def template_error(spec: dict) -> str | None:
    """The first template field the operator owns or cannot read, naming it; None when it can be merged."""
    template = spec.get("podTemplate")
    if template is None:
        return None
    if not isinstance(template, dict) or not all(isinstance(template.get(k) or {}, dict) for k in ("metadata", "spec")):
        return "spec.podTemplate: must be a PodTemplateSpec (an object with metadata and spec)"
    error = _shape_error(template)
    if error:
        return error
    error = owned_label_error((template.get("metadata") or {}).get("labels"), "spec.podTemplate.metadata.labels")
    if error:
        return error
    pod_spec = template.get("spec") or {}
    for key in OWNED_POD_FIELDS:
        if key in pod_spec:
            return (f"spec.podTemplate.spec.{key}: set by the operator (workers are named for the rendezvous and "
                    "never restarted in place: a failure restarts the whole gang)")
    containers = pod_spec.get("containers") or []
    if not isinstance(containers, list) or not all(isinstance(c, dict) and c.get("name") for c in containers):
        return "spec.podTemplate.spec.containers: must be a list of containers, each with a name"
    names = [c["name"] for c in containers]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        return f"spec.podTemplate.spec.containers: two containers are named {duplicate!r}"
    for index, container in enumerate(containers):
        if container["name"] != MAIN_CONTAINER:
            continue
        field = f"spec.podTemplate.spec.containers[{index}]"
        for key in OWNED_CONTAINER_FIELDS:
            if key in container:
                return (f"{field}.{key}: set by the operator for the {MAIN_CONTAINER!r} container "
                        "(spec.image chooses the image; the command is `m2f <task>`)")
        for env in container.get("env") or []:
            if isinstance(env, dict) and env.get("name") in meta.CONTRACT_ENV:
                return f"{field}.env: {env['name']!r} is part of the pod environment contract, set by the operator"
        for mount_index, mount in enumerate(container.get("volumeMounts") or []):
            path = str(mount.get("mountPath", "")).rstrip("/") if isinstance(mount, dict) else ""
            if path in meta.RESERVED_MOUNT_PATHS:
                return f"{field}.volumeMounts[{mount_index}].mountPath: {path!r} is reserved (the operator mounts it)"
    return None


# The template fields the operator reads or merges, and the JSON type each must have (the API server checks the
# rest when the pod is created: a wrong type there is a FailedCreate naming the field).
_POD_SPEC_TYPES = {"securityContext": dict, "volumes": list, "serviceAccountName": str,
                   "automountServiceAccountToken": bool, "terminationGracePeriodSeconds": int, "containers": list}
_CONTAINER_TYPES = {"env": list, "ports": list, "volumeMounts": list, "resources": dict, "securityContext": dict,
                    "envFrom": list, "imagePullPolicy": str}


def _type_error(value, expected: type, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"{field}: must be {'an' if expected is int else 'a'} {expected.__name__}, got {value!r}"[:300]
    return None


def _shape_error(template: dict) -> str | None:
    metadata, pod_spec = template.get("metadata") or {}, template.get("spec") or {}
    for key in ("labels", "annotations"):
        values = metadata.get(key)
        if values is not None and not (isinstance(values, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in values.items())):
            return f"spec.podTemplate.metadata.{key}: must map strings to strings"
    for key, expected in _POD_SPEC_TYPES.items():
        error = _type_error(pod_spec.get(key), expected, f"spec.podTemplate.spec.{key}")
        if error:
            return error
    if any(not isinstance(v, dict) for v in pod_spec.get("volumes") or []):
        return "spec.podTemplate.spec.volumes: each volume must be an object"
    for index, container in enumerate(pod_spec.get("containers") or []):
        if not isinstance(container, dict):
            continue  # named by template_error
        field = f"spec.podTemplate.spec.containers[{index}]"
        for key, expected in _CONTAINER_TYPES.items():
            error = _type_error(container.get(key), expected, f"{field}.{key}")
            if error:
                return error
        for key in ("env", "ports", "volumeMounts", "envFrom"):
            if any(not isinstance(item, dict) for item in container.get(key) or []):
                return f"{field}.{key}: each entry must be an object"
        resources = container.get("resources") or {}
        for key in ("limits", "requests"):
            error = _type_error(resources.get(key), dict, f"{field}.resources.{key}")
            if error:
                return error
    return None
