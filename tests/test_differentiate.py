import cmath

import pytest
import sympy as sp

from derivative_animator.math.differentiate import (
    RULE_LEVEL,
    UnsupportedFunction,
    differentiate,
    level_of,
)
from derivative_animator.math.parsing import X, parse_function


def same(a, b) -> bool:
    """Equal values at every sample point where both are real, on at least three points; else
    symbolic equality (sec^2 vs 1 + tan^2 needs a rewrite in terms of cos first). Numbers first:
    sympy's simplify ran for minutes on a quotient of cot and arctan. Only where both are real:
    arcsec's 1/(|u| sqrt(u^2 - 1)) and sympy's 1/(u^2 sqrt(1 - 1/u^2)) agree only there."""
    compared = 0
    for point in (-3.7 + 0.29 * i for i in range(26)):
        try:
            got, want = (complex(sp.N(e.subs(X, point))) for e in (a, b))
        except (TypeError, ValueError):  # a pole: zoo has no complex value
            continue
        if not all(cmath.isfinite(v) and abs(v.imag) < 1e-12 for v in (got, want)):
            continue
        if abs(got - want) > 1e-8 * max(1.0, abs(want)):
            return False
        compared += 1
    if compared >= 3:
        return True
    difference = a - b
    return sp.simplify(difference) == 0 or sp.simplify(difference.rewrite(sp.cos)) == 0


def test_every_dataset_derivative_equals_sympy(all_records):
    for record in all_records:
        expr = parse_function(record.function)
        derivative, steps = differentiate(expr)
        assert same(derivative, sp.diff(expr, X)), record.function
        assert steps[-1].expr == expr  # the last step is the whole function
        for step in steps:  # and every recorded step is itself right
            assert same(sp.diff(step.expr, X), step.derivative), (record.function, step)


@pytest.mark.parametrize(
    "text, level, rules",
    [
        ("5", 1, {"constant rule"}),
        ("3x^4 - 2x^2 + 5", 1, {"power rule", "constant multiple rule", "sum rule"}),
        ("1/x^2", 1, {"power rule"}),
        ("sqrt(x)", 2, {"root rule"}),
        ("2sin(x)", 2, {"trig rule", "constant multiple rule"}),
        ("arctan x", 2, {"inverse trig rule"}),
        ("cosh x", 2, {"hyperbolic rule"}),
        ("2^x", 2, {"exponential rule"}),
        ("ln x", 2, {"logarithm rule"}),
        ("x^2 sin x", 3, {"product rule"}),
        ("sin(x)/x", 3, {"quotient rule"}),
        (
            "1/(x sin(x))",
            3,
            {"quotient rule"},
        ),  # a numerator of 1: once a "product" of no factors, f' = 0
        ("sin(x^2)", 4, {"chain rule"}),
        ("e^{-x^2}", 4, {"chain rule"}),
        ("x^x", 4, {"logarithmic differentiation"}),
    ],
)
def test_rules_and_levels(text, level, rules):
    derivative, steps = differentiate(parse_function(text))
    assert level_of(steps) == level
    assert rules <= {step.rule for step in steps}
    assert same(derivative, sp.diff(parse_function(text), X))


def test_steps_come_children_first():
    _, steps = differentiate(parse_function("sin(x^2)"))
    assert [s.rule for s in steps] == ["power rule", "chain rule"]
    assert steps[1].derivative == 2 * X * sp.cos(X**2)


def test_unsupported_function_is_reported():
    with pytest.raises(UnsupportedFunction):
        differentiate(sp.floor(X))


# --- textbook notations: inverse trig beyond arctan, |u|, log_b, cbrt, sin^2 ----------------

REAL_X = sp.Symbol("x", real=True)
# Away from the kinks and domain edges of the functions below (|u| = 0, |u| = 1, x = 0, +-2).
POINTS = (-3.7, -2.6, -1.3, -0.55, -0.25, 0.45, 0.8, 1.45, 2.35, 3.9)


def values(expr: sp.Expr, symbol: sp.Symbol = X) -> list[complex | None]:
    """expr at POINTS; None where it is not a finite real number."""
    found = []
    for point in POINTS:
        value = complex(sp.N(expr.subs(symbol, point)))
        finite = cmath.isfinite(value) and abs(value.imag) < 1e-9
        found.append(value if finite else None)
    return found


def numerically_same(derivative: sp.Expr, expr: sp.Expr) -> bool:
    """derivative equals d/dx expr at every point where both expr and that are real. sympy
    differentiates on a real x: on the project's plain x, d|x|/dx comes back with re(x) and
    im(x) in it. (Outside the domain, d/dx acosh(x) = 1/(sqrt(x - 1) sqrt(x + 1)) is real too.)"""
    truth = values(sp.diff(expr.subs(X, REAL_X), REAL_X), REAL_X)
    got, defined = values(derivative), values(expr)
    compared = [
        (t, g)
        for t, g, f in zip(truth, got, defined, strict=True)
        if t is not None and f is not None
    ]
    return len(compared) >= 3 and all(
        g is not None and abs(g - t) < 1e-9 * max(1, abs(t)) for t, g in compared
    )


