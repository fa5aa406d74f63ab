"""Operator-test fixtures: the Kubernetes API emulator (thread- or loop-backed), its kubeconfig, kubectl."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from m2f_devcluster.emulator import Emulator, EmulatorThread, run_emulator

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


@pytest.fixture()
def k8s_emulator() -> Iterator[EmulatorThread]:
    """A fresh API emulator on a background thread: `.url`, `.kubeconfig`, `.call(fn(store))`."""
    with run_emulator() as api:
        yield api


@pytest_asyncio.fixture()
async def k8s_emulator_async():
    """The same emulator on the test's own event loop (for async tests, e.g. kopf's KopfRunner in-loop)."""
    async with Emulator() as api:
        yield api


@pytest.fixture()
def k8s_client(k8s_emulator: EmulatorThread):
    """A kubernetes.client.ApiClient talking to the emulator."""
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=str(k8s_emulator.kubeconfig))
    yield client
    client.close()


@pytest.fixture()
def kubectl(k8s_emulator: EmulatorThread) -> Callable[..., subprocess.CompletedProcess]:
    """Run the real kubectl against the emulator: ``kubectl("get", "pods", "-o", "json")``."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (make install puts it in .venv/bin)")

    # A discovery cache per emulator: kubectl keys its cache by host:port, and a port reused by another
    # emulator with other CRDs would otherwise serve stale resource lists.
    argv = [KUBECTL, "--kubeconfig", str(k8s_emulator.kubeconfig),
            "--cache-dir", str(k8s_emulator.kubeconfig.parent / "kube-cache")]

    def run(*args: str, timeout: float = 60, check: bool = True, input: str | None = None):
        result = subprocess.run([*argv, *args],
                                capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    run.argv = argv  # for long-running `kubectl get -w`
    return run
