"""User-facing errors: bad specs, data or arguments that the CLI reports in one line with exit 2."""

from __future__ import annotations

# The spec's errors are the root of the hierarchy: the trainer's CLI catches UserError for all of them.
from m2f_spec.errors import SpecError, UserError

__all__ = ["DataError", "SpecError", "UserError"]


class DataError(UserError):
    """A dataset is invalid or unreadable; the message names the file and, where relevant, the id."""
