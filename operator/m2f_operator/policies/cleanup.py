"""Cleanup policy: which pods of a finished resource to delete (spec.cleanPodPolicy).

Running (default): pods still running after the outcome is known (a pod whose trainer ended while a sidecar
runs on counts as running); All: every pod; None: keep all, e.g. to read logs.
"""

from __future__ import annotations

from m2f_operator.policies.observe import PodView

CLEAN_POD_POLICIES = ("Running", "All", "None")


def pods_to_clean(spec: dict, pods: list[PodView]) -> list[str]:
    policy = spec.get("cleanPodPolicy", "Running")
    if policy == "None":
        return []
    candidates = [pod for pod in pods if not pod.terminating]
    if policy == "All":
        return [pod.name for pod in candidates]
    # A pod whose trainer ended while a sidecar runs on still holds its node's resources.
    return [pod.name for pod in candidates if not pod.finished or pod.lingering]
