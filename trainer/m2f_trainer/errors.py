"""User-facing errors: bad specs, data or arguments that the CLI reports in one line with exit 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (spec, data, arguments). CLI: one line on stderr, exit 2."""

    exit_code = 2


class SpecError(UserError):
    """The experiment spec is invalid; the message names the field path, the value and what is allowed."""


class DataError(UserError):
    """A dataset is invalid or unreadable; the message names the file and, where relevant, the id."""
