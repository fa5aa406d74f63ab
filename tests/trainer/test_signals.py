"""SIGTERM policy units: deferral to Lightning, quieting DataLoader-worker deaths, and what counts as fallout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from m2f_trainer.engine.signals import (
    DeferSigtermToTrainer,
    Terminated,
    failed_after_sigterm,
    is_termination,
    terminate_on_sigterm,
)


class WorkerDied(RuntimeError):
    pass


def _torch_like_sigchld(signum, frame):
    # What torch's DataLoader installs: raise in the main thread, wherever it happens to be.
    raise WorkerDied("DataLoader worker (pid 1) is killed by signal: Terminated.")


@pytest.fixture
def raising_sigchld():
    previous = signal.signal(signal.SIGCHLD, _torch_like_sigchld)
    yield
    signal.signal(signal.SIGCHLD, previous)


def _child_exits() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_sigterm_outside_the_training_loop_raises_terminated():
    with terminate_on_sigterm(), pytest.raises(Terminated):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode


def test_deferred_sigterm_quiets_worker_deaths_until_the_task_ends(raising_sigchld):
    sigterm_before = signal.getsignal(signal.SIGTERM)
    with terminate_on_sigterm():
        DeferSigtermToTrainer().on_train_start(None, None)
        with pytest.raises(WorkerDied):  # before a SIGTERM a dead worker is still an error
            _child_exits()
        os.kill(os.getpid(), signal.SIGTERM)  # deferred: Lightning stops at the next step boundary
        _child_exits()  # the group SIGTERM's dead workers no longer raise mid-save
    assert signal.getsignal(signal.SIGCHLD) is _torch_like_sigchld  # put back for a later task
    assert signal.getsignal(signal.SIGTERM) is sigterm_before


@pytest.mark.parametrize("exception, after_sigterm, expected", [
    (RuntimeError("DataLoader worker (pid 7) exited unexpectedly"), True, True),
    (ConnectionResetError("worker died while sending a batch"), True, True),
    (RuntimeError("CUDA out of memory"), False, False),  # a real failure, no SIGTERM: not saved as one
    (KeyboardInterrupt(), True, False),  # not an error the loop raised
])
def test_failed_after_sigterm(exception, after_sigterm, expected):
    with terminate_on_sigterm():
        DeferSigtermToTrainer().on_train_start(None, None)
        if after_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)
        assert failed_after_sigterm(exception) is expected
        assert is_termination(exception) is after_sigterm
