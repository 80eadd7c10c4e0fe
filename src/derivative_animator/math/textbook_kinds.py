"""Functions of the kinds intro calculus textbooks ask about, beyond the curriculum's shapes.

sec/csc/cot, inverse trig, hyperbolic, exponentials of any base, logs of compositions, pi
inside functions, roots and negative or fractional powers, quotients of polynomials. The
pretraining corpus (`data/calculus_corpus`) and the dataset's textbook practice
(`data/dataset.textbook_practice`) both draw from here; the caller checks a function is usable.
"""

from __future__ import annotations

import math
import random

import sympy as sp

from derivative_animator.math.parsing import X


def _linear(rng: random.Random) -> sp.Expr:
    return rng.choice([1, 2, 3, 4, 5, -1, -2, sp.Rational(1, 2)]) * X + rng.choice(
        [0, 0, 1, -1, 2, 3, -4]
    )


def _small_polynomial(rng: random.Random) -> sp.Expr:
    degree = rng.randint(1, 3)
    return sum(
        rng.choice([1, 1, 2, 3, -1, -2, 5]) * X**e
        for e in range(degree, -1, -1)
        if e == degree or rng.random() < 0.6
    )


def _inside(rng: random.Random) -> sp.Expr:
    return rng.choice(
        [
            X,
            X,
            _linear(rng),
            X**2,
            X**2 + rng.randint(1, 9),
            _small_polynomial(rng),
            sp.pi * X,
            rng.choice([2, 3]) * sp.pi * X,
            sp.sqrt(X),
            sp.exp(X),
            sp.log(X),
            1 / X,
        ]
    )


def textbook_candidate(rng: random.Random) -> sp.Expr:
    """One function of a kind textbooks ask about (the caller checks it is usable)."""
    u = _inside(rng)
    kind = rng.randrange(9)
    if kind == 0:  # the other trig functions
        core = rng.choice([sp.sec, sp.csc, sp.cot, sp.tan])(u)
    elif kind == 1:  # inverse trig
        core = rng.choice([sp.asin, sp.acos, sp.atan])(
            rng.choice([X, X / rng.choice([2, 3, 4]), rng.choice([2, 3]) * X, X**2, sp.sqrt(X)])
        )
    elif kind == 2:  # hyperbolic
        core = rng.choice([sp.sinh, sp.cosh, sp.tanh])(u)
    elif kind == 3:  # exponentials of any base
        core = rng.choice([2, 3, 5, 7, 10, sp.Rational(1, 2), sp.E]) ** rng.choice(
            [X, _linear(rng), -X, X**2, -(X**2)]
        )
    elif kind == 4:  # logs of compositions
        core = sp.log(
            rng.choice(
                [
                    _linear(rng),
                    X**2 + rng.randint(1, 9),
                    _small_polynomial(rng),
                    sp.sin(X),
                    sp.cos(X) + 2,
                    sp.exp(X) + 1,
                    sp.sqrt(X),
                ]
            )
        )
    elif kind == 5:  # roots, negative and fractional powers
        exponent = rng.choice(
            [
                sp.Rational(1, 2),
                sp.Rational(1, 3),
                sp.Rational(2, 3),
                sp.Rational(3, 2),
                sp.Rational(5, 2),
                sp.Rational(-1, 2),
                sp.Rational(-3, 2),
                -1,
                -2,
                -3,
                sp.Rational(3, 4),
            ]
        )
        core = (
            rng.choice([X, _linear(rng), X**2 + rng.randint(1, 9), _small_polynomial(rng)])
            ** exponent
        )
    elif kind == 6:  # quotients of polynomials
        core = _small_polynomial(rng) / rng.choice(
            [_linear(rng), X**2 + rng.randint(1, 9), _small_polynomial(rng)]
        )
    elif kind == 7:  # textbook products
        core = rng.choice(
            [X, X**2, X**3, _linear(rng), sp.exp(X), rng.choice([2, 3]) ** X]
        ) * rng.choice(
            [
                sp.exp(X),
                sp.exp(_linear(rng)),
                sp.log(X),
                sp.sin(u),
                sp.cos(u),
                sp.atan(X),
                sp.sqrt(X),
                sp.sinh(X),
            ]
        )
    else:  # constants such as pi and e inside and around functions
        core = rng.choice([sp.pi, sp.E, 2 * sp.pi, sp.pi / 2]) * rng.choice(
            [X, X**2, sp.sin(X), sp.exp(X)]
        ) + rng.choice([0, sp.sin(sp.pi * X), sp.cos(2 * sp.pi * X), sp.pi**2, X**sp.pi])
    coefficient = rng.choice([1, 1, 1, 2, 3, -1, -2, 5, sp.Rational(1, 2)])
    extra = rng.choice(
        [0, 0, 0, rng.randint(-9, 9), rng.choice([1, 2, -3]) * X ** rng.randint(1, 3)]
    )
    return coefficient * core + extra


