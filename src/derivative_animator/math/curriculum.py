"""Curriculum of functions to differentiate, four levels, seeded.

1 polynomials and powers (power, sum, constant multiple rules)
2 elementary functions (trig, exp, log, roots, inverse trig, hyperbolic)
3 products and quotients
4 compositions (chain rule)

A candidate is kept only if the rules its derivative needs put it at the intended level
(`differentiate.level_of`), and if it is reasonable to animate: real and finite, with
moderate values, over a plotting interval picked for it (`plot_interval`), and not
constant.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import sympy as sp

from derivative_animator.math.differentiate import Step, differentiate, level_of
from derivative_animator.math.parsing import X

LEVELS = (1, 2, 3, 4)
LEVEL_NAMES = {
    1: "polynomials and powers",
    2: "elementary functions",
    3: "products and quotients",
    4: "compositions (chain rule)",
}

# Plotting intervals tried in order: the first where f and f' are real, finite and
# moderate wins. Positive intervals come after symmetric ones for log, sqrt, 1/x.
CANDIDATE_INTERVALS = (
    (-3, 3),
    (-2, 2),
    (0.1, 4),
    (0.2, 3),
    (-1.5, 1.5),
    (0.5, 4),
    (1, 5),
    (-1, 1),
    (0.1, 2),
    (-0.9, 0.9),
    (0.1, 1),
    (-0.5, 0.5),
)
MAX_ABS_VALUE = 40.0  # |f| and |f'| on the interval: keeps the picture readable
MIN_VARIATION = 0.2  # f must visibly change over the interval
# What people type (`(3x + 2)^4`, `500x^2`, `arccos(3x)`) may fit none of the above: `wider=True`
# (the oracle for any input, and the math check) then tries intervals around other centres and
# at other zooms, first within the same caps, then with values up to WIDER_MAX_ABS_VALUE and f
# changing by a hundredth of its size. The dataset keeps the narrow rule: its bytes do not move.
WIDER_CENTRES = (
    0.0,
    0.5,
    -0.5,
    1.0,
    -1.0,
    2.0,
    -2.0,
    3.0,
    -3.0,
    5.0,
    -5.0,
    10.0,
    -10.0,
    20.0,
    -20.0,
    50.0,
    -50.0,
    100.0,
    -100.0,
)
WIDER_HALF_WIDTHS = (3.0, 2.0, 1.5, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
WIDER_MAX_ABS_VALUE = 1e4
WIDER_MIN_RELATIVE_VARIATION = 0.01
GRID_POINTS = 1201
# |f| or |f'| this large at a grid point is a pole there: tan(pi/2) = 1.6e16 in floating point
POLE_VALUE = 1e12
# A pole's spike must not set the y-range: an interval whose full range of f or f' is more than
# SPIKE_RATIO times the range of its middle 90% is taken only if no other interval is readable.
SPIKE_RATIO = 3.0


@dataclass(frozen=True)
class CurriculumFunction:
    expr: sp.Expr
    derivative: sp.Expr
    steps: list[Step]
    level: int
    x_range: tuple[float, float]


def analyse(expr: sp.Expr, wider: bool = False) -> CurriculumFunction | None:
    """Differentiate and pick a plotting interval; None if it cannot be animated well."""
    derivative, steps = differentiate(expr)
    if derivative == 0:
        return None
    x_range = plot_interval(expr, derivative, wider)
    if x_range is None:
        return None
    return CurriculumFunction(expr, derivative, steps, level_of(steps), x_range)


def plot_interval(
    expr: sp.Expr, derivative: sp.Expr, wider: bool = False
) -> tuple[float, float] | None:
    """The first interval where f and f' are real, finite and readable, f changes visibly and
    no spike dominates either curve; failing that, the first readable one with a spike; None
    if there is none (`wider`: see WIDER_CENTRES)."""
    f, df = _numeric(expr), _numeric(derivative)
    tries = [(CANDIDATE_INTERVALS, MAX_ABS_VALUE, False)]
    if wider:
        around = tuple((c - w, c + w) for w in WIDER_HALF_WIDTHS for c in WIDER_CENTRES)
        tries += [
            (around, MAX_ABS_VALUE, False),
            (CANDIDATE_INTERVALS + around, WIDER_MAX_ABS_VALUE, True),
        ]
    for candidates, cap, relative in tries:
        spiky = None
        for x_range in candidates:
            xs = _grid(*x_range)
            # f alone rules out most intervals: f' (the longer expression) only where f passes
            ys = _finite(f, xs)
            if ys is None or np.abs(ys).max() > cap:
                continue
            least = (
                WIDER_MIN_RELATIVE_VARIATION * max(1.0, np.abs(ys).max())
                if relative
                else MIN_VARIATION
            )
            if np.ptp(ys) < least:
                continue
            dys = _finite(df, xs)
            if dys is None or np.abs(dys).max() > cap:
                continue
            if not (_spiky(ys) or _spiky(dys)):
                return x_range
            spiky = spiky or x_range
        if spiky:
            return spiky
    return None


def _numeric(expr: sp.Expr):
    """expr as a numpy function of x (no docstring: printing it costs more than the function)."""
    return sp.lambdify(X, expr, "numpy", docstring_limit=0)


def _spiky(values: np.ndarray) -> bool:
    low, high = np.quantile(values, [0.05, 0.95])
    return np.ptp(values) > SPIKE_RATIO * (high - low) and np.ptp(values) > 1e-9


def defined_on(expr: sp.Expr, derivative: sp.Expr, x_range: tuple[float, float]) -> bool:
    """Are f and f' real and finite everywhere on the interval (the grid `plot_interval` uses)?"""
    xs = _grid(*x_range)
    return _finite(_numeric(expr), xs) is not None and _finite(_numeric(derivative), xs) is not None


