"""Spec validation: operator-level fields here, spec.experiment through the trainer's pure config module."""

from __future__ import annotations

import functools
import json
import re

from m2f_operator.builders import meta, template
from m2f_operator.builders.pods import processes_per_node
from m2f_operator.builders.stages import QUANTIZE_ALGORITHMS
from m2f_operator.policies import failure, startup
from m2f_operator.policies.cleanup import CLEAN_POD_POLICIES
from m2f_operator.policies.success import SUCCESS_POLICIES

TENSORRT_PRECISIONS = ("fp32", "fp16")


@functools.lru_cache(maxsize=512)
def _experiment_error(experiment_json: str, overrides: tuple[str, ...]) -> str | None:
    # Imported lazily: the config module is pure Python (no torch), but only validation needs it.
    from m2f_spec import config_from_dict
    from m2f_spec.errors import UserError

    try:
        config_from_dict(json.loads(experiment_json), overrides, source="spec.experiment")
    except UserError as exc:
        return str(exc)
    return None


def experiment_error(experiment: dict, overrides: tuple[str, ...] = ()) -> str | None:
    """The trainer's own validation, cached: the experiment is immutable once created."""
    # Every reconcile asks: the key is canonical JSON (~100x cheaper to build than YAML; API objects are JSON).
    return _experiment_error(json.dumps(experiment, sort_keys=True), tuple(overrides))


def _non_negative_int(spec: dict, key: str, minimum: int = 0) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"spec.{key}: must be an integer >= {minimum}, got {value!r}"
    return None


def _choice(spec: dict, key: str, choices: tuple[str, ...]) -> str | None:
    if key in spec and spec[key] not in choices:
        return f"spec.{key}: {spec[key]!r} is not one of {', '.join(choices)}"
    return None


def _exit_codes(spec: dict, key: str) -> str | None:
    codes = spec.get(key)
    if codes is None:
        return None
    if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c < 256 for c in codes):
        return f"spec.{key}: must be a list of exit codes 1..255, got {codes!r}"
    if key == "retryableExitCodes" and set(codes) & meta.BUILTIN_PERMANENT_EXIT_CODES:
        return f"spec.{key}: exit code 2 means invalid spec/data and is always permanent"
    return None


def _failure_policy_error(spec: dict) -> str | None:
    policy = spec.get("failurePolicy")
    if policy is None:
        return None
    rules = policy.get("rules") if isinstance(policy, dict) else None
    if not isinstance(policy, dict) or not isinstance(rules, list):
        return "spec.failurePolicy: must be an object with a list of rules"
    for index, rule in enumerate(rules):
        field = f"spec.failurePolicy.rules[{index}]"
        if not isinstance(rule, dict):
            return f"{field}: must be an object"
        unknown = set(rule) - {"name", "action", "onExitCodes", "onReasons", "onPodConditions"}
        if unknown:
            return f"{field}: unknown field(s) {', '.join(sorted(unknown))}"
        if rule.get("action") not in failure.ACTIONS:
            return f"{field}.action: {rule.get('action')!r} is not one of {', '.join(failure.ACTIONS)}"
        codes = rule.get("onExitCodes")
        if codes is not None:
            if not isinstance(codes, dict) or codes.get("operator", "In") not in failure.EXIT_CODE_OPERATORS:
                return f"{field}.onExitCodes.operator: must be one of {', '.join(failure.EXIT_CODE_OPERATORS)}"
            values = codes.get("values")
            if not (isinstance(values, list) and values and all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 < c < 256 for c in values)):
                return f"{field}.onExitCodes.values: must be a non-empty list of exit codes 1..255, got {values!r}"
        reasons = rule.get("onReasons")
        if reasons is not None and (not isinstance(reasons, list) or set(reasons) - set(failure.DISRUPTIONS)):
            return f"{field}.onReasons: {reasons!r}: each must be one of {', '.join(failure.DISRUPTIONS)}"
        conditions = rule.get("onPodConditions")
        if conditions is not None and not (isinstance(conditions, list) and all(isinstance(c, str) and c for c in conditions)):
            return f"{field}.onPodConditions: must be a list of pod condition types, got {conditions!r}"
    return None


