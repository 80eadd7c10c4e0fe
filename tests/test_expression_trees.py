"""The expression-tree generator: seeded, distinct, every kind and length, each function one a
person can type and the differentiator can work."""

from collections import Counter

import sympy as sp

from derivative_animator.math import curriculum, expression_trees
from derivative_animator.math.differentiate import differentiate
from derivative_animator.math.parsing import X, parse_function


def draw(seed, count):
    functions = expression_trees.functions(seed)
    return [next(functions) for _ in range(count)]


def test_the_same_seed_draws_the_same_functions_and_another_seed_others():
    assert draw(1, 40) == draw(1, 40)
    assert draw(1, 40) != draw(2, 40)


def test_drawn_functions_are_distinct_typed_as_read_back_and_worked_exactly():
    functions = draw(3, 150)
    keys = [curriculum.canonical_key(parse_function(f)) for f in functions]
    assert len(set(keys)) == len(keys)
    for typed in functions[:60]:
        expr = parse_function(typed)
        derivative, _ = differentiate(expr)
        assert len(typed) <= expression_trees.MAX_TYPED_CHARS
        assert sp.simplify(derivative - sp.diff(expr, X)) == 0 or _numerically_equal(
            derivative, sp.diff(expr, X)
        )


def _numerically_equal(a, b) -> bool:
    for point in (0.37, 0.61, 0.83, 1.3):
        va, vb = complex(a.subs(X, point).evalf()), complex(b.subs(X, point).evalf())
        if abs(va - vb) > 1e-6 * max(1, abs(vb)):
            return False
    return True


def test_the_generator_covers_every_kind_and_long_inputs():
    functions = draw(4, 600)
    kinds = Counter(k for f in functions for k in expression_trees.kinds(parse_function(f)))
    lengths = Counter(expression_trees.length_bucket(f) for f in functions)
    missing = set(expression_trees.KINDS) - set(kinds)
    assert not missing, f"no drawn function of kind {missing}"
    assert lengths["chars_41_80"] >= 30 and lengths["chars_81_up"] >= 5
    terms = [
        len(sp.Add.make_args(parse_function(f)))
        for f in functions
        if parse_function(f).is_polynomial(X)
    ]
    assert max(terms) >= 6  # polynomials of six and more terms


def test_kinds_name_what_a_function_exercises():
    kinds = lambda text: expression_trees.kinds(parse_function(text))  # noqa: E731
    assert kinds("3x^5 - 2x + 1") == {"polynomial"}
    assert kinds("(5x + 1)^7") >= {"polynomial", "linear_power", "chain_linear"}
    assert kinds("sin(3x)") == {"trig", "chain_linear"}
    assert kinds("sec(x) tan(x)") == {"trig", "reciprocal_trig", "product"}
    assert kinds("e^(sin(x))/x") >= {"exp_log", "trig", "quotient", "chain_nonlinear"}
    assert kinds("arctan(x^2)") == {"inverse_trig", "chain_nonlinear"}
    assert kinds("cosh(x)") == {"hyperbolic"}
    assert kinds("sqrt(x^2 + 1)") == {"roots", "chain_nonlinear"}
    assert "log_differentiation" in kinds("x^(cos(x))")
    assert expression_trees.length_bucket("x^2") == "chars_1_20"
    assert expression_trees.length_bucket("x" * 50) == "chars_41_80"
