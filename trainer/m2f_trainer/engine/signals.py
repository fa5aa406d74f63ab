"""SIGTERM handling: exit 143 whether the signal lands before, during or after Lightning's fit loop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

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
    sigchld_before_quiet = None  # torch's DataLoader handler, put back when the task ends


def _ignore_child_exit(signum, frame) -> None:
    pass


def quiet_worker_exits() -> None:
    """Stop torch's DataLoader SIGCHLD handler from raising "DataLoader worker ... is killed" once we are
    terminating. That handler raises wherever the main thread happens to be, e.g. halfway through writing
    the SIGTERM checkpoint, which then fails ("unexpected pos"). A dead worker is still noticed when the
    DataLoader next waits on it, which is at a step boundary. A Python no-op rather than SIG_IGN: an
    ignored SIGCHLD makes the kernel reap children itself, which breaks multiprocessing's bookkeeping."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGCHLD, _ignore_child_exit)
    if previous is not _ignore_child_exit:
        _State.sigchld_before_quiet = previous


def _on_sigterm(signum, frame) -> None:
    _State.received = True
    quiet_worker_exits()  # a SIGTERM to the process group kills the DataLoader workers too
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
        if _State.sigchld_before_quiet is not None:  # a later task in this process gets worker checks back
            signal.signal(signal.SIGCHLD, _State.sigchld_before_quiet)
            _State.sigchld_before_quiet = None
        _State.deferred = False


class DeferSigtermToTrainer(Callback):
    """Hands SIGTERM to Lightning once its handler is installed (it registers just before the train loop)."""

    def on_train_start(self, trainer, pl_module) -> None:
        _State.deferred = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        _State.deferred = False


def is_termination(exc: BaseException) -> bool:
    """Whether a task that raised `exc` was terminated: our or Lightning's SIGTERM exception, or any error
    after a SIGTERM (one sent to the whole process group also kills DataLoader workers, which surfaces in
    the main process as "DataLoader worker ... is killed by signal: Terminated")."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exc, (Terminated, SIGTERMException)) or _State.received


T = TypeVar("T")


def until_sigterm(work: Callable[[], T]) -> T | None:
    """`work()`, or None when SIGTERM (a pod deletion) ended it: the signal becomes an exception that unwinds the
    work (temporary files are removed on the way out), and the task then exits EXIT_TERMINATED."""
    with terminate_on_sigterm():
        try:
            return work()
        except BaseException as exc:
            if is_termination(exc):
                return None
            raise


def failed_after_sigterm(exc: BaseException) -> bool:
    """An error raised after a SIGTERM is its fallout: DataLoader workers killed by the same signal (the
    next wait on them fails, or their queue breaks if one died while sending a batch), or peers already
    gone. Those surface while fetching a batch or in a forward/backward collective, not inside the
    optimizer step, so model and optimizer state are still the last completed step and can be saved."""
    return _State.received and isinstance(exc, Exception)
