"""Step-by-step differentiation: which rule applies where, and what it gives.

`differentiate(expr)` walks the expression tree bottom-up and records one `Step` per
rule application (children before parents), so the last step is the whole function and
its derivative. The last step's worked form is the derivative every dataset scene
writes (`f'(x) = ...` in its docstring), and graphs scenes show the steps on screen. The
result always equals `sympy.diff`; the tests check that on every dataset function.

The curriculum level of a function is defined by the rules its derivative needs
(`level_of`), so the generator and the parser's `--json` output cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp

from derivative_animator.math import notation
from derivative_animator.math.parsing import X

# Rule names, as shown in the animations. The number is the curriculum level that
# introduces the rule: 1 polynomials and powers, 2 elementary functions,
# 3 products and quotients, 4 compositions.
RULE_LEVEL = {
    "constant rule": 1,
    "power rule": 1,
    "sum rule": 1,
    "constant multiple rule": 1,
    "root rule": 2,
    "exponential rule": 2,
    "logarithm rule": 2,
    "trig rule": 2,
    "inverse trig rule": 2,
    "hyperbolic rule": 2,
    "absolute value rule": 2,
    "product rule": 3,
    "quotient rule": 3,
    "chain rule": 4,
    "logarithmic differentiation": 4,
}

# d/du f(u) for the functions the parser accepts, keyed by sympy class.
_OUTER_DERIVATIVE = {
    sp.sin: ("trig rule", lambda u: sp.cos(u)),
    sp.cos: ("trig rule", lambda u: -sp.sin(u)),
    sp.tan: ("trig rule", lambda u: sp.sec(u) ** 2),
    sp.sec: ("trig rule", lambda u: sp.sec(u) * sp.tan(u)),
    sp.csc: ("trig rule", lambda u: -sp.csc(u) * sp.cot(u)),
    sp.cot: ("trig rule", lambda u: -(sp.csc(u) ** 2)),
    sp.asin: ("inverse trig rule", lambda u: 1 / sp.sqrt(1 - u**2)),
    sp.acos: ("inverse trig rule", lambda u: -1 / sp.sqrt(1 - u**2)),
    sp.atan: ("inverse trig rule", lambda u: 1 / (1 + u**2)),
    sp.asec: ("inverse trig rule", lambda u: 1 / (sp.Abs(u) * sp.sqrt(u**2 - 1))),
    sp.acsc: ("inverse trig rule", lambda u: -1 / (sp.Abs(u) * sp.sqrt(u**2 - 1))),
    sp.acot: ("inverse trig rule", lambda u: -1 / (1 + u**2)),
    sp.sinh: ("hyperbolic rule", lambda u: sp.cosh(u)),
    sp.cosh: ("hyperbolic rule", lambda u: sp.sinh(u)),
    sp.tanh: ("hyperbolic rule", lambda u: 1 - sp.tanh(u) ** 2),
    sp.asinh: ("hyperbolic rule", lambda u: 1 / sp.sqrt(u**2 + 1)),
    sp.acosh: ("hyperbolic rule", lambda u: 1 / sp.sqrt(u**2 - 1)),
    sp.atanh: ("hyperbolic rule", lambda u: 1 / (1 - u**2)),
    sp.exp: ("exponential rule", lambda u: sp.exp(u)),
    sp.log: ("logarithm rule", lambda u: 1 / u),
    # d|u|/du = u/|u| (x is a plain symbol, so sympy.diff would answer with re(x) and im(x)).
    sp.Abs: ("absolute value rule", lambda u: u / sp.Abs(u)),
}


class UnsupportedFunction(ValueError):
    """The expression uses something the rule-based differentiator has no rule for."""


@dataclass(frozen=True)
class Step:
    rule: str
    expr: sp.Expr
    derivative: sp.Expr
    # The rule applied literally, in the notation people type (the prompt's), built from
    # the parts' own worked derivatives: `3*4x^3`, `2x*sin(x) + x^2*cos(x)`,
    # `cos(x^2)*2x`. sympy does the arithmetic when the scene reads it; a model only has
    # to apply rules and copy from the prompt, which is what small models can learn.
    worked: str


def differentiate(expr: sp.Expr) -> tuple[sp.Expr, list[Step]]:
    """Return d/dx expr and the rule applications that produce it, children first."""
    steps: list[Step] = []
    derivative, _ = _diff(sp.sympify(expr), steps)
    if not steps:  # a constant: still say which rule gave 0
        steps.append(Step("constant rule", expr, sp.Integer(0), "0"))
    return derivative, steps


def true_derivative(expr: sp.Expr) -> sp.Expr:
    """sympy's d/dx, on the real line where it matters: x is a plain symbol, so sympy.diff of
    |u| would answer with re(u) and im(u), which numpy cannot evaluate; with x real it is
    sign(u) u'."""
    if not expr.has(sp.Abs):
        return sp.diff(expr, X)
    real = sp.Symbol("x", real=True)
    return sp.diff(expr.subs(X, real), real).subs(real, X)