TEXTBOOK = [
    ("arcsec x", 2, {"inverse trig rule"}),
    ("arccsc x", 2, {"inverse trig rule"}),
    ("arccot x", 2, {"inverse trig rule"}),
    ("sec^-1(x)", 2, {"inverse trig rule"}),
    ("3 csc^(-1)(x) - cot^(-1)(x)", 2, {"inverse trig rule", "constant multiple rule", "sum rule"}),
    ("asec(x^2 + 1)", 4, {"chain rule", "sum rule"}),
    ("arccsc(2x)", 4, {"chain rule"}),
    ("acot(x^3)", 4, {"chain rule"}),
    ("x arcsec x", 3, {"product rule", "inverse trig rule"}),
    ("|x|", 2, {"absolute value rule"}),
    ("2|x| + 1", 2, {"absolute value rule", "constant multiple rule"}),
    ("|x^2 - 4|", 4, {"chain rule"}),
    ("x|x|", 3, {"product rule", "absolute value rule"}),
    ("||x| - 1|", 4, {"chain rule", "absolute value rule"}),
    ("sin|x|", 4, {"chain rule", "absolute value rule"}),
    ("1/|x|", 4, {"chain rule", "absolute value rule"}),
    ("|x|^x", 4, {"logarithmic differentiation"}),
    ("log_2(x)", 2, {"logarithm rule", "constant multiple rule"}),
    ("log_(3)(x+1)", 4, {"chain rule"}),
    ("log_10 |x|", 4, {"chain rule", "absolute value rule"}),
    ("cbrt(x)", 2, {"root rule"}),
    ("cbrt(x^2 + 1)", 4, {"chain rule"}),
    ("sin^2 x", 4, {"chain rule", "trig rule"}),
    ("arcsinh x", 2, {"hyperbolic rule"}),
    ("arccosh x", 2, {"hyperbolic rule"}),
    ("arctanh x", 2, {"hyperbolic rule"}),
    ("sinh^-1(3x)", 4, {"chain rule"}),
    ("arctanh(cos(x))", 4, {"chain rule", "trig rule"}),
    ("cos^3(2x)", 4, {"chain rule"}),
]


@pytest.mark.parametrize("text, level, rules", TEXTBOOK, ids=[t for t, _, _ in TEXTBOOK])
def test_textbook_notations_differentiate_right(text, level, rules):
    expr = parse_function(text)
    derivative, steps = differentiate(expr)
    assert level_of(steps) == level
    assert rules <= {step.rule for step in steps}
    assert numerically_same(derivative, expr), (text, derivative)
    for step in steps:  # every step is right, and its worked form reads back as its derivative
        assert numerically_same(step.derivative, step.expr), (text, step)
        assert numerically_same(parse_function(step.worked), step.expr), (text, step.worked)


@pytest.mark.parametrize(
    "text, derivative",
    [
        ("arcsec x", 1 / (sp.Abs(X) * sp.sqrt(X**2 - 1))),
        ("arccsc x", -1 / (sp.Abs(X) * sp.sqrt(X**2 - 1))),
        ("arccot x", -1 / (1 + X**2)),
        ("arcsinh x", 1 / sp.sqrt(X**2 + 1)),
        ("arccosh x", 1 / sp.sqrt(X**2 - 1)),
        ("arctanh x", 1 / (1 - X**2)),
        ("|x|", X / sp.Abs(X)),
        ("|x^2 - 4|", (X**2 - 4) / sp.Abs(X**2 - 4) * 2 * X),
    ],
)
def test_new_rules_give_the_textbook_formula(text, derivative):
    assert sp.simplify(differentiate(parse_function(text))[0] - derivative) == 0


def test_absolute_value_rule_is_level_2():
    assert RULE_LEVEL["absolute value rule"] == 2
    _, steps = differentiate(parse_function("|x|"))
    assert [s.rule for s in steps] == ["absolute value rule"] and steps[0].worked == "x/abs(x)"


@pytest.mark.parametrize(
    "text, worked",
    [
        ("x|x - 1|", "abs(x - 1) + (x - 1)/abs(x - 1)*x"),  # abs(x - 1) is one factor: no brackets
        ("|x - 1|^3", "3*abs(x - 1)^2*(x - 1)/abs(x - 1)"),
        ("(|x| - 1)^2", "2*(abs(x) - 1)*x/abs(x)"),  # a difference with abs is a sum: bracketed
    ],
)
def test_worked_forms_treat_an_absolute_value_as_one_factor(text, worked):
    assert differentiate(parse_function(text))[1][-1].worked == worked
