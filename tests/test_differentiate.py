import pytest
import sympy as sp

from derivative_animator.math.differentiate import UnsupportedFunction, differentiate, level_of
from derivative_animator.math.parsing import X, parse_function


def same(a, b) -> bool:
    """Symbolic equality; sec^2 vs 1 + tan^2 needs a rewrite in terms of cos first."""
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


@pytest.mark.parametrize("text, level, rules", [
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
    ("1/(x sin(x))", 3, {"quotient rule"}),  # a numerator of 1: once a "product" of no factors, f' = 0
    ("sin(x^2)", 4, {"chain rule"}),
    ("e^{-x^2}", 4, {"chain rule"}),
    ("x^x", 4, {"logarithmic differentiation"}),
])
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
        differentiate(sp.Abs(X))
