"""Success policy: a stage succeeds when every one of its replicas exited 0."""

from __future__ import annotations

from m2f_operator.builders.pods import Stage
from m2f_operator.policies.observe import PodView


def stage_succeeded(stage: Stage, pods: list[PodView]) -> bool:
    """`pods` are the current attempt's pods of this stage."""
    succeeded = {pod.index for pod in pods if pod.role == stage.role and pod.phase == "Succeeded"}
    return succeeded >= set(range(stage.replicas))
