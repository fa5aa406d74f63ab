"""Errors in what the user wrote: the CLI reports them in one line with exit 2, the operator as InvalidSpec."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (spec, data, arguments). CLI: one line on stderr, exit 2."""

    exit_code = 2


class SpecError(UserError):
    """The experiment spec is invalid; the message names the field path, the value and what is allowed."""
