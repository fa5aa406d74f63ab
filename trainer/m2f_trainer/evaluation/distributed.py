"""Gather evaluator states across ranks (torch.distributed when initialised, else this process only)."""

from __future__ import annotations

import sys


def all_gather_objects(state) -> list:
    """Every rank's picklable `state`, in rank order; `[state]` when not running distributed."""
    # A process group can only exist if torch.distributed was imported already: don't pay torch's import.
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def merged_across_ranks(local, empty):
    """``empty`` (a fresh evaluator of ``local``'s kind) with every rank's ``state_dict()`` merged in rank order."""
    for state in all_gather_objects(local.state_dict()):
        empty.merge(state)
    return empty
