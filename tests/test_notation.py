import ast

import pytest
import sympy as sp

from derivative_animator.math import notation
from derivative_animator.math.parsing import X, parse_function


def test_typed_form_round_trips_for_every_dataset_function(all_records):
    for record in all_records:
        expr = parse_function(record.function)
        assert notation.typed(expr) == record.function
        assert sp.srepr(parse_function(notation.typed(expr))) == sp.srepr(expr)


def test_code_reads_back_exactly_for_every_dataset_function(all_records):
    """sympy's own Python-like printing (`x**2*sin(x)`, `x**(1/3)`, `exp(x)`) of every
    dataset function reads back as the same expression, without running anything."""
    for record in all_records:
        expr = parse_function(record.function)
        assert notation.expr_from_code(ast.parse(str(expr), mode="eval")) == expr, record.function


@pytest.mark.parametrize("source, expected", [
    ("np.sin(t)**2", sp.sin(X) ** 2),
    ("math.exp(-t) * 3", 3 * sp.exp(-X)),
    ("1/2*t", X / 2),
    ("sp.Rational(3, 2)*t**sp.Rational(1, 2)", sp.Rational(3, 2) * sp.sqrt(X)),
    ("sp.pi*np.cos(np.pi*t)", sp.pi * sp.cos(sp.pi * X)),
])
def test_expr_from_code_accepts_common_spellings(source, expected):
    assert notation.expr_from_code(ast.parse(source, mode="eval"), variable="t") == expected


@pytest.mark.parametrize("source", [
    "__import__('os').system('true')", "t.__class__", "open('f')", "t if t else 1",
    "9**9**9**9", "[t]", "lambda: 1", "y + t",
])
def test_expr_from_code_refuses_anything_but_math(source):
    with pytest.raises(notation.CodeExpressionError):
        notation.expr_from_code(ast.parse(source, mode="eval"), variable="t")


@pytest.mark.parametrize("text, typed", [
    ("x*sin(x)", "x sin(x)"),
    ("exp(-x**2)", "e^(-x^2)"),
    ("log(x)/x", "ln(x)/x"),
    ("3*x**2 - 2*x + 1", "3x^2 - 2x + 1"),
    ("1/(x**2+1)", "1/(x^2 + 1)"),
    ("x**(3/2)", "x^(3/2)"),
    ("sin(x)**2", "sin(x)^2"),
])
def test_typed_notation_is_what_people_write(text, typed):
    assert notation.typed(parse_function(text)) == typed
