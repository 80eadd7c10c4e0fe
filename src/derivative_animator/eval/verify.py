"""Verified generation's loop: the first scene that passes every check, behind
`derivanim generate`, the web page and the evaluator's `verified` baseline (through
`eval/service.py`, which says what the tries are).

Tries come one at a time (`first_passing` asks for the next only when the last one failed).
The scene kept is the first that passes every check, else the one that passed the most checks
(the earliest of equals). A try abandoned at a wrong math header (`HEADER_REJECTED`) is not a
scene and is never kept. A machine that cannot render stops the loop: more tries cannot help.
Each caller says how a try is checked (a render, or an evaluation row); the policy is here only.
`Verified` is what the service's verified generation did: these tries and the headers behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from derivative_animator.render.checks import CHECKS

if TYPE_CHECKING:  # torch stays out of `derivanim parse` and `--help`, which import this module
    from derivative_animator.model.generate import Generation


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


@dataclass
class Verified:
    """What verified generation did (`GenerationService.verify`): its tries (`verification`) and
    what the sampled math headers gave."""

    verification: Verification = field(default_factory=Verification)
    sampled: int = 0  # math headers sampled (0: the first scene passed, or one attempt only)
    right: int = 0  # of them, those whose derivative the math judge accepts
    completed: int = 0  # of the distinct right ones, completed into scenes and checked
    header_seconds: float = 0.0  # the batch that sampled them

    @property
    def kept(self) -> Try | None:
        return self.verification.kept

    @property
    def seconds(self) -> float:
        return self.verification.seconds + self.header_seconds


def checks_passed(result) -> int:
    return sum(bool(getattr(result, name)) for name in CHECKS)


def first_passing(
    tries: Iterable[Generation],
    check: Callable[[int, Generation], Any],
    report: Callable[[Try], None] = lambda attempt: None,
) -> Verification:
    """Check each try (attempt 1, 2, ... in the order `tries` yields them) until one passes;
    check(attempt, generation) judges it (anything with the check flags and `passed`);
    report(try) hears of each try as it is judged or abandoned."""
    from derivative_animator.model.decoding import HEADER_REJECTED

    verification = Verification()
    for attempt, generation in enumerate(tries, 1):
        current = Try(attempt, generation)
        verification.tries.append(current)
        if current.generation.stop == HEADER_REJECTED:
            report(current)
            continue
        current.result = check(attempt, current.generation)
        report(current)
        if current.result.passed:
            verification.kept = current
            break
        if verification.kept is None or checks_passed(current.result) > checks_passed(
            verification.kept.result
        ):
            verification.kept = current
        if getattr(current.result, "environment_error", False):
            break
    return verification