# Transcendental factors for `combination_candidate`: every function a textbook combines.
_FACTORS = (
    sp.sin,
    sp.cos,
    sp.tan,
    sp.sec,
    sp.csc,
    sp.cot,
    sp.exp,
    sp.log,
    sp.sqrt,
    sp.asin,
    sp.acos,
    sp.atan,
    sp.sinh,
    sp.cosh,
    sp.tanh,
    sp.asinh,
    sp.atanh,
    lambda u: 2**u,
    lambda u: 3**u,
)


def _factor(rng: random.Random) -> sp.Expr:
    """One transcendental function of a simple inside, sometimes times a power of x."""
    u = rng.choice([X, X, X, X, rng.choice([2, 3, 4, 5, 10]) * X, _linear(rng), X**2])
    factor = rng.choice(_FACTORS)(u)
    if rng.random() < 0.3:
        factor *= X ** rng.choice([1, 1, 2, 3])
    return factor


def _part(rng: random.Random) -> sp.Expr:
    """A term of a sum: mostly a (product of) transcendental factor(s), sometimes algebraic."""
    roll = rng.random()
    if roll < 0.2:
        return rng.choice([X**2, X, X**3, _small_polynomial(rng), sp.Integer(rng.randint(1, 5))])
    core = _factor(rng) * (_factor(rng) if roll < 0.45 else 1)
    return rng.choice([1, 1, 1, 2, 3, -1, -2, 5]) * core


def _sum(rng: random.Random, most: int = 2) -> sp.Expr:
    return sum(_part(rng) for _ in range(rng.randint(1, most)))


def combination_candidate(rng: random.Random) -> sp.Expr:
    """A function with several transcendental factors: sums of products of them, products and
    quotients of such sums, compositions of them and their powers. Textbook exercises of 21-40
    characters hold two or more transcendental functions six times as often as the other
    practice does (docs/experiments.md, 2026-12-06); the caller checks a function is usable."""
    kind = rng.randrange(6)
    if kind == 0:  # sums of two or three products
        return _part(rng) + _part(rng) + (_part(rng) if rng.random() < 0.4 else 0)
    if kind == 1:  # a product of sums
        return _sum(rng) * _sum(rng)
    if kind == 2:  # a quotient of sums
        return _sum(rng) / _sum(rng)
    if kind == 3:  # a function of a function of a sum, product or quotient
        inner = rng.choice([_sum(rng), _factor(rng), _factor(rng) / _sum(rng, 1)])
        outer = rng.choice((sp.log, sp.atan, sp.asin, sp.exp, sp.sqrt, sp.sin, sp.cos, sp.tan))
        return outer(inner + rng.choice([0, 0, 1, 2, X]))
    if kind == 4:  # powers of sums and products of powers of factors
        if rng.random() < 0.5:
            return _sum(rng) ** rng.choice([2, 3, 4, 5, -1, -2, sp.Rational(1, 2)])
        return _factor(rng) ** rng.randint(2, 4) * _factor(rng) ** rng.randint(1, 3)
    return _part(rng) * _part(rng) + _part(rng)  # a product plus a term


# --- powers and constants as textbooks write them ------------------------------------------