def _finite(f, xs: np.ndarray) -> np.ndarray | None:
    """f on the grid; None unless it is real and finite everywhere."""
    with np.errstate(all="ignore"):
        try:
            ys = _real(f(xs), xs.shape)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
    # A pole on the grid: floating point gives tan(pi/2) = 1.6e16, finite but no value at all.
    if ys is None or not np.all(np.abs(ys) < POLE_VALUE):
        return None
    return ys


def _real(values, shape: tuple[int, ...]) -> np.ndarray | None:
    """Values as real floats; None where one has an imaginary part. numpy computes sec(cosh(x))
    as 1/cos(cos(1j*x)), in complex numbers with no imaginary part; (-1)**(1/3)*x has one, and
    its real part is no value of the function."""
    values = np.asarray(values)
    if np.iscomplexobj(values):
        if np.any(np.abs(values.imag) > 1e-9 * np.maximum(1.0, np.abs(values.real))):
            return None
        values = values.real
    return np.broadcast_to(values.astype(float), shape)


@functools.lru_cache(maxsize=512)  # every built-in interval; a model's own ones come and go
def _grid(x_min: float, x_max: float) -> np.ndarray:
    """A fine grid plus the simple points where poles and 0/0 of our functions sit
    (multiples of 1/4 and of pi/4), so none slips between grid points."""
    simple = np.concatenate([np.arange(-20, 21) / 4, np.arange(-8, 9) * np.pi / 4])
    inside = simple[(simple >= x_min) & (simple <= x_max)]
    grid = np.union1d(np.linspace(x_min, x_max, GRID_POINTS), inside)
    grid.flags.writeable = False  # shared by every call (cached)
    return grid


# --- random building blocks ---------------------------------------------------------


def _coefficient(rng: random.Random, small: bool = False) -> int:
    values = [1, 2, 3, -1, -2, 4, 5, -3] if small else [1, 2, 3, 4, 5, 6, 7, -1, -2, -3, -4, -5]
    return rng.choice(values)


def _polynomial(rng: random.Random, max_degree: int = 5) -> sp.Expr:
    degree = rng.randint(1, max_degree)
    n_terms = rng.randint(1, min(3, degree + 1))
    exponents = {degree} | set(rng.sample(range(degree), n_terms - 1))
    return sp.Add(*[_coefficient(rng) * X**e for e in sorted(exponents)])