_LABEL_VALUE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


def _scheduling_error(spec: dict) -> str | None:
    scheduling = spec.get("scheduling")
    if scheduling is None:
        return None
    if not isinstance(scheduling, dict):
        return "spec.scheduling: must be an object"
    unknown = set(scheduling) - {"gang", "queueName", "priorityClassName", "startupTimeoutSeconds"}
    if unknown:
        return f"spec.scheduling: unknown field(s) {', '.join(sorted(unknown))}"
    gang = scheduling.get("gang", "none")
    if gang not in startup.GANG_SCHEDULERS:
        return f"spec.scheduling.gang: {gang!r} is not one of {', '.join(startup.GANG_SCHEDULERS)}"
    queue = scheduling.get("queueName")
    if queue is not None and not (isinstance(queue, str) and _LABEL_VALUE.match(queue)):
        return f"spec.scheduling.queueName: {queue!r} must be a queue name (a DNS label: it becomes a pod label)"
    if gang == "kueue" and not queue:
        return "spec.scheduling.queueName: required with gang kueue (the LocalQueue that admits the gang)"
    error = _non_negative_int(scheduling, "startupTimeoutSeconds")
    if error:
        return error.replace("spec.", "spec.scheduling.", 1)
    priority = scheduling.get("priorityClassName")
    if priority is not None and not isinstance(priority, str):
        return f"spec.scheduling.priorityClassName: must be a string, got {priority!r}"
    if priority and spec.get("priorityClassName") and priority != spec["priorityClassName"]:
        return "spec.scheduling.priorityClassName: disagrees with spec.priorityClassName; set one of them"
    return None


def _export_error(spec: dict) -> str | None:
    has_ref, has_checkpoint = bool(spec.get("trainRef")), bool(spec.get("checkpoint"))
    if has_ref == has_checkpoint:
        return "spec: set exactly one of spec.trainRef and spec.checkpoint"
    trt = spec.get("tensorRT") or {}
    precision = str(trt.get("precision", "fp16")).lower()
    if precision not in TENSORRT_PRECISIONS:
        return f"spec.tensorRT.precision: {trt.get('precision')!r} is not one of {', '.join(TENSORRT_PRECISIONS)}"
    batches = [trt.get(k, 1) for k in ("minBatch", "optBatch", "maxBatch")]
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in batches):
        return f"spec.tensorRT: minBatch/optBatch/maxBatch must be integers >= 1, got {batches}"
    if not batches[0] <= batches[1] <= batches[2]:
        return f"spec.tensorRT: need minBatch <= optBatch <= maxBatch, got {batches}"
    quantize = spec.get("quantize") or {}
    if quantize.get("enabled"):
        if not isinstance(quantize.get("calibrationImagesDir"), str) or not quantize["calibrationImagesDir"]:
            return "spec.quantize.calibrationImagesDir: required when spec.quantize.enabled (the calibration images)"
        if quantize.get("algorithm", "minmax") not in QUANTIZE_ALGORITHMS:
            return f"spec.quantize.algorithm: {quantize.get('algorithm')!r} is not one of {', '.join(QUANTIZE_ALGORITHMS)}"
        max_images = quantize.get("maxImages", 256)
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            return f"spec.quantize.maxImages: must be an integer >= 1, got {max_images!r}"
    return None


