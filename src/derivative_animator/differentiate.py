"""Step-by-step differentiation: which rule applies where, and what it gives.

`differentiate(expr)` walks the expression tree bottom-up and records one `Step` per
rule application (children before parents), so the last step is the whole function and
its derivative. The steps are written into every dataset scene (a scratchpad a small
model can lean on) and shown on screen. The result always equals `sympy.diff`; the
tests check that on every dataset function.

The curriculum level of a function is defined by the rules its derivative needs
(`level_of`), so the generator and the parser's `--json` output cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derivative_animator.parsing import X

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
    sp.cot: ("trig rule", lambda u: -sp.csc(u) ** 2),
    sp.asin: ("inverse trig rule", lambda u: 1 / sp.sqrt(1 - u**2)),
    sp.acos: ("inverse trig rule", lambda u: -1 / sp.sqrt(1 - u**2)),
    sp.atan: ("inverse trig rule", lambda u: 1 / (1 + u**2)),
    sp.sinh: ("hyperbolic rule", lambda u: sp.cosh(u)),
    sp.cosh: ("hyperbolic rule", lambda u: sp.sinh(u)),
    sp.tanh: ("hyperbolic rule", lambda u: 1 - sp.tanh(u) ** 2),
    sp.exp: ("exponential rule", lambda u: sp.exp(u)),
    sp.log: ("logarithm rule", lambda u: 1 / u),
}


class UnsupportedFunction(ValueError):
    """The expression uses something the rule-based differentiator has no rule for."""


@dataclass(frozen=True)
class Step:
    rule: str
    expr: sp.Expr
    derivative: sp.Expr


def differentiate(expr: sp.Expr) -> tuple[sp.Expr, list[Step]]:
    """Return d/dx expr and the rule applications that produce it, children first."""
    steps: list[Step] = []
    derivative = _diff(sp.sympify(expr), steps)
    if not steps:  # a constant: still say which rule gave 0
        steps.append(Step("constant rule", expr, sp.Integer(0)))
    return derivative, steps


def level_of(steps: list[Step]) -> int:
    """Curriculum level = the most advanced rule the derivative needs."""
    return max(RULE_LEVEL[step.rule] for step in steps)


def _record(steps: list[Step], rule: str, expr: sp.Expr, derivative: sp.Expr) -> sp.Expr:
    steps.append(Step(rule, expr, derivative))
    return derivative


def _diff(expr: sp.Expr, steps: list[Step]) -> sp.Expr:
    if not expr.has(X):
        return sp.Integer(0)  # constants inside a bigger expression need no step of their own
    if expr == X:
        return _record(steps, "power rule", expr, sp.Integer(1))
    if expr.is_Add:
        parts = [_diff(term, steps) for term in expr.args]
        return _record(steps, "sum rule", expr, sp.Add(*parts))
    if expr.is_Mul:
        return _diff_mul(expr, steps)
    if expr.is_Pow:
        return _diff_pow(expr, steps)
    if isinstance(expr, sp.Function) and len(expr.args) == 1 and expr.func in _OUTER_DERIVATIVE:
        rule, outer = _OUTER_DERIVATIVE[expr.func]
        (inner,) = expr.args
        if inner == X:
            return _record(steps, rule, expr, outer(X))
        inner_derivative = _diff(inner, steps)
        return _record(steps, "chain rule", expr, outer(inner) * inner_derivative)
    raise UnsupportedFunction(f"no differentiation rule for {expr.func.__name__}")


def _diff_mul(expr: sp.Expr, steps: list[Step]) -> sp.Expr:
    coefficient, rest = expr.as_independent(X, as_Add=False)
    if coefficient != 1:
        inner = _diff(rest, steps)
        return _record(steps, "constant multiple rule", expr, coefficient * inner)
    numerator, denominator = [], []
    for factor in rest.args:
        base, exponent = factor.as_base_exp()
        if exponent.is_number and exponent.is_negative:
            denominator.append(base ** (-exponent))
        else:
            numerator.append(factor)
    if denominator and numerator:
        top, bottom = sp.Mul(*numerator), sp.Mul(*denominator)
        d_top, d_bottom = _diff(top, steps), _diff(bottom, steps)
        quotient = (d_top * bottom - top * d_bottom) / bottom**2
        return _record(steps, "quotient rule", expr, quotient)
    # Product rule over all factors: sum of (one factor differentiated) * (the others).
    factors = list(rest.args)
    derivatives = [_diff(factor, steps) for factor in factors]
    terms = [
        derivatives[i] * sp.Mul(*(factors[:i] + factors[i + 1 :])) for i in range(len(factors))
    ]
    return _record(steps, "product rule", expr, sp.Add(*terms))


def _diff_pow(expr: sp.Expr, steps: list[Step]) -> sp.Expr:
    base, exponent = expr.args
    if not exponent.has(X):
        rule = "power rule" if exponent.is_integer else "root rule"
        outer = exponent * base ** (exponent - 1)
        if base == X:
            return _record(steps, rule, expr, outer)
        return _record(steps, "chain rule", expr, outer * _diff(base, steps))
    if not base.has(X):  # a^u = e^(u ln a)
        outer = expr * sp.log(base)
        if exponent == X:
            return _record(steps, "exponential rule", expr, outer)
        return _record(steps, "chain rule", expr, outer * _diff(exponent, steps))
    # u^v with both depending on x: d/dx e^(v ln u).
    d_base, d_exponent = _diff(base, steps), _diff(exponent, steps)
    derivative = expr * (d_exponent * sp.log(base) + exponent * d_base / base)
    return _record(steps, "logarithmic differentiation", expr, derivative)
