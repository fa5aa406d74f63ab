"""SIGTERM handling: exit 143 whether the signal lands before, during or after Lightning's fit loop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

EXIT_TERMINATED = 143  # 128 + SIGTERM, what the operator's failure policy reads as "terminated"


class Terminated(BaseException):
    """SIGTERM arrived outside the training loop (setup, data loading, evaluation): unwind and exit 143."""


class _State:
    # True while Lightning's fit loop owns SIGTERM: it finishes the current step, then raises SIGTERMException.
    # Lightning chains to the handler that was installed before it, so ours must stay quiet then.
    deferred = False
    received = False


def _on_sigterm(signum, frame) -> None:
    _State.received = True
    if not _State.deferred:
        raise Terminated(f"received signal {signum}")
    log.info("SIGTERM: finishing the current step, then saving a checkpoint")


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """For the duration of a task, SIGTERM raises Terminated (mapped to exit 143) unless the training loop
    has taken over, in which case Lightning stops cleanly at the next step boundary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.deferred = False
    _State.received = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _State.deferred = False


class DeferSigtermToTrainer(Callback):
    """Hands SIGTERM to Lightning once its handler is installed (it registers just before the train loop)."""

    def on_train_start(self, trainer, pl_module) -> None:
        _State.deferred = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        _State.deferred = False


def sigterm_received() -> bool:
    return _State.received


def is_termination(exc: BaseException) -> bool:
    """Whether a task that raised `exc` was terminated: our or Lightning's SIGTERM exception, or any error
    after a SIGTERM (one sent to the whole process group also kills DataLoader workers, which surfaces in
    the main process as "DataLoader worker ... is killed by signal: Terminated")."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exc, (Terminated, SIGTERMException)) or _State.received


def worker_killed_by_sigterm(exc: BaseException) -> bool:
    """A DataLoader worker died of the same SIGTERM: the main process is between steps, so its model and
    optimizer state are consistent and can be saved."""
    return _State.received and isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc)
