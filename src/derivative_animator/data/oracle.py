"""What the project knows about a typed function without any model: its canonical form,
derivative, level and rule steps (`describe`: `derivanim parse`), and the oracle's scene, the
dataset's template with the true derivative (`template_scene`: the `template` baseline,
`derivanim generate --backend template`, the page's reference)."""

from __future__ import annotations

import re

from derivative_animator.data import scenes
from derivative_animator.math import curriculum, notation
from derivative_animator.math.differentiate import differentiate, level_of
from derivative_animator.math.parsing import parse_function


class CannotAnimate(ValueError):
    """A function with no interval where it is real, finite, readable and not constant."""


def describe(text: str) -> dict:
    """Everything `parse --json` reports about a typed function."""
    expr = parse_function(text)
    derivative, steps = differentiate(expr)
    level = level_of(steps)
    return {
        "input": text,
        "function": notation.typed(expr),
        "sympy": str(expr),
        "derivative": notation.typed(derivative),
        "derivative_sympy": str(derivative),
        "function_latex": notation.latex(expr),
        "derivative_latex": notation.latex(derivative),
        "level": level,
        "level_name": curriculum.LEVEL_NAMES[level],
        "steps": [
            {"rule": s.rule, "expression": str(s.expr), "derivative": str(s.derivative)}
            for s in scenes.shown_steps(steps)
        ],
    }


def template_scene(function: str, style: str) -> str:
    analysed = curriculum.analyse(parse_function(function), wider=True)
    if analysed is None:
        raise CannotAnimate(
            f"cannot animate f(x) = {function}: it is constant, or f and f' are not real, "
            "finite and readable together on any interval tried (centred between -100 and 100, "
            "0.04 to 6 wide)"
        )
    return scenes.scene_code(
        analysed.expr, analysed.derivative, analysed.steps, analysed.x_range, style
    )


def with_true_derivative(code: str, function: str) -> str | None:
    """--repair: the model's scene with its `f'(x) = ...` line replaced by the true derivative."""
    analysed = curriculum.analyse(parse_function(function), wider=True)
    if analysed is None:
        return None
    repaired, count = re.subn(
        r"^f'\(x\) = .*$", f"f'(x) = {analysed.steps[-1].worked}", code, count=1, flags=re.MULTILINE
    )
    return repaired if count else None
