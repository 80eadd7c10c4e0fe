"""Self-consistency: sampled math headers vote on the derivative; the true one is never asked.

A scene's math is its header (the docstring's `f(x) = ...` and `f'(x) = ...`, up to
`MATH_HEADER_END`). `self_consistent_scene` samples k headers (one batch: `sample_headers`,
which verified generation shares), reads each f' with
the project's parser, groups the derivatives sympy finds equal and keeps a header of the
largest group (ties: the group holding the greedy header, else the earliest), and of that
group the first header whose plotting interval is one where f and its f' are defined. A
header votes only if its f reads as the prompt's function: that is the input, known to anyone.
The chosen header replaces the greedy scene's; the body below it reads the docstring when
it runs, so it animates the chosen derivative. No oracle, no render: an answer a user
gets without any checker.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp

from derivative_animator.math.differentiate import true_derivative
from derivative_animator.math.header import (
    math_header_length,
    read_formula,
    reads_with_sympy,
    typed_formulas,
)
from derivative_animator.math.judge import (
    _interval,
    _plotting_interval,
    parse_code,
    same_values,
)
from derivative_animator.math.parsing import ParseError, parse_function

HEADER_TOKENS = 200  # a header is about 100 tokens; a sample stops where it ends


@dataclass
class Vote:
    chosen: int | None  # index of the header kept (0 is the greedy one); None: no header votes
    group_size: int  # how many headers agree with it
    voters: int  # headers whose f is the prompt's and whose f' reads as math
    seconds: float = 0.0
    headers: int = 0  # headers read (greedy's and the k sampled; `self_consistent_scene` fills it)
    silent: Counter = field(
        default_factory=Counter
    )  # why the others could not vote: reason -> count

    def said(self) -> str:
        """Who agreed, out of every header read, and what became of the others: "7 of 9 headers
        agree (greedy's and 8 sampled); 1 wrote another derivative, 1 had no readable
        derivative"."""
        total = self.headers or self.voters
        said = (
            f"{self.group_size} of {total} headers agree"
            if self.chosen is not None
            else f"none of {total} headers could vote"
        )
        if self.headers:
            said += f" (greedy's and {self.headers - 1} sampled)"
        others = [f"{n} {reason}" for reason, n in self.silent.most_common()]
        if self.voters > self.group_size:
            n = self.voters - self.group_size
            others.insert(0, f"{n} wrote {'another derivative' if n == 1 else 'other derivatives'}")
        return said + ("; " + ", ".join(others) if others else "")


@lru_cache(maxsize=64)
def _tree(header: str) -> ast.Module | None:
    """A header parsed once for both readers (`header_derivative`, `drawable`); None if it cannot
    be."""
    try:
        return parse_code(header + "\n")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


UNREADABLE, OTHER_FUNCTION = (
    "had no readable derivative",
    "named another f(x)",
)  # why a header cannot vote


def read_header(
    header: str, function: sp.Expr, x_range: tuple[float, float]
) -> tuple[sp.Expr | None, str | None]:
    """(the f' a header writes, None) or, when it cannot vote, (None, why): UNREADABLE (no header,
    no typed f and f', or one the parser refuses) or OTHER_FUNCTION (its f is not the prompt's)."""
    tree = _tree(header) if header else None
    formulas = typed_formulas(ast.get_docstring(tree, clean=False)) if tree is not None else None
    if formulas is None:
        return None, UNREADABLE
    try:
        with_sympy = reads_with_sympy(tree)
        written_f, derivative = (read_formula(text, with_sympy) for text in formulas)
    except (ParseError, RecursionError):
        return None, UNREADABLE
    return (
        (derivative, None) if same_values(written_f, function, x_range) else (None, OTHER_FUNCTION)
    )


def header_derivative(
    header: str, function: sp.Expr, x_range: tuple[float, float]
) -> sp.Expr | None:
    """The f' a header writes, or None when it cannot vote (no such header, f not the prompt's)."""
    return read_header(header, function, x_range)[0]


def vote(
    derivatives: list[sp.Expr | None],
    x_range: tuple[float, float],
    drawable: list[bool] | None = None,
) -> Vote:
    """Group equal derivatives; the largest group wins, ties to the greedy one's (index 0).
    Its header: the first of the group whose plotting interval is `drawable` (else its first)."""
    groups: list[list[int]] = []
    for i, derivative in enumerate(derivatives):
        if derivative is None:
            continue
        for group in groups:
            if same_values(derivative, derivatives[group[0]], x_range):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return Vote(None, 0, 0)
    best = max(groups, key=lambda g: (len(g), 0 in g, -g[0]))
    chosen = next((i for i in best if drawable is None or drawable[i]), best[0])
    return Vote(chosen, len(best), sum(len(g) for g in groups))


def drawable(header: str, function: sp.Expr, derivative: sp.Expr | None) -> bool:
    """Is the header's plotting interval one where the prompt's f and the header's own f' are
    defined? The input and the header's claim only: no true derivative."""
    from derivative_animator.math import curriculum

    tree = _tree(header)
    if derivative is None or tree is None:
        return False
    interval = _plotting_interval(tree)
    return interval is None or (
        interval[0] < interval[1] and curriculum.defined_on(function, derivative, interval)
    )


def sample_headers(
    generator, function: str, k: int, temperature: float, top_p: float, seed: int
) -> list[str]:
    """k math headers in one batch, each cut where it ends (a row that never ends one cannot
    parse as one). One batch of k rows: on a CPU a forward pass costs about the same for 1 row or
    8."""
    return [
        sample.code
        for sample in generator.generate_batch(
            [function] * k, HEADER_TOKENS, temperature, top_p, seed, headers_only=True
        )
    ]


def self_consistent_scene(
    generator,
    function: str,
    greedy_code: str,
    k: int,
    temperature: float,
    top_p: float,
    seed: int,
    sampled: list[str] | None = None,
) -> tuple[str, Vote]:
    """The greedy scene with its header replaced by the header k samples agree on most.
    The greedy header votes too (index 0); k counts the sampled ones. `sampled`: those k
    headers when already drawn (`sample_headers`), else they are drawn here."""
    import time

    start = time.perf_counter()
    target = parse_function(function)
    x_range = _interval(target, true_derivative(target))
    greedy_end = math_header_length(greedy_code)
    headers = [greedy_code[:greedy_end] if greedy_end is not None else ""]
    headers += (
        sampled
        if sampled is not None
        else sample_headers(generator, function, k, temperature, top_p, seed)
    )
    readings = [read_header(h, target, x_range) for h in headers]
    derivatives = [derivative for derivative, _ in readings]
    result = vote(
        derivatives,
        x_range,
        [drawable(h, target, d) for h, d in zip(headers, derivatives, strict=True)],
    )
    result.headers, result.silent = (
        len(headers),
        Counter(why for _, why in readings if why is not None),
    )
    result.seconds = time.perf_counter() - start
    if result.chosen is None or greedy_end is None:
        return greedy_code, result  # nothing to vote with, or no body to put a header on
    return headers[result.chosen] + greedy_code[greedy_end:], result
