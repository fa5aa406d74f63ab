"""The pod's termination message: a finishing task's summary, which the operator copies into the status."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("m2f_trainer.tasks")

ENV_VAR = "M2F_TERMINATION_MESSAGE_PATH"


def write_termination_summary(metrics: dict, artifacts: dict) -> None:
    """`{"metrics": {...}, "artifacts": {...}}` to $M2F_TERMINATION_MESSAGE_PATH (docs/architecture.md).

    Only top-level finite numbers are kept (per-class tables stay in metrics.json), so the message
    stays far below Kubernetes' 4 KiB limit. Outside a pod (variable unset) nothing is written.
    """
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    numbers = {str(k): float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
    try:
        Path(path).write_text(json.dumps({"metrics": numbers, "artifacts": artifacts}))
    except OSError as exc:  # informative only: the metrics file is the record
        log.warning("could not write the termination message %s: %s", path, exc)
