"""Run the emulator on a background thread with its own event loop (for sync tests and the dev cluster)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from m2f_devcluster.emulator.server import Emulator
from m2f_devcluster.emulator.store import ObjectStore

T = TypeVar("T")


class EmulatorThread:
    """An `Emulator` served from a daemon thread. `start()` returns once it accepts connections."""

    def __init__(self, **emulator_kwargs: Any):
        self._kwargs = emulator_kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.api: Emulator | None = None

    def start(self, timeout: float = 30.0) -> EmulatorThread:
        self._thread = threading.Thread(target=self._run, name="m2f-k8s-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the Kubernetes API emulator did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes API emulator failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() if it happened before serving
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with Emulator(**self._kwargs) as api:
            self.api = api
            self._started.set()
            await self._stop.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def call(self, fn: Callable[[ObjectStore], T], timeout: float = 30.0) -> T:
        """Run `fn(store)` on the emulator's loop (the store is loop-confined) and return its result."""
        assert self._loop is not None and self.api is not None, "start() the emulator first"
        api = self.api

        async def invoke() -> T:
            return fn(api.store)

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(invoke(), self._loop)
        return future.result(timeout)

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.base_url

    @property
    def kubeconfig(self) -> Path:
        assert self.api is not None and self.api.kubeconfig is not None
        return self.api.kubeconfig

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


@contextlib.contextmanager
def run_emulator(**emulator_kwargs: Any) -> Iterator[EmulatorThread]:
    """``with run_emulator() as api: api.url, api.kubeconfig`` — a thread-backed emulator."""
    with EmulatorThread(**emulator_kwargs) as thread:
        yield thread
