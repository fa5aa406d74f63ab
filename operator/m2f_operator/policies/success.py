"""Success policy: AllWorkers (every replica of a stage exited 0) or Rank0 (worker 0 exited 0 finishes it)."""

from __future__ import annotations

from m2f_operator.builders.pods import Stage
from m2f_operator.policies.observe import PodView

ALL_WORKERS, RANK0 = "AllWorkers", "Rank0"
SUCCESS_POLICIES = (ALL_WORKERS, RANK0)


def stage_succeeded(stage: Stage, pods: list[PodView], policy: str = ALL_WORKERS) -> bool:
    """`pods` are the current attempt's pods of this stage. Under Rank0, a worker hung in teardown after rank 0
    finished (its collectives done, its checkpoint written by rank 0) no longer holds the job or its GPUs."""
    succeeded = {pod.index for pod in pods if pod.role == stage.role and pod.phase == "Succeeded"}
    if policy == RANK0:
        return 0 in succeeded
    return succeeded >= set(range(stage.replicas))
