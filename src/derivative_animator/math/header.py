"""The math header every scene opens with: a docstring holding f and f' as typed, then the
plotting interval, ending at `MATH_HEADER_END`. It is the only part of a scene that differs
between functions, so decoding judges it before the body is written
(docs/decisions/0002-typed-math-header.md)."""

from __future__ import annotations

import re

MATH_HEADER_END = 'x = sp.Symbol("x")'  # the header above it is all that differs per function


def math_header_length(code: str) -> int | None:
    """Characters of a scene's math header (up to MATH_HEADER_END), None if it has none."""
    index = code.find(MATH_HEADER_END)
    return index if index >= 0 else None


def typed_formulas(docstring: str | None) -> tuple[str, str] | None:
    """(f, f') as a scene's docstring gives them, split the way the scene splits them
    (`typed`): its first and last lines, each `... = <math>`, with any worked steps between
    (`(u)' = ...`, data.worked_steps) also of that shape. None for any other docstring."""
    if docstring is None:
        return None
    lines = docstring.strip().split("\n")
    if len(lines) < 2 or any(" = " not in line for line in lines):
        return None
    return lines[0].split(" = ", 1)[1], lines[-1].split(" = ", 1)[1]


def derivative_line(code: str) -> str | None:
    """What a scene states as f'(x) (its header's `f'(x) = ...` line), or None."""
    found = re.search(r"^f'\(x\) = (.*)$", code, flags=re.MULTILINE)
    return found.group(1).strip() if found else None