def level_of(steps: list[Step]) -> int:
    """Curriculum level = the most advanced rule the derivative needs."""
    return max(RULE_LEVEL[step.rule] for step in steps)


# --- worked forms: composing typed text with just enough parentheses ------------------


def _top_level_operators(text: str) -> set[str]:
    # Typed text never has bars directly inside bars (`notation.typed` writes abs() then), so
    # a "|" closes when the innermost open bracket is a "|", and opens otherwise.
    opened, found = [], set()
    for i, char in enumerate(text):
        if char in "([" or (char == "|" and opened[-1:] != ["|"]):
            opened.append(char)
        elif char in ")]|":
            opened = opened[:-1]
        elif not opened and char in "+-" and i > 0 and text[i - 1] not in "*/(^":
            found.add(char)
        elif not opened and char == "/":
            found.add("/")
    return found


def _is_sum(text: str) -> bool:
    return bool(_top_level_operators(text) & {"+", "-"})


def _factor(text: str) -> str:
    """Text usable as a later factor of a product."""
    return f"({text})" if text.startswith("-") or _is_sum(text) else text


def _is_atom(text: str) -> bool:
    """A name, a whole number, one call like `cos(x^2)` or one absolute value `|x - 1|`:
    safe as a power's base (`2x` is not: typed notation multiplies by juxtaposition)."""
    if re.fullmatch(r"[A-Za-z_]\w*|\d+|\|[^|]*\|", text):
        return True
    match = re.fullmatch(r"[A-Za-z_]\w*\((.*)\)", text)
    return bool(match) and _balanced(match.group(1))


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _power_base(text: str) -> str:
    return text if _is_atom(text) else f"({text})"


def _times(*parts: str) -> str:
    """Product of worked texts, dropping factors of 1."""
    kept = [p for p in parts if p != "1"]
    if "0" in kept:
        return "0"
    if not kept:
        return "1"
    sign = ""
    if kept[0] == "-1" and len(kept) > 1:
        sign, kept = "-", kept[1:]
    first = _factor(kept[0]) if sign or _is_sum(kept[0]) else kept[0]
    return sign + "*".join([first] + [_factor(p) for p in kept[1:]])


def _negate(text: str) -> str:
    if text == "0":
        return "0"
    if text.startswith("-") and not _is_sum(text[1:]):
        return text[1:]
    return "-" + _factor(text)


def _plus(parts: list[str]) -> str:
    """Sum of worked texts, writing `a - b` rather than `a + -b`."""
    kept = [p for p in parts if p != "0"]
    if not kept:
        return "0"
    text = kept[0]
    for part in kept[1:]:
        if part.startswith("-") and not _is_sum(part[1:]):
            text += " - " + part[1:]
        else:
            text += " + " + part
    return text


def _record(steps, rule, expr, derivative, worked) -> tuple[sp.Expr, str]:
    steps.append(Step(rule, expr, derivative, worked))
    return derivative, worked


# --- the rules ----------------------------------------------------------------------


def _diff(expr: sp.Expr, steps: list[Step]) -> tuple[sp.Expr, str]:
    if not expr.has(X):
        return sp.Integer(0), "0"  # constants inside a bigger expression need no step
    if expr == X:
        return _record(steps, "power rule", expr, sp.Integer(1), "1")
    if expr.is_Add:
        # Terms in printing order, so the worked form reads like the function.
        parts = [_diff(term, steps) for term in expr.as_ordered_terms()]
        return _record(
            steps, "sum rule", expr, sp.Add(*[d for d, _ in parts]), _plus([w for _, w in parts])
        )
    if expr.is_Mul:
        return _diff_mul(expr, steps)
    if expr.is_Pow:
        return _diff_pow(expr, steps)
    if isinstance(expr, sp.Function) and len(expr.args) == 1 and expr.func in _OUTER_DERIVATIVE:
        rule, outer = _OUTER_DERIVATIVE[expr.func]
        (inner,) = expr.args
        if inner == X:
            return _record(steps, rule, expr, outer(X), notation.typed(outer(X)))
        d_inner, w_inner = _diff(inner, steps)
        return _record(
            steps,
            "chain rule",
            expr,
            outer(inner) * d_inner,
            _times(notation.typed(outer(inner)), w_inner),
        )
    raise UnsupportedFunction(f"no differentiation rule for {expr.func.__name__}")


