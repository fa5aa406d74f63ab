"""Suspend policy: spec.suspend deletes the running gang and keeps the resource; clearing it resumes."""

from __future__ import annotations


def decide_suspend(spec: dict, phase: str) -> str | None:
    """Returns "suspend", "resume" or None (nothing to do)."""
    if spec.get("suspend"):
        return None if phase == "Suspended" else "suspend"
    return "resume" if phase == "Suspended" else None
