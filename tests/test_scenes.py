"""Scene templates: the rule steps a scene shows, and the header that is all that differs."""

from __future__ import annotations

import ast

import pytest
import sympy as sp

from derivative_animator.data import scenes
from derivative_animator.math.differentiate import differentiate
from derivative_animator.math.header import math_header_length, typed_formulas
from derivative_animator.math.judge import expressions_equal
from derivative_animator.math.parsing import X, parse_function


def scene_globals(code: str) -> dict:
    """Run a template scene's module level (our own oracle code, not generated code)."""
    namespace: dict = {}
    exec(compile(code.split("\nclass ")[0], "<scene>", "exec"), namespace)
    return namespace


def graphs_scene(function: str) -> str:
    expr = parse_function(function)
    derivative, steps = differentiate(expr)
    return scenes.scene_code(expr, derivative, steps, (0.5, 2), "graphs")


@pytest.fixture(scope="module")
def rule_steps():
    """The rule walker every graphs scene carries (it reads only its globals x and sp)."""
    return scene_globals(graphs_scene("x^2"))["rule_steps"]


def shown_by_differentiate(function: str) -> list[tuple[str, sp.Expr, sp.Expr]]:
    _, steps = differentiate(parse_function(function))
    return [(s.rule, s.expr, s.derivative) for s in scenes.shown_steps(steps)]


def test_rule_steps_agree_with_differentiate_on_every_dataset_function(all_records, rule_steps):
    for record in all_records:
        shown = rule_steps(parse_function(record.function))
        expected = shown_by_differentiate(record.function)
        assert [(rule, part) for rule, part, _ in shown] == [
            (rule, part) for rule, part, _ in expected
        ], record.function


@pytest.mark.parametrize(
    "function",
    [
        "1/(x sin(x))",
        "x^x",
        "e^{-x^2}",
        "sec(x) + csc(x)",
        "3x",
        "arccot(x)",
        "arcsec(x) + arcsinh(x)",
        "x^2 sin(x)/ln(x)",
        "2^x",
        "sqrt(x) arctan(x)",
        "sinh(x) cosh(x)",
    ],
)
def test_rule_steps_of_edge_cases_and_their_derivatives(function, rule_steps):
    shown, expected = rule_steps(parse_function(function)), shown_by_differentiate(function)
    assert [(r, p) for r, p, _ in shown] == [(r, p) for r, p, _ in expected]
    for (_, _, derivative), (_, _, right) in zip(shown, expected, strict=True):
        assert expressions_equal(derivative, right, (0.5, 2))[0], function


def test_only_the_rule_steps_style_carries_the_walker(all_records):
    for record in all_records:
        assert ("def rule_steps" in record.completion) == (record.style == "graphs"), record.id
    assert (
        scene_globals(graphs_scene("x"))["rule_steps"](X) == []
    )  # the scene then shows d/dx x = 1


def test_below_the_math_header_every_scene_of_a_style_is_the_same(all_records):
    rests = {}
    for record in all_records:
        end = math_header_length(record.completion)
        header = record.completion[:end]
        assert (
            header.startswith('"""\nf(x) = ')
            and "\nf'(x) = " in header
            and "X_MIN, X_MAX = " in header
        )
        rests.setdefault(record.style, set()).add(record.completion[end:])
    assert {style: len(texts) for style, texts in rests.items()} == {
        style: 1 for style in scenes.STYLES
    }
    assert math_header_length("print('no header')") is None


def test_the_scene_and_the_math_check_read_the_typed_docstring_alike(all_records):
    """The scene reads its docstring with sympy's parser (`typed`), the math check with
    `parse_function`: on every dataset scene both give f and the true derivative."""
    for record in all_records:
        namespace = scene_globals(record.completion)
        f_text, df_text = typed_formulas(
            ast.get_docstring(ast.parse(record.completion), clean=False)
        )
        function, x_range = parse_function(record.function), tuple(record.x_range)
        for read, text, expected in (
            (namespace["f_expr"], f_text, function),
            (namespace["df_expr"], df_text, sp.diff(function, X)),
        ):
            assert expressions_equal(read, expected, x_range)[0], (record.id, text)
            assert expressions_equal(parse_function(text), expected, x_range)[0], (record.id, text)


@pytest.mark.parametrize(
    "docstring, expected",
    [
        ("\nf(x) = x^2\nf'(x) = 2x\n", ("x^2", "2x")),
        ("f(x) = x^2\nf'(x) = 2x", ("x^2", "2x")),
        ("\nf(x) = x^2\n", None),  # one line: the scene's unpacking fails, no derivative given
        ("\nf(x) = x^2\nf'(x) = 2x\nmore\n", None),
        (
            "\nf(x) = x^2 + x\n(x^2)' = 2x\nf'(x) = 2x + 1\n",
            ("x^2 + x", "2x + 1"),
        ),  # worked steps between
        ("\nf(x) = x^2 + x\n(x^2)' is 2x\nf'(x) = 2x + 1\n", None),
        ("\nf(x): x^2\nf'(x) = 2x\n", None),
        (None, None),
    ],
)
def test_typed_formulas_split_the_docstring_as_the_scene_does(docstring, expected):
    assert typed_formulas(docstring) == expected


def test_worked_steps_sit_between_f_and_f_prime_and_both_readers_skip_them():
    """data.worked_steps: one `(u)' = ...` line per rule application before f' (the last step
    is f' itself); the scene and the math check still read f and f' alike."""
    from derivative_animator.data import dataset
    from derivative_animator.data.dataset_schema import DataConfig

    config = DataConfig(
        sizes={"train": 8, "validation": 4, "test": 4}, tree_practice=0.5, worked_steps=True
    )
    records = [r for split in dataset.generate_splits(config).values() for r in split]
    step_lines = 0
    for record in records:
        lines = ast.get_docstring(ast.parse(record.completion), clean=False).strip().split("\n")
        assert lines[0].startswith("f(x) = ") and lines[-1].startswith("f'(x) = ")
        function = parse_function(record.function)
        _, steps = differentiate(function)
        assert lines[1:-1] == scenes.worked_lines(steps)
        step_lines += len(lines) - 2
        namespace = scene_globals(record.completion)
        f_text, df_text = typed_formulas("\n".join(lines))
        for read, text, expected in (
            (namespace["f_expr"], f_text, function),
            (namespace["df_expr"], df_text, sp.diff(function, X)),
        ):
            assert expressions_equal(read, expected, tuple(record.x_range))[0], (record.id, text)
    assert step_lines > 2 * len(records)
    assert config.to_dict()["worked_steps"] is True and "worked_steps" not in DataConfig().to_dict()
