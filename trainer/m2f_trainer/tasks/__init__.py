"""Task commands run by `m2f <task>`: each module exposes `main(argv) -> int` (exit codes: docs/exit-codes.md)."""

from __future__ import annotations

import logging
import sys


def setup_logging(rank_prefix: str = "") -> None:
    """Plain timestamped lines on stderr (what `kubectl logs` shows); idempotent."""
    root = logging.getLogger()
    if any(getattr(h, "_m2f", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._m2f = True
    handler.setFormatter(logging.Formatter(f"%(asctime)s {rank_prefix}%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