def _diff_mul(expr: sp.Expr, steps: list[Step]) -> tuple[sp.Expr, str]:
    coefficient, rest = expr.as_independent(X, as_Add=False)
    if coefficient != 1:
        d_rest, w_rest = _diff(rest, steps)
        return _record(
            steps,
            "constant multiple rule",
            expr,
            coefficient * d_rest,
            _times(notation.typed(coefficient), w_rest),
        )
    numerator, denominator = [], []
    for factor in rest.as_ordered_factors():
        base, exponent = factor.as_base_exp()
        if exponent.is_number and exponent.is_negative:
            denominator.append(base ** (-exponent))
        else:
            numerator.append(factor)
    if denominator:  # a numerator of 1 too: 1/(x*sin(x)) is a quotient, not a product of nothing
        top, bottom = sp.Mul(*numerator), sp.Mul(*denominator)
        (d_top, w_top), (d_bottom, w_bottom) = _diff(top, steps), _diff(bottom, steps)
        quotient = (d_top * bottom - top * d_bottom) / bottom**2
        top_text, bottom_text = notation.typed(top), notation.typed(bottom)
        numerator_text = _plus([_times(w_top, bottom_text), _negate(_times(top_text, w_bottom))])
        worked = f"({numerator_text})/{_power_base(bottom_text)}^2"
        return _record(steps, "quotient rule", expr, quotient, worked)
    # Product rule over all factors: sum of (one factor differentiated) * (the others).
    factors = numerator
    parts = [_diff(factor, steps) for factor in factors]
    derivative = sp.Add(
        *[d * sp.Mul(*(factors[:i] + factors[i + 1 :])) for i, (d, _) in enumerate(parts)]
    )
    worked = _plus(
        [
            _times(w, *[notation.typed(f) for f in factors[:i] + factors[i + 1 :]])
            for i, (_, w) in enumerate(parts)
        ]
    )
    return _record(steps, "product rule", expr, derivative, worked)


def _diff_pow(expr: sp.Expr, steps: list[Step]) -> tuple[sp.Expr, str]:
    base, exponent = expr.args
    if not exponent.has(X):
        rule = "power rule" if exponent.is_integer else "root rule"
        outer = exponent * base ** (exponent - 1)
        if base == X:
            return _record(steps, rule, expr, outer, notation.typed(outer))
        d_base, w_base = _diff(base, steps)
        # Written out (n*u^(n-1)) because sympy would distribute 2(2x + 1) into 4x + 2.
        reduced = exponent - 1
        power = (
            notation.typed(reduced)
            if reduced.is_Integer and reduced > 0
            else f"({notation.typed(reduced)})"
        )
        base_text = _power_base(notation.typed(base))
        outer_text = base_text if reduced == 1 else f"{base_text}^{power}"
        outer_text = outer_text if reduced != 0 else "1"
        return _record(
            steps,
            "chain rule",
            expr,
            outer * d_base,
            _times(notation.typed(exponent), outer_text, w_base),
        )
    if not base.has(X):  # a^u = e^(u ln a)
        outer = expr * sp.log(base)
        if exponent == X:
            return _record(steps, "exponential rule", expr, outer, notation.typed(outer))
        d_exponent, w_exponent = _diff(exponent, steps)
        return _record(
            steps, "chain rule", expr, outer * d_exponent, _times(notation.typed(outer), w_exponent)
        )
    # u^v with both depending on x: d/dx e^(v ln u) = u^v (v' ln u + v u'/u).
    (d_base, w_base), (d_exponent, w_exponent) = _diff(base, steps), _diff(exponent, steps)
    derivative = expr * (d_exponent * sp.log(base) + exponent * d_base / base)
    base_text = notation.typed(base)
    inside = _plus(
        [
            _times(w_exponent, f"ln({base_text})"),
            f"{_times(notation.typed(exponent), w_base)}/{_power_base(base_text)}",
        ]
    )
    return _record(
        steps,
        "logarithmic differentiation",
        expr,
        derivative,
        _times(notation.typed(expr), f"({inside})"),
    )
