"""Random functions over expression trees: the space of what people type, not the curriculum's
shapes.

The curriculum (`curriculum.candidate`) draws a few fixed shapes per level. This generator
draws trees instead: leaves are x, linear and polynomial inner functions; inner nodes are
every primitive an intro textbook uses (trig and reciprocal trig, inverse trig, hyperbolic,
e^u and a^u, ln and log_b, roots and powers), sums of up to five parts, long polynomials
(six terms and more), products, quotients and constant multiples, nested up to depth three,
with constants and signs everywhere. One seeded `random.Random` per use: practice, the
random benchmark and any other corpus each draw with their own seed.

`kinds(expr)` says which kinds of differentiation a function exercises (a function may be
of several), `length_bucket` how long it is as typed: the benchmarks report by both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import sympy as sp

from derivative_animator.math import notation
from derivative_animator.math.differentiate import UnsupportedFunction, differentiate
from derivative_animator.math.parsing import ParseError, X, parse_function

MAX_DEPTH = 3
MAX_TYPED_CHARS = 120  # what a person types in one line; the prompt and header budgets allow it

# Kinds a benchmark reports (id: what it means), in table order; see `kinds`.
KINDS = {
    "polynomial": "polynomials",
    "linear_power": "a power of a linear function, (5x + 1)^7",
    "chain_linear": "chain rule, linear inner function",
    "chain_nonlinear": "chain rule, any other inner function",
    "product": "product rule",
    "quotient": "quotient rule",
    "trig": "sin, cos, tan",
    "reciprocal_trig": "sec, csc, cot",
    "inverse_trig": "inverse trig",
    "hyperbolic": "hyperbolic",
    "exp_log": "exponentials and logarithms",
    "roots": "roots and fractional powers",
    "log_differentiation": "logarithmic differentiation, u(x)^v(x)",
}
LENGTH_BUCKETS = (
    (20, "chars_1_20"),
    (40, "chars_21_40"),
    (80, "chars_41_80"),
    (10**9, "chars_81_up"),
)

_TRIG = (sp.sin, sp.cos, sp.tan)
_RECIPROCAL_TRIG = (sp.sec, sp.csc, sp.cot)
_INVERSE_TRIG = (sp.asin, sp.acos, sp.atan, sp.asec, sp.acsc, sp.acot)
_HYPERBOLIC = (sp.sinh, sp.cosh, sp.tanh)


# --- the pieces ---------------------------------------------------------------------------


def _integer(rng: random.Random, low: int = 1, high: int = 9, signed: bool = True) -> int:
    value = rng.randint(low, high)
    return -value if signed and rng.random() < 0.3 else value


def _coefficient(rng: random.Random) -> sp.Expr:
    """Mostly small integers; now and then a fraction, pi or a decimal-looking rational."""
    roll = rng.random()
    if roll < 0.8:
        return sp.Integer(_integer(rng))
    if roll < 0.93:
        return sp.Rational(_integer(rng, 1, 5), rng.choice([2, 3, 4, 5]))
    return rng.choice([sp.pi, 2 * sp.pi, sp.Rational(1, 10), sp.Rational(5, 2)])


def linear(rng: random.Random) -> sp.Expr:
    """a x + b with a != 0, b often nonzero: the inner function textbooks use most."""
    a = rng.choice([1, 2, 3, 4, 5, 6, 7, -1, -2, -3, -5, sp.Rational(1, 2), sp.Rational(1, 3)])
    return a * X + rng.choice([0, 1, -1, 2, -3, 4, 5, -7, 9])


def polynomial(rng: random.Random, terms: int | None = None, degree: int | None = None) -> sp.Expr:
    """A polynomial with `terms` distinct powers (default: 1 to 8) up to `degree`."""
    terms = terms or rng.choice([1, 2, 2, 3, 3, 4, 5, 6, 7, 8])
    degree = max(degree or rng.randint(terms - 1, terms + 3), terms - 1)
    exponents = sorted(rng.sample(range(degree + 1), terms), reverse=True)
    if exponents[0] == 0:
        exponents[0] = 1
    return sp.Add(*[_coefficient(rng) * X**e for e in exponents])


def _exponent(rng: random.Random) -> sp.Expr:
    return rng.choice(
        [
            2,
            2,
            3,
            3,
            4,
            5,
            6,
            7,
            10,
            -1,
            -1,
            -2,
            -3,
            sp.Rational(1, 2),
            sp.Rational(1, 3),
            sp.Rational(2, 3),
            sp.Rational(3, 2),
            sp.Rational(-1, 2),
            sp.Rational(5, 2),
            sp.Rational(3, 4),
            sp.Rational(-2, 3),
        ]
    )


# Unary primitives u -> g(u), each with its weight among the primitives.
PRIMITIVES: tuple[tuple[str, Callable[[sp.Expr], sp.Expr], float], ...] = (
    ("sin", sp.sin, 2),
    ("cos", sp.cos, 2),
    ("tan", sp.tan, 1.2),
    ("sec", sp.sec, 0.8),
    ("csc", sp.csc, 0.7),
    ("cot", sp.cot, 0.7),
    ("arcsin", sp.asin, 0.6),
    ("arccos", sp.acos, 0.5),
    ("arctan", sp.atan, 0.8),
    ("arcsec", sp.asec, 0.25),
    ("arccsc", sp.acsc, 0.2),
    ("arccot", sp.acot, 0.25),
    ("sinh", sp.sinh, 0.4),
    ("cosh", sp.cosh, 0.4),
    ("tanh", sp.tanh, 0.4),
    ("exp", sp.exp, 2),
    ("a^u", lambda u: sp.Integer(2) ** u, 0.4),
    ("a^u", lambda u: sp.Integer(3) ** u, 0.2),
    ("a^u", lambda u: sp.Integer(10) ** u, 0.2),
    ("a^u", lambda u: sp.Rational(1, 2) ** u, 0.1),
    ("ln", sp.log, 1.6),
    ("log_b", lambda u: sp.log(u, 2), 0.2),
    ("log_b", lambda u: sp.log(u, 10), 0.2),
    ("sqrt", sp.sqrt, 1.2),
    ("cbrt", sp.cbrt, 0.3),
)


def _primitive(rng: random.Random) -> Callable[[sp.Expr], sp.Expr]:
    return rng.choices([p[1] for p in PRIMITIVES], weights=[p[2] for p in PRIMITIVES])[0]


def _inner(rng: random.Random, depth: int) -> sp.Expr:
    """The argument of a primitive or a power: x, a linear or polynomial function, or a tree."""
    roll = rng.random()
    if depth <= 0 or roll < 0.3:
        return X
    if roll < 0.6:
        return linear(rng)
    if roll < 0.75:
        return polynomial(rng, terms=rng.randint(1, 3), degree=rng.randint(2, 3))
    return tree(rng, depth - 1)


def tree(rng: random.Random, depth: int = MAX_DEPTH) -> sp.Expr:
    """One random function of x, nested at most `depth` deep."""
    if depth <= 0:
        return rng.choice([X, X, linear(rng), polynomial(rng, terms=rng.randint(1, 3))])
    roll = rng.random()
    if roll < 0.34:  # a primitive of an inner function
        return _primitive(rng)(_inner(rng, depth - 1))
    if roll < 0.44:  # a power of an inner function
        return _inner(rng, depth - 1) ** _exponent(rng)
    if roll < 0.46:  # u(x)^v(x): logarithmic differentiation
        return _inner(rng, depth - 1) ** rng.choice(
            [X, linear(rng), sp.sin(X), sp.cos(X), sp.log(X), sp.sqrt(X), X**2]
        )
    if roll < 0.56:  # a polynomial, often long
        return polynomial(rng)
    if roll < 0.68:  # a sum of two to five parts
        parts = rng.choice([2, 2, 3, 3, 4, 5])
        return sp.Add(*[_coefficient(rng) * tree(rng, depth - 1) for _ in range(parts)])
    if roll < 0.82:  # a product
        return tree(rng, depth - 1) * tree(rng, depth - 1)
    if roll < 0.94:  # a quotient
        return tree(rng, depth - 1) / tree(rng, depth - 1)
    return _coefficient(rng) * tree(rng, depth - 1) + rng.choice([0, _integer(rng)])


# --- what a drawn function must be --------------------------------------------------------


def typed_function(expr: sp.Expr) -> tuple[str, sp.Expr] | None:
    """(typed text, the expression a person typing it gets) if the function is one we can
    work rule by rule and print in one line; None otherwise."""
    try:
        typed = notation.typed(expr)
        if len(typed) > MAX_TYPED_CHARS:
            return None
        parsed = parse_function(typed)
        if not parsed.has(X):
            return None
        differentiate(parsed)
    except (
        ParseError,
        UnsupportedFunction,
        ValueError,
        TypeError,
        RecursionError,
        ZeroDivisionError,
    ):
        return None
    return typed, parsed


def functions(
    seed: str | int,
    keep: Callable[[str, sp.Expr], bool] = lambda typed, expr: True,
    max_depth: int = MAX_DEPTH,
) -> Iterator[str]:
    """Distinct functions (by canonical form) as typed, forever, in a seeded order: those
    `keep(typed, expr)` accepts. The same seed gives the same sequence."""
    from derivative_animator.math.curriculum import canonical_key

    rng = random.Random(f"expression-trees-{seed}")
    seen: set[str] = set()
    while True:
        found = typed_function(tree(rng, rng.randint(1, max_depth)))
        if found is None:
            continue
        typed, expr = found
        key = canonical_key(expr)
        if key in seen:
            continue
        seen.add(key)
        if keep(typed, expr):
            yield typed


# --- what a function exercises ------------------------------------------------------------


def _is_linear(expr: sp.Expr) -> bool:
    return expr != X and expr.is_polynomial(X) and sp.degree(expr, X) == 1


def kinds(expr: sp.Expr) -> set[str]:
    """The kinds of differentiation `expr` exercises (ids of KINDS)."""
    found: set[str] = set()
    _, steps = differentiate(expr)
    rules = {step.rule for step in steps}
    if expr.is_polynomial(X):
        found.add("polynomial")
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Function) and node.args and node.args[0].has(X):
            inner = node.args[0]
        elif node.is_Pow and node.base.has(X) and not node.exp.has(X):
            inner = node.base
            if _is_linear(inner) and node.exp.is_Integer and node.exp != 1:
                found.add("linear_power")
        elif node.is_Pow and node.exp.has(X) and not node.base.has(X):
            inner = node.exp
        else:
            continue
        if inner != X:
            found.add("chain_linear" if _is_linear(inner) else "chain_nonlinear")
    if "product rule" in rules:
        found.add("product")
    if "quotient rule" in rules:
        found.add("quotient")
    if "logarithmic differentiation" in rules:
        found.add("log_differentiation")
    if expr.has(*_TRIG):
        found.add("trig")
    if expr.has(*_RECIPROCAL_TRIG):
        found.add("reciprocal_trig")
    if expr.has(*_INVERSE_TRIG):
        found.add("inverse_trig")
    if expr.has(*_HYPERBOLIC):
        found.add("hyperbolic")
    if expr.has(sp.exp, sp.log) or any(
        p.is_Pow and p.exp.has(X) for p in sp.preorder_traversal(expr)
    ):
        found.add("exp_log")
    if any(
        p.is_Pow and p.exp.is_Rational and not p.exp.is_Integer and p.base.has(X)
        for p in sp.preorder_traversal(expr)
    ):
        found.add("roots")
    return found


def length_bucket(typed: str) -> str:
    return next(name for limit, name in LENGTH_BUCKETS if len(typed) <= limit)


TRANSCENDENTAL_BUCKETS = ("transcendental_0", "transcendental_1", "transcendental_2_up")


def transcendental_count(expr: sp.Expr) -> int:
    """How many transcendental functions a function applies (each sin, e^u, ln, a^u, ...; sqrt
    and other powers of x are algebraic): the textbook's long exercises hold two or more far
    more often than the practice did (docs/experiments.md, 2026-12-06)."""
    return sum(
        1
        for node in sp.preorder_traversal(expr)
        if (isinstance(node, sp.Function) and node.func is not sp.Abs)
        or (isinstance(node, sp.Pow) and node.exp.has(X))
    )


def transcendental_bucket(typed: str) -> str:
    return TRANSCENDENTAL_BUCKETS[min(transcendental_count(parse_function(typed)), 2)]
