"""The two control planes the operator and e2e tests run on, and the rule for when the real one is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BACKENDS = ("emulator", "real")
SHARED_KUBE = Path(__file__).resolve().parents[2] / "shared" / "kube"


def real_control_plane_missing() -> str | None:
    """Why the real control plane cannot run here (None: it can)."""
    from m2f_devcluster.controlplane.binaries import BinariesError, find_binaries

    try:
        find_binaries(build=False)
    except BinariesError as exc:
        return f"real control plane unavailable: {exc}"
    if shutil.which("openssl") is None:
        return "real control plane unavailable: the openssl command is missing"
    return None


def require_real_control_plane() -> None:
    """Skip with the reason where the real control plane cannot run; in CI with shared/kube beside the clone
    that is a failure, never a silent skip (the real-backend tier must run there)."""
    missing = real_control_plane_missing()
    if missing is None:
        return
    if os.environ.get("CI") and SHARED_KUBE.is_dir():
        pytest.fail(f"{missing} (CI has {SHARED_KUBE}: the real-backend tier must run)")
    pytest.skip(missing)
