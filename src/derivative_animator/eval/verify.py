"""Verified generation, best of n: the one loop behind `derivanim generate`, the web page and
the evaluator's `verified` baseline.

Attempt 1 is the first scene (greedy by default); later attempts sample until a scene passes
every check. The scene kept is the first that passes, else the one that passed the most checks
(the earliest of equals). A try abandoned at a wrong math header (`HEADER_REJECTED`) is not a
scene and is never kept. A machine that cannot render stops the loop: more tries cannot help.
Each caller says how a try is written (its seeds and temperatures) and how it is checked (a
render, or an evaluation row); the policy is here only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from derivative_animator.model.decoding import HEADER_REJECTED
from derivative_animator.model.generate import Generation
from derivative_animator.render.checks import CHECKS


@dataclass
class Try:
    attempt: int
    generation: Generation
    result: Any = None  # what `check` returned (None: abandoned at its header, never checked)


@dataclass
class Verification:
    kept: Try | None = None  # None only if every try was abandoned at its header
    tries: list[Try] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Generation time of every try, the abandoned ones too."""
        return sum(t.generation.seconds for t in self.tries)


def checks_passed(result) -> int:
    return sum(bool(getattr(result, name)) for name in CHECKS)


def best_of_n(
    write: Callable[[int], Generation],
    check: Callable[[int, Generation], Any],
    attempts: int,
    report: Callable[[Try], None] = lambda attempt: None,
) -> Verification:
    """write(attempt) makes a try, check(attempt, generation) judges it (anything with the
    check flags and `passed`); report(try) hears of each try as it is judged or abandoned."""
    verification = Verification()
    for attempt in range(1, attempts + 1):
        current = Try(attempt, write(attempt))
        verification.tries.append(current)
        if current.generation.stop == HEADER_REJECTED:
            report(current)
            continue
        current.result = check(attempt, current.generation)
        report(current)
        if current.result.passed:
            verification.kept = current
            break
        if verification.kept is None or checks_passed(current.result) > checks_passed(verification.kept.result):
            verification.kept = current
        if getattr(current.result, "environment_error", False):
            break
    return verification
