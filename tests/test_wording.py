"""What the generation service says (eval/wording.py): a checked scene's first failure in words,
and verified generation in one sentence. How `write` tells its steps: tests/test_service.py."""

from types import SimpleNamespace

import pytest

from derivative_animator.data import oracle
from derivative_animator.eval import wording
from derivative_animator.eval.verify import Try, Verification, Verified
from derivative_animator.render.checks import CheckResult

RIGHT = oracle.template_scene("x^2", "tangent")
WRONG = RIGHT.replace("f'(x) = 2x", "f'(x) = 3x", 1)


@pytest.mark.parametrize(
    "result, code, said",
    [
        (
            CheckResult(syntax=False, error="syntax: bad line 3"),
            "(",
            "the code does not parse (bad line 3)",
        ),
        (CheckResult(syntax=True, structure=False), RIGHT, "the code holds no Manim scene"),
        (
            CheckResult(syntax=True, structure=True, executes=True, math=False),
            WRONG,
            "the derivative is wrong (it wrote 3x)",
        ),
        (  # the stated f' is right: the math failed for another reason, which is said
            CheckResult(syntax=True, structure=True, math=False, error="math: f' undefined at 0"),
            RIGHT,
            "the math check failed (f' undefined at 0)",
        ),
        (
            CheckResult(
                syntax=True,
                structure=True,
                math=True,
                executes=False,
                error="executes: " + "e" * 200,
            ),
            RIGHT,
            "the scene did not render (" + "e" * 157 + "...)",
        ),
        (
            CheckResult(syntax=True, structure=True, math=True, environment_error=True),
            RIGHT,
            "could not be checked: this machine cannot render",
        ),
        (
            CheckResult(
                syntax=True,
                structure=True,
                executes=True,
                math=True,
                layout=False,
                layout_problems=["a label leaves the frame"],
            ),
            RIGHT,
            "right and renders, but the layout check failed: a label leaves the frame",
        ),
    ],
)
def test_a_verdict_names_the_first_failure(result, code, said):
    assert wording.verdict(result, code, "x^2") == said


def _try(attempt: int, passed: bool, math: bool = True) -> Try:
    result = CheckResult(syntax=True, structure=True, executes=passed, math=math)
    return Try(attempt, SimpleNamespace(code="", seconds=1.0), result)


@pytest.mark.parametrize(
    "tries, completed, said",
    [
        ([_try(1, True)], 0, "greedy's scene passed every check"),
        (
            [_try(1, False, math=False), _try(2, False), _try(3, True)],
            2,
            "greedy's scene had a wrong derivative; 3 of 8 sampled derivatives were right; "
            "the second passed every check",
        ),
        (
            [_try(1, False, math=False), _try(2, False), _try(3, False)],
            2,
            "greedy's scene had a wrong derivative; 3 of 8 sampled derivatives were right; "
            "none of the 2 completed passed every check",
        ),
    ],
)
def test_the_story_says_which_try_passed(tries, completed, said):
    kept = next((t for t in tries if t.result.passed), tries[0])
    verified = Verified(Verification(kept, tries), sampled=8, right=3, completed=completed)
    assert wording.story(verified) == said


@pytest.mark.parametrize(
    "right, completing, ending",
    [
        (1, 1, "1 is right; writing a scene from it"),
        (3, 1, "3 are right; writing a scene from the first"),
        (2, 0, "2 are right; the first try already had that header, no other try"),
        (0, 0, "0 are right; no other try"),
    ],
)
def test_the_header_batch_says_what_comes_next(right, completing, ending):
    verified = Verified(sampled=8, right=right, header_seconds=1.5)
    said = wording.sampled_step(verified, completing)
    assert said == f"sampled 8 other derivatives in 1.5 s: {ending}"
