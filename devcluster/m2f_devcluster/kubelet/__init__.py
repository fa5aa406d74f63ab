"""A local kubelet for the dev cluster: runs the emulator's Pods as local process groups.

See `m2f_devcluster.kubelet.kubelet` for the lifecycle and `podspec` for how container paths, cluster
DNS names and ports are mapped onto one machine. ``with run_kubelet(api_url, data_dir) as kubelet``
serves from a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from m2f_devcluster.kubelet.kubelet import LOST_NODE_ANNOTATION, Kubelet
from m2f_devcluster.kubelet.podspec import PathMap, PodConfigError, rewrite_cluster_dns

__all__ = ["LOST_NODE_ANNOTATION", "Kubelet", "KubeletThread", "PathMap", "PodConfigError", "rewrite_cluster_dns",
           "run_kubelet"]


class KubeletThread:
    """A `Kubelet` on a daemon thread with its own event loop."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._args, self._kwargs = args, kwargs
        self.kubelet: Kubelet | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="m2f-local-kubelet", daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self.kubelet = Kubelet(*self._args, **self._kwargs)
        self._ready.set()
        try:
            self._loop.run_until_complete(self.kubelet.run())
        finally:
            self._loop.close()

    def start(self, timeout: float = 60) -> KubeletThread:
        """Start; return once the Nodes are registered (or the kubelet stopped, or `timeout` passed)."""
        self._thread.start()
        self._ready.wait(10)
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and not self.kubelet.ready.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def lose_node(self, name: str, timeout: float = 10) -> None:
        assert self._loop is not None and self.kubelet is not None
        asyncio.run_coroutine_threadsafe(self.kubelet.lose_node(name), self._loop).result(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self._loop is not None and self.kubelet is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.kubelet.stop)
        self._thread.join(timeout)


@contextlib.contextmanager
def run_kubelet(*args: Any, **kwargs: Any) -> Iterator[KubeletThread]:
    thread = KubeletThread(*args, **kwargs).start()
    try:
        yield thread
    finally:
        thread.stop()
