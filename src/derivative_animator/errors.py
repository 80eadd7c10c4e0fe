"""Errors as the user reads them: one line, with what to do."""

from __future__ import annotations


class MachineProblem(RuntimeError):
    """The machine lacks something a run needs (isolation, LaTeX); the message says the fix."""


def one_line(err: BaseException) -> str:
    """An exception as one line of a report: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__