def _elementary(rng: random.Random) -> sp.Expr:
    """An elementary function of plain x (no inner function)."""
    return rng.choice(
        [
            sp.sin(X),
            sp.cos(X),
            sp.tan(X),
            sp.exp(X),
            sp.log(X),
            sp.sqrt(X),
            X ** sp.Rational(1, 3),
            X ** sp.Rational(3, 2),
            1 / sp.sqrt(X),
            2**X,
            3**X,
            sp.atan(X),
            sp.asin(X),
            sp.acos(X),
            sp.sinh(X),
            sp.cosh(X),
            sp.tanh(X),
        ]
    )


def _simple_factor(rng: random.Random) -> sp.Expr:
    """A factor for products and quotients: a power of x, a short polynomial, or elementary."""
    kind = rng.random()
    if kind < 0.3:
        return X ** rng.randint(1, 4)
    if kind < 0.5:
        return rng.choice([1, 2, 3]) * X ** rng.randint(1, 2) + rng.choice([1, 2, 3, 5, -1, -2, -4])
    return rng.choice(
        [
            sp.sin(X),
            sp.cos(X),
            sp.tan(X),
            sp.exp(X),
            sp.log(X),
            sp.sqrt(X),
            sp.atan(X),
            sp.sinh(X),
            sp.cosh(X),
            2**X,
        ]
    )


def _inner(rng: random.Random) -> sp.Expr:
    """The inside of a composition."""
    return rng.choice(
        [
            rng.choice([2, 3, -2, 4, sp.Rational(1, 2)]) * X,
            rng.choice([2, 3, -1]) * X + rng.choice([1, -1, 2, 3]),
            X**2,
            -(X**2),
            X**2 + rng.choice([1, 2, 4]),
            X**3 - rng.choice([1, 2]),
            rng.choice([1, 2]) * X**2 + X + 1,
            sp.sin(X),
            sp.cos(X),
            sp.exp(X),
            sp.sqrt(X),
            sp.log(X),
        ]
    )


def _outer(rng: random.Random, inner: sp.Expr) -> sp.Expr:
    choice = rng.random()
    if choice < 0.3:
        return inner ** rng.choice([2, 3, 4, -1, sp.Rational(1, 2)])
    return rng.choice([sp.sin, sp.cos, sp.exp, sp.log, sp.sqrt, sp.atan, sp.tan])(inner)


def candidate(level: int, rng: random.Random) -> sp.Expr:
    """One random function meant for `level` (the caller checks it really is)."""
    if level == 1:
        kind = rng.random()
        if kind < 0.6:
            return _polynomial(rng)
        if kind < 0.8:
            return _coefficient(rng, small=True) * X ** rng.randint(2, 7)
        negative = _coefficient(rng, small=True) * X ** -rng.randint(1, 3)
        return negative + rng.choice(
            [0, _coefficient(rng) * X ** rng.randint(1, 2), rng.randint(1, 5)]
        )
    if level == 2:
        base = _coefficient(rng, small=True) * _elementary(rng)
        kind = rng.random()
        if kind < 0.4:
            return base
        if kind < 0.75:
            return base + _coefficient(rng) * X ** rng.randint(0, 2)
        return base + _coefficient(rng, small=True) * _elementary(rng)
    if level == 3:
        u, v = _simple_factor(rng), _simple_factor(rng)
        product = u * v if rng.random() < 0.55 else u / v
        return product * (rng.choice([1, 1, 1, 2, -1, 3, -2, 4]))
    if level == 4:
        inner = _inner(rng)
        if rng.random() < 0.12:  # a second layer now and then
            inner = _outer(rng, inner)
        return _coefficient(rng, small=True) * _outer(rng, inner)
    raise ValueError(f"unknown curriculum level {level}; levels are {LEVELS}")


def usable_at(expr: sp.Expr, level: int) -> CurriculumFunction | None:
    """The analysis of a candidate (parsed from its typed form, so the dataset keeps what a
    user gets by typing it) if it can be animated and is of exactly `level`, else None."""
    if not expr.has(X):
        return None
    analysed = analyse(expr)
    return analysed if analysed is not None and analysed.level == level else None


def canonical_key(expr: sp.Expr) -> str:
    """Identity of a function across splits: sympy's canonical form."""
    return sp.srepr(sp.expand(expr))
