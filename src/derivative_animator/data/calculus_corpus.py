"""Synthetic calculus text for pretraining: worked derivatives in the scenes' own notation.

The base model learns the skill the math check scores (f -> f', rule by rule) before any
fine-tuning, from documents the project's own differentiator writes:

- a scene's math header, the docstring every scene opens with (`f(x) = ...`, `f'(x) = ...`),
  often after a line that asks for it, so copying the function from a request is practised;
- the rule steps, children before parents, each with the part, the rule and its worked
  derivative, ending in the whole function's.

Functions come from the curriculum's generator (all four levels) and from the kinds
textbooks ask about (sec/csc/cot, inverse trig, hyperbolic, exponentials of any base, logs
of compositions, pi inside functions, roots and negative or fractional powers, quotients of
polynomials). A function whose canonical form, or any part's, is a held-out one
(validation and test splits, every benchmark) never enters the corpus. sympy only: no torch here.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import sympy as sp

from derivative_animator.math import curriculum, notation
from derivative_animator.math.differentiate import UnsupportedFunction, differentiate
from derivative_animator.math.parsing import ParseError, X, parse_function

HELD_OUT_SPLITS = ("validation", "test")
_REQUESTS = (
    "# Differentiate f(x) = {f}.\n",
    "# Find the derivative of f(x) = {f}\n",
    "# d/dx of {f}:\n",
    "Generate Manim animation code for the derivative of: f(x) = {f}\n\n",
    "",
)


def held_out_keys(data_dir: str | Path) -> set[str]:
    """Canonical keys of the validation and test functions of a built dataset, and of every
    benchmark's functions (`data/benchmarks.py`)."""
    from derivative_animator.data import benchmarks, dataset

    directory = Path(data_dir)
    missing = [split for split in HELD_OUT_SPLITS if not (directory / f"{split}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} has no {', '.join(missing)} split: build the dataset first (make data)"
        )
    return {
        curriculum.canonical_key(parse_function(record.function))
        for split in HELD_OUT_SPLITS
        for record in dataset.read_split(directory, split)
    } | benchmarks.held_out_keys()


# --- the kinds textbooks ask about, beyond the curriculum's generator -------------------


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


def candidates(rng: random.Random, textbook_share: float) -> Iterable[sp.Expr]:
    """Random functions forever: the curriculum's levels in turn, textbook kinds mixed in."""
    while True:
        if rng.random() < textbook_share:
            yield textbook_candidate(rng)
        else:
            yield curriculum.candidate(rng.choice(curriculum.LEVELS), rng)


# --- documents --------------------------------------------------------------------------


def header_document(typed: str, worked: str, request: str) -> str:
    """A scene's math header, after a request naming the function (or none)."""
    return f'{request.format(f=typed)}"""\nf(x) = {typed}\nf\'(x) = {worked}\n"""\n'


def steps_document(typed: str, steps, held_out: set[str]) -> str:
    """The rule steps, children before parents (held-out parts left out), then the whole
    derivative."""
    lines = [f"# d/dx {typed}, rule by rule:"]
    lines += [
        f"#   {notation.typed(step.expr)}: {step.rule} -> {step.worked}"
        for step in steps
        if curriculum.canonical_key(step.expr) not in held_out
    ]
    lines.append(f"f'(x) = {steps[-1].worked}")
    return "\n".join(lines) + "\n"


def worked_function(expr: sp.Expr, held_out: set[str]):
    """(typed f, canonical key, steps) for a candidate, or None: unparseable as typed, no
    rule for it, constant, too long, or held out."""
    try:
        typed = notation.typed(expr)
        parsed = parse_function(typed)  # what a person typing it gets
        if not parsed.has(X):
            return None
        _, steps = differentiate(parsed)
    except (ParseError, UnsupportedFunction, ValueError, TypeError, RecursionError):
        return None
    key = curriculum.canonical_key(parsed)
    if key in held_out or len(typed) > 120:
        return None
    return typed, key, steps


def documents(
    draws: int,
    seed: int,
    held_out: set[str],
    textbook_share: float = 0.35,
    steps_share: float = 0.5,
    progress=None,
) -> list[str]:
    """Documents for the distinct usable functions (by canonical form) among `draws` random
    candidates, in a seeded order: the same list for the same arguments. (Distinct functions
    thin out as draws grow: 40,000 draws give about 20,000.)"""
    rng = random.Random(f"{seed}-calculus")
    seen: set[str] = set()
    docs: list[str] = []
    for _, expr in zip(range(draws), candidates(rng, textbook_share), strict=False):
        if progress is not None:
            progress()
        worked = worked_function(expr, held_out)
        if worked is None:
            continue
        typed, key, steps = worked
        if key in seen:
            continue
        seen.add(key)
        docs.append(header_document(typed, steps[-1].worked, rng.choice(_REQUESTS)))
        if rng.random() < steps_share and len(steps) > 1:
            docs.append(steps_document(typed, steps, held_out))
    return docs
