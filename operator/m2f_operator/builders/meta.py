"""Names shared by the CRDs, builders, policies and handlers: API group, kinds, labels, defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass

GROUP = "mask2former.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "mask2former"


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    task: str  # the `m2f <task>` its main pods run; also the results sub-folder and the kind label


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("Mask2FormerTrain", "mask2formertrains", "mask2formertrain", ("m2ftrain", "m2ft"), "train"),
        KindInfo("Mask2FormerEvaluate", "mask2formerevaluates", "mask2formerevaluate", ("m2feval", "m2fe"), "evaluate"),
        KindInfo("Mask2FormerInference", "mask2formerinferences", "mask2formerinference", ("m2finfer", "m2fi"), "inference"),
        KindInfo("Mask2FormerExport", "mask2formerexports", "mask2formerexport", ("m2fexport", "m2fx"), "export"),
    )
}
KIND_BY_PLURAL = {info.plural: info for info in KINDS.values()}
# The sweep owns Mask2FormerTrain trials, not pods: it is not among KINDS (whose handlers and policies are the
# pod-owning jobs'). Its `task` is what `m2f sweep` does locally.
SWEEP = KindInfo("Mask2FormerSweep", "mask2formersweeps", "mask2formersweep", ("m2fsweep",), "sweep")
LABEL_SWEEP = f"{GROUP}/sweep"  # on every trial: the sweep's name
LABEL_TRIAL = f"{GROUP}/trial"  # on every trial: its number in the sweep
ANNOTATION_TRIAL_PARAMETERS = f"{GROUP}/trial-parameters"  # JSON: what the sweep suggested
ANNOTATION_TRIAL_SEEN = f"{GROUP}/trial-seen"  # how many earlier trials the suggestion learned from

# Labels on every child; selectors and the operator's pod index rely on them.
LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_KIND = f"{GROUP}/kind"
LABEL_ROLE = f"{GROUP}/role"
LABEL_REPLICA_INDEX = f"{GROUP}/replica-index"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "mask2former-operator"
OWNED_LABELS = (LABEL_JOB_NAME, LABEL_KIND, LABEL_ROLE, LABEL_REPLICA_INDEX, LABEL_ATTEMPT, LABEL_MANAGED_BY)

SPEC_MOUNT_DIR = "/etc/m2f"
# What the operator puts into every pod itself; a spec may not name them (validation.py says which field).
RESERVED_VOLUMES = ("experiment", "dshm")
RESERVED_MOUNT_PATHS = (SPEC_MOUNT_DIR, "/dev/shm")
SPEC_FILE = f"{SPEC_MOUNT_DIR}/spec.yaml"
# The pod environment contract (docs/architecture.md): set by the operator, never by a spec.
CONTRACT_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "NUM_GPU_PER_NODE", "M2F_RESULTS_DIR",
                "M2F_METRICS_PORT", "M2F_TERMINATION_MESSAGE_PATH")
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MASTER_PORT = 29500
METRICS_PORT = 9091
DEFAULT_RESULTS_ROOT = "/results"
# The trainer publishes its latest checkpoint at <results_dir>/train/<this> (m2f_trainer.engine.checkpoints).
TRAIN_LATEST_CHECKPOINT = "train/mask2former_model_latest.pth"
DEFAULT_IMAGE = "ghcr.io/mask2former-operator/trainer:0.1.0"
DEFAULT_TRT_IMAGE = "ghcr.io/mask2former-operator/trt-builder:0.1.0"
DEFAULT_WORKER_SERVICE_ACCOUNT = "mask2former-worker"
GPU_RESOURCE = "nvidia.com/gpu"
# Exit code 2 is the trainer's "invalid spec, data or arguments": retrying cannot help.
BUILTIN_PERMANENT_EXIT_CODES = frozenset({2})

# Pod hostnames are DNS labels (<= 63 chars) and the longest suffix we add is "-worker-NNN";
# Service names must be DNS-1035 labels (start with a letter).
MAX_NAME_LENGTH = 48
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def kind_info(body: dict) -> KindInfo:
    return KINDS[body["kind"]]


def service_name(name: str) -> str:
    return name


def configmap_name(name: str) -> str:
    return f"{name}-experiment"


def pod_name(name: str, role: str, index: int) -> str:
    return f"{name}-{role}-{index}"


def results_dir(body: dict, results_root: str = DEFAULT_RESULTS_ROOT) -> str:
    """Per-resource folder on the results volume, so a restarted gang finds its latest checkpoint."""
    explicit = body.get("spec", {}).get("resultsDir")
    if explicit:
        return explicit
    return f"{results_root.rstrip('/')}/{kind_info(body).task}/{body['metadata']['name']}"


def owner_reference(body: dict) -> dict:
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector_labels(body: dict) -> dict[str, str]:
    return {LABEL_JOB_NAME: body["metadata"]["name"], LABEL_KIND: kind_info(body).task}


def child_metadata(body: dict, name: str, extra_labels: dict[str, str] | None = None) -> dict:
    # The operator's labels win over anything a spec passes along (children are found by them).
    labels = {**(extra_labels or {}), **selector_labels(body), LABEL_MANAGED_BY: MANAGED_BY}
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(body)],
    }
