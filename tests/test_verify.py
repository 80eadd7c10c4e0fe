"""verify.first_passing: the one verification loop behind the CLI, the page and the evaluator."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from derivative_animator.eval.verify import first_passing
from derivative_animator.model.decoding import HEADER_REJECTED
from derivative_animator.model.generate import Generation


@dataclass
class Verdict:
    syntax: bool = True
    structure: bool = True
    executes: bool = True
    math: bool = True
    environment_error: bool = False

    @property
    def passed(self) -> bool:
        return self.syntax and self.structure and self.executes and self.math


def run(verdicts: list, attempts: int | None = None):
    """Try n writes code `try n` (or is abandoned at its header where verdicts[n] is None)."""
    checked, heard = [], []

    def write(attempt):
        stop = HEADER_REJECTED if verdicts[attempt - 1] is None else "eos"
        return Generation("x^2", f"try {attempt}", 0.5, 10, 1, stop)

    def check(attempt, generation):
        checked.append(attempt)
        assert generation.stop != HEADER_REJECTED, "an abandoned try is never checked"
        return verdicts[attempt - 1]

    tries = (
        write(attempt) for attempt in range(1, (attempts or len(verdicts)) + 1)
    )  # each written when asked for
    verification = first_passing(tries, check, heard.append)
    return verification, checked, [t.attempt for t in heard]


def test_the_first_passing_try_is_kept_and_no_more_are_written():
    verification, checked, heard = run([Verdict(math=False), Verdict(), Verdict()])
    assert verification.kept.attempt == 2 and verification.kept.generation.code == "try 2"
    assert checked == [1, 2] and heard == [1, 2] and len(verification.tries) == 2
    assert verification.seconds == pytest.approx(1.0)


def test_without_a_pass_the_try_passing_most_checks_is_kept_the_earliest_of_equals():
    verification, _, _ = run(
        [
            Verdict(math=False, executes=False),
            Verdict(math=False),
            Verdict(math=False),
            Verdict(syntax=False),
        ]
    )
    assert verification.kept.attempt == 2 and not verification.kept.result.passed


def test_a_try_abandoned_at_its_header_is_never_checked_nor_kept_but_its_time_counts():
    verification, checked, heard = run(
        [Verdict(math=False, executes=False), None, Verdict(math=False)]
    )
    assert checked == [1, 3] and heard == [1, 2, 3]
    assert verification.kept.attempt == 3 and verification.tries[1].result is None
    assert verification.seconds == pytest.approx(1.5)
    only_abandoned, _, _ = run([None, None])
    assert only_abandoned.kept is None and len(only_abandoned.tries) == 2


def test_a_machine_that_cannot_render_stops_the_tries():
    verification, checked, _ = run([Verdict(executes=None, environment_error=True), Verdict()])
    assert checked == [1] and verification.kept.attempt == 1


def test_one_attempt_is_the_first_try_whatever_it_scored():
    verification, checked, _ = run([Verdict(syntax=False), Verdict()], attempts=1)
    assert checked == [1] and verification.kept.attempt == 1
