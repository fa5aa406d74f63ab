"""Pure build_* functions returning Kubernetes manifests (dicts) for a Mask2Former resource."""

from m2f_operator.builders.children import build_configmap, build_service, render_experiment
from m2f_operator.builders.pods import PodDefaults, Stage, build_gang, build_pod
from m2f_operator.builders.stages import build_stages

__all__ = [
    "PodDefaults",
    "Stage",
    "build_configmap",
    "build_gang",
    "build_pod",
    "build_service",
    "build_stages",
    "render_experiment",
]
