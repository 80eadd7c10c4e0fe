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
polynomials) and, with `practice_share`, from make all's practice generators (expression
trees, several transcendental factors combined), with `long_share` from those at least
LONG_CHARS characters long, with `power_share` from power practice (wide and symbolic
exponents, other bases, symbolic constants: textbook_kinds.power_candidate). A function whose
canonical form, or any part's, is a held-out one (validation and test splits, every benchmark)
never enters the corpus. sympy only: no torch here.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from pathlib import Path

import sympy as sp

from derivative_animator.math import curriculum, expression_trees, notation
from derivative_animator.math.differentiate import UnsupportedFunction, differentiate
from derivative_animator.math.parsing import ParseError, X, parse_function
from derivative_animator.math.textbook_kinds import (
    combination_candidate,
    power_candidate,
    textbook_candidate,
)

HELD_OUT_SPLITS = ("validation", "test")
LONG_CHARS = 41  # where the benchmarks' two longest length buckets start (expression_trees)
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


def candidates(
    rng: random.Random,
    textbook_share: float,
    practice_share: float = 0.0,
    long_share: float = 0.0,
    power_share: float = 0.0,
) -> Iterable[sp.Expr]:
    """Random functions forever: textbook kinds with `textbook_share`, the practice kinds (an
    expression tree or a combination, half each) with `practice_share`, long practice kinds
    (`long_practice`) with `long_share`, power practice with `power_share`, else a curriculum
    level."""
    sources = (textbook_candidate, _practice, long_practice, power_candidate)
    bounds = list(itertools.accumulate((textbook_share, practice_share, long_share, power_share)))
    while True:
        draw = rng.random()
        drawn = (source for source, bound in zip(sources, bounds, strict=True) if draw < bound)
        source = next(drawn, None)
        if source is None:
            yield curriculum.candidate(rng.choice(curriculum.LEVELS), rng)
        else:
            yield source(rng)


def _practice(rng: random.Random) -> sp.Expr:
    practice = expression_trees.tree if rng.random() < 0.5 else combination_candidate
    return practice(rng)


def long_practice(rng: random.Random) -> sp.Expr:
    """A practice-kind function of LONG_CHARS to MAX_TYPED_CHARS characters as typed: the
    lengths where the random benchmark's misses gather (docs/experiments.md, 2026-12-06)."""
    while True:
        expr = _practice(rng)
        try:
            chars = len(notation.typed(expr))
        except (ValueError, TypeError, RecursionError):
            continue
        if LONG_CHARS <= chars <= expression_trees.MAX_TYPED_CHARS:
            return expr


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
    practice_share: float = 0.0,
    steps_share: float = 0.5,
    progress=None,
    long_share: float = 0.0,
    power_share: float = 0.0,
) -> list[str]:
    """Documents for the distinct usable functions (by canonical form) among `draws` random
    candidates, in a seeded order: the same list for the same arguments. (Distinct functions
    thin out as draws grow: 40,000 draws give about 20,000.)"""
    rng = random.Random(f"{seed}-calculus")
    seen: set[str] = set()
    docs: list[str] = []
    drawn = candidates(rng, textbook_share, practice_share, long_share, power_share)
    for _, expr in zip(range(draws), drawn, strict=False):
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