def spec_error(body: dict, experiment_changed: bool = False) -> str | None:
    """The first problem with the resource, naming the field; None when it can run. `experiment_changed`: the
    stored experiment is an edit a server without CEL let through; the job keeps its original experiment, so
    the edit is not judged (it must never turn a running job invalid)."""
    name = body["metadata"]["name"]
    if len(name) > meta.MAX_NAME_LENGTH or not meta.NAME_PATTERN.match(name):
        return (
            f"metadata.name: {name!r} must be a DNS-1035 label of at most {meta.MAX_NAME_LENGTH} characters "
            "(it names the headless Service and the worker hostnames)"
        )
    spec = body.get("spec") or {}
    info = meta.kind_info(body)
    experiment = spec.get("experiment")
    if not isinstance(experiment, dict):
        return "spec.experiment: required (the trainer's experiment spec)"
    for check in (
        _non_negative_int(spec, "nodes", 1),
        _non_negative_int(spec, "gpusPerNode"),
        _non_negative_int(spec, "backoffLimit"),
        _non_negative_int(spec, "activeDeadlineSeconds", 1),
        _non_negative_int(spec, "ttlSecondsAfterFinished"),
        _exit_codes(spec, "permanentExitCodes"),
        _exit_codes(spec, "retryableExitCodes"),
        _failure_policy_error(spec),
        _scheduling_error(spec),
        _choice(spec, "successPolicy", SUCCESS_POLICIES),
    ):
        if check:
            return check
    error = _reserved_error(spec)
    if error:
        return error
    if info.task != "train" and spec.get("nodes", 1) != 1:
        return f"spec.nodes: {info.kind} runs on one node, got {spec['nodes']}"
    if spec.get("cleanPodPolicy", "Running") not in CLEAN_POD_POLICIES:
        return f"spec.cleanPodPolicy: {spec['cleanPodPolicy']!r} is not one of {', '.join(CLEAN_POD_POLICIES)}"
    if info.task == "export":
        error = _export_error(spec)
        if error:
            return error
    if experiment_changed:
        return None
    if info.task == "train":
        error = _gang_shape_error(spec, experiment)
        if error:
            return error
    return experiment_error(experiment)


def _reserved_error(spec: dict) -> str | None:
    """Volumes, mounts and labels the operator owns: a collision would be rejected by the API server (422 on
    every pod) or would hide a child from the operator, so it is an InvalidSpec naming the field."""
    error = template.template_error(spec)
    if error:
        return error
    seen: set[str] = set()
    template_volumes = ((spec.get("podTemplate") or {}).get("spec") or {}).get("volumes") or []
    for field, volumes in (("spec.podTemplate.spec.volumes", template_volumes), ("spec.volumes", spec.get("volumes") or [])):
        for index, volume in enumerate(volumes):
            name = volume.get("name") if isinstance(volume, dict) else None
            if name in meta.RESERVED_VOLUMES:
                return (f"{field}[{index}].name: {name!r} is reserved (the operator adds the experiment ConfigMap "
                        f"and a memory-backed /dev/shm as volumes {', '.join(meta.RESERVED_VOLUMES)})")
            if name in seen:
                return f"{field}[{index}].name: {name!r} is used by another volume"
            seen.add(name)
    for index, mount in enumerate(spec.get("volumeMounts") or []):
        path = str(mount.get("mountPath", "")).rstrip("/") if isinstance(mount, dict) else ""
        if path in meta.RESERVED_MOUNT_PATHS:
            return (f"spec.volumeMounts[{index}].mountPath: {path!r} is reserved (the operator mounts "
                    f"{', '.join(meta.RESERVED_MOUNT_PATHS)})")
    return template.owned_label_error(spec.get("podLabels"), "spec.podLabels")


def _gang_shape_error(spec: dict, experiment: dict) -> str | None:
    """spec.nodes / spec.gpusPerNode define the gang; an experiment may repeat them but not contradict them."""
    train = experiment.get("train") if isinstance(experiment.get("train"), dict) else {}
    nodes, per_node = spec.get("nodes", 1), processes_per_node(spec.get("gpusPerNode", 0))
    if "num_nodes" in train and train["num_nodes"] != nodes:
        return (f"spec.experiment.train.num_nodes: {train['num_nodes']!r} disagrees with spec.nodes: {nodes} "
                "(spec.nodes defines the gang; leave num_nodes out)")
    if "num_gpus" in train and train["num_gpus"] != per_node:
        return (f"spec.experiment.train.num_gpus: {train['num_gpus']!r} disagrees with spec.gpusPerNode: "
                f"{spec.get('gpusPerNode', 0)} ({per_node} process(es) per node; leave num_gpus out)")
    return None
