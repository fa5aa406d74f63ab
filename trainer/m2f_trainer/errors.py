"""User-facing errors: bad specs, data or arguments that the CLI reports in one line with exit 2."""

from __future__ import annotations

import re

# The spec's errors are the root of the hierarchy: the trainer's CLI catches UserError for all of them.
from m2f_spec.errors import SpecError, UserError

__all__ = ["DataError", "SpecError", "UserError", "one_line"]

# torch re-raises an exception from a DataLoader worker (or its pin-memory thread) as the same type with
# the worker's whole traceback as message: "Caught DataError in DataLoader worker process 0.\nOriginal
# Traceback (most recent call last): ...\nm2f_trainer.errors.DataError: <the original message>".
_WORKER_WRAPPED = re.compile(r"Caught \w+ in [^\n]*\.\nOriginal Traceback")


class DataError(UserError):
    """A dataset is invalid or unreadable; the message names the file and, where relevant, the id."""


def one_line(exc: BaseException) -> str:
    """The message a user sees: the original one for an exception re-raised across a DataLoader worker."""
    text = str(exc)
    if not _WORKER_WRAPPED.match(text):
        return text
    # The traceback ends with "<module>.<Type>: <message>" (the bare type for builtins).
    cls = type(exc)
    for name in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
        start = text.rfind(f"\n{name}: ")
        if start >= 0:
            return text[start + len(name) + 3 :].strip()
    return text.strip().splitlines()[-1]