def wide_exponent(rng: random.Random) -> sp.Expr:
    """An exponent past the practice's usual 2-7, -1..-3 and a dozen fractions: (...)^17, 1/x^6,
    x^(5/3), x^1.9, x^pi. make all's fine-tune decrements the exponents it saw and misses the
    rest (9 -> 4, 17 -> 9, 5/3 -> 3/3: docs/experiments.md, 2026-12-07 late morning)."""
    roll = rng.random()
    if roll < 0.35:
        return sp.Integer(rng.randint(8, 30))
    if roll < 0.55:
        return sp.Integer(-rng.randint(1, 9))
    if roll < 0.8:
        q = rng.randint(2, 7)
        return sp.Rational(rng.choice([p for p in range(-9, 10) if p and math.gcd(p, q) == 1]), q)
    if roll < 0.9:
        return sp.Rational(rng.choice([n for n in range(11, 40) if n % 10]), 10)  # typed 1.9
    return rng.choice([sp.pi, sp.E, sp.sqrt(2)])


def symbolic_constant(rng: random.Random) -> sp.Expr:
    """A constant a textbook writes with symbols: e^4, pi^2, sqrt(53), ln(3), pi^1.9."""
    return rng.choice(
        [
            sp.E ** rng.randint(2, 5),
            sp.pi ** rng.randint(2, 3),
            sp.sqrt(rng.choice([2, 3, 5, 7, 11, 53])),
            sp.log(rng.randint(2, 9)),
            sp.pi ** sp.Rational(rng.choice([3, 11, 19]), 10),
            sp.pi,
            sp.E,
        ]
    )


def _power_base(rng: random.Random) -> sp.Expr:
    """What a wide exponent applies to: x, a linear or small polynomial, or a sum of two
    transcendental functions ((sec(x) + e^x)^9)."""
    roll = rng.random()
    if roll < 0.4:
        return X
    if roll < 0.55:
        return _linear(rng)
    if roll < 0.8:
        return rng.choice([_small_polynomial(rng), X**2 + rng.randint(1, 9)])
    first, second = rng.sample(_FACTORS[:15], 2)
    return first(X) + second(rng.choice([X, rng.choice([2, 3, 5]) * X]))


def power_candidate(rng: random.Random) -> sp.Expr:
    """One function with powers and constants as textbooks write them (the caller checks it is
    usable): wide exponents on x, polynomials and sums; sums of such powers; other exponential
    bases (4^x, 7^x, pi^x); symbolic constants as coefficients and terms; products of powers."""
    kind = rng.randrange(5)
    coefficient = rng.choice([1, 1, 2, 3, -1, 5, sp.Rational(1, 2), symbolic_constant(rng)])
    if kind == 0:  # one wide power
        core = _power_base(rng) ** wide_exponent(rng)
    elif kind == 1:  # a sum of powers of x, some wide, maybe an exponential
        core = sum(
            rng.choice([1, 2, 3, -1, -4, 5])
            * X ** rng.choice([wide_exponent(rng), rng.randint(1, 7)])
            for _ in range(rng.randint(2, 3))
        ) + rng.choice([0, rng.choice([2, 4, 5, 7]) ** X])
    elif kind == 2:  # another exponential base, alone or with a power
        exponential = rng.choice([4, 5, 6, 7, 8, 9, sp.pi, sp.sqrt(2), sp.E**2]) ** rng.choice(
            [X, X, _linear(rng), X**2]
        )
        core = exponential * rng.choice([1, X ** rng.randint(2, 20), sp.sqrt(X)]) + rng.choice(
            [0, X ** wide_exponent(rng)]
        )
    elif kind == 3:  # symbolic constants as coefficients and terms
        core = (
            symbolic_constant(rng) * X ** rng.randint(1, 9)
            + rng.choice([-1, 1]) * symbolic_constant(rng) * rng.choice([sp.exp(X), sp.sin(X), X])
            + symbolic_constant(rng)
        )
    else:  # a product of powers
        core = _power_base(rng) ** rng.randint(2, 12) * _power_base(rng) ** wide_exponent(rng)
    return coefficient * core
