"""Errors a user can meet: each says what was wrong and where, and prints without a traceback."""

from __future__ import annotations


class EvaError(Exception):
    """Base of every user-facing error; the CLI prints its message and exits with code 2."""


class InputError(EvaError, ValueError):
    """A bad input file or value: the message names the file and line, or the prompt id."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' load errors run to paragraphs)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class StepError(EvaError):
    """A step cannot run: a missing upstream step, an inconsistent run directory."""
