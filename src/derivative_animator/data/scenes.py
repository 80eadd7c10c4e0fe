"""Manim scene templates: the code the model learns to write.

Every scene opens with its math header, the only lines that differ between functions: a
docstring holding f and f' in the notation people type (`f'(x) = 2x*sin(x) + x^2*cos(x)`: the
derivative as the rules apply to the parts, so the model copies rather than does arithmetic),
then the plotting interval. The scene reads both lines with the project's own parser when it
runs (`parsing.typed_line`), and so does the math check: one reading on both sides
(docs/decisions/0002-typed-math-header.md).

Everything on screen (formulas, curves, slopes, the rule steps) is derived from those two
expressions at run time, so a scene cannot show one derivative and plot another. Each pair of
axes fits the finite values of the curves it holds (`make_axes`: a wrong f' undefined on part
of the interval still renders, and only the math check fails it); f and f' share axes only when
neither would be squashed flat by the other's range (docs/decisions/0007-scene-axes.md). The
rule steps (`rule_steps`, graphs style only) are computed when the scene runs and agree with
`differentiate` step for step (tested): the model never writes a step list.

Styles:
- tangent: f above, f' below on axes of its own; a tangent line slides along f with a live
  slope readout while a point at (x, slope) traces f' out below, then f' is drawn in full;
- secant: a secant line through (x0, f(x0)) and (x0 + h, f(x0 + h)) turns into the tangent as
  h -> 0 (the limit definition; h shrinks by `np.geomspace`), then f' is written;
- graphs: the rule steps one by one (shrunk to fit the frame), then f and f' plotted.
"""

from __future__ import annotations

import os
import re
from string import Template

import sympy as sp

from derivative_animator.math import notation
from derivative_animator.math.differentiate import Step
from derivative_animator.math.header import MATH_HEADER_END
from derivative_animator.math.parsing import X

STYLES = ("tangent", "secant", "graphs")
SCENE_CLASS = {
    "tangent": "TangentLineScene",
    "secant": "SecantLimitScene",
    "graphs": "RuleStepsScene",
}

_HEADER = Template(r'''"""
f(x) = $typed
${worked}f'(x) = $df_typed
"""
from manim import *
import numpy as np
import sympy as sp
from derivative_animator.parsing import typed_line

X_MIN, X_MAX = $x_min, $x_max
x = sp.Symbol("x")
lines = __doc__.strip().split("\n")  # f, any worked steps, f': the docstring's math, as typed
f_expr, df_expr = typed_line(lines[0]), typed_line(lines[-1])
f = sp.lambdify(x, f_expr, "numpy")
df = sp.lambdify(x, df_expr, "numpy")


def tex(expr):
    return sp.latex(expr, ln_notation=True)


def values(*gs):
    xs = np.linspace(X_MIN, X_MAX, 200)
    ys = np.concatenate([xs * 0 + g(xs) for g in gs])
    return ys[np.isfinite(ys)]


def make_axes(*gs, width=10, height=4.5):
    ys = values(*gs)
    step = 10 ** np.floor(np.log10(np.ptp(ys) + 0.01))
    return Axes([X_MIN, X_MAX, 10 ** np.floor(np.log10(X_MAX - X_MIN))],
                [ys.min() - step / 2, ys.max() + step / 2, step], x_length=width, y_length=height, tips=False)


def formulas(*extra):
    lines = ["f(x) = " + tex(f_expr), "f'(x) = " + tex(df_expr), *extra]
    parts = MathTex(*[line + r"\\" for line in lines[:-1]], lines[-1], font_size=40)
    for part in parts:
        part.scale_to_fit_width(min(part.width, config.frame_width - 1)).set_x(0)
    parts[0].set_color(BLUE).to_edge(UP)
    parts[1].set_color(RED)
    return parts
''')  # noqa: E501

_BODIES = {
    "tangent": r"""

class TangentLineScene(Scene):
    def construct(self):
        title, derivative_tex = formulas()
        axes, d_axes = VGroup(make_axes(f, height=2.3), make_axes(df, height=2.3)).arrange(DOWN).to_edge(DOWN)
        graph, derivative = axes.plot(f, color=BLUE), d_axes.plot(df, color=RED)
        self.play(Create(axes), Create(d_axes), Create(graph), Write(title))
        t = ValueTracker(X_MIN + 0.1 * (X_MAX - X_MIN))

        def tangent():
            a = t.get_value()
            p = axes.c2p(a, f(a))
            line = Line(p, axes.c2p(a + 1, f(a) + df(a)), color=YELLOW).set_length(3).move_to(p)
            return VGroup(line, Dot(p, color=YELLOW))

        self.play(Create(always_redraw(tangent)))
        slope = always_redraw(lambda: Text(f"slope: {df(t.get_value()):.2f}", color=YELLOW).next_to(title, DOWN))
        dot = always_redraw(lambda: Dot(d_axes.c2p(t.get_value(), df(t.get_value())), color=RED))
        self.add(slope, dot, TracedPath(dot.get_center, stroke_color=RED))
        self.play(t.animate.set_value(X_MAX), run_time=3)
        self.remove(slope)
        derivative_tex.next_to(title, DOWN)
        self.play(Create(derivative), Write(derivative_tex))
        self.wait(1)
""",  # noqa: E501
    "secant": r"""

class SecantLimitScene(Scene):
    def construct(self):
        limit = r"f'(x_0) = \lim_{h \to 0} \frac{f(x_0 + h) - f(x_0)}{h}"
        title, derivative_tex, limit_tex = formulas(limit)
        axes = make_axes(f).to_edge(DOWN)
        graph = axes.plot(f, color=BLUE)
        self.play(Create(axes), Create(graph), Write(title))
        x0, h = X_MIN + 0.35 * (X_MAX - X_MIN), ValueTracker(0.3 * (X_MAX - X_MIN))
        self.add(always_redraw(lambda: axes.get_secant_slope_group(
            x0, graph, dx=h.get_value(), secant_line_color=YELLOW, secant_line_length=6)))
        self.add(Dot(axes.c2p(x0, f(x0)), color=YELLOW))
        for dx in h.get_value() * np.geomspace(1, 0.01, 5):
            self.play(h.animate.set_value(dx), run_time=0.8)
            slope = (f(x0 + dx) - f(x0)) / dx
            label = Text(f"h = {dx:.3f}:  secant slope = {slope:.3f}", font_size=28, color=YELLOW)
            self.add(label.next_to(title, DOWN))
            self.wait(0.4)
            self.remove(label)
        value = Text(f"= {float(df(x0)):.3f}", font_size=32, color=RED)
        limit_row = VGroup(limit_tex, value).arrange(RIGHT).next_to(title, DOWN)
        self.play(Write(limit_row))
        self.wait(0.5)
        self.play(FadeTransform(limit_row, derivative_tex.next_to(title, DOWN)))
        self.wait(1)
""",
    "graphs": r"""

NAMED_RULES = {"exp": "exponential", "log": "logarithm", "Abs": "absolute value",
               **dict.fromkeys(["asin", "acos", "atan", "asec", "acsc", "acot"], "inverse trig"),
               **dict.fromkeys(["sinh", "cosh", "tanh", "asinh", "acosh", "atanh"], "hyperbolic")}


def rule_steps(e):
    # (rule, part, derivative of the part) for each part that needs a rule, inner parts first
    if not e.has(x) or e == x:
        return []
    if e.is_Add:
        rule, parts = "sum rule", e.as_ordered_terms()
    elif e.is_Mul and e.as_independent(x, as_Add=False)[0] != 1:
        rule, parts = "constant multiple rule", [e.as_independent(x, as_Add=False)[1]]
    elif e.is_Mul:
        down = [p for p in e.as_ordered_factors() if p.is_Pow and p.exp.is_number and p.exp < 0]
        up = [p for p in e.as_ordered_factors() if p not in down]
        if down:  # shown as the rule gives it, (u'v - uv')/v^2
            u, v = sp.Mul(*up), 1 / sp.Mul(*down)
            quotient = (sp.diff(u, x) * v - u * sp.diff(v, x)) / v**2
            return rule_steps(u) + rule_steps(v) + [("quotient rule", e, quotient)]
        rule, parts = "product rule", up
    elif e.is_Pow and not e.exp.has(x):
        rule = "chain rule" if e.base != x else "power rule" if e.exp.is_integer else "root rule"
        parts = [e.base]
    elif e.is_Pow and not e.base.has(x):
        rule, parts = "exponential rule" if e.exp == x else "chain rule", [e.exp]
    elif e.is_Pow:
        rule, parts = "logarithmic differentiation", [e.base, e.exp]
    else:
        rule = "chain rule" if e.args[0] != x else NAMED_RULES.get(e.func.__name__, "trig") + " rule"
        parts = list(e.args)
    return [step for part in parts for step in rule_steps(part)] + [(rule, e, sp.diff(e, x))]


class RuleStepsScene(Scene):
    def construct(self):
        steps = rule_steps(f_expr) or [("power rule", f_expr, df_expr)]
        lines = [r"\text{%s: }\ \tfrac{d}{dx}\left[%s\right] = %s" % (r, tex(e), tex(d)) for r, e, d in steps]
        title, derivative_tex, *rules, f_label, df_label = formulas(*lines, "f(x)", "f'(x)")
        rules = VGroup(*rules).arrange(DOWN, aligned_edge=LEFT)
        column = VGroup(rules, derivative_tex).arrange(DOWN)
        room = title.get_bottom()[1] + config.frame_height / 2 - 0.5
        column.scale_to_fit_height(min(column.height, room)).next_to(title, DOWN)
        self.play(Write(title))
        for rule in rules:
            self.play(Write(rule), run_time=0.6)
        self.play(Write(derivative_tex))
        self.wait(0.5)
        self.play(FadeOut(rules, derivative_tex))
        if all(not 0 < np.ptp(values(g)) < 0.3 * np.ptp(values(f, df)) for g in (f, df)):
            grid = VGroup(make_axes(f, df))
        else:
            grid = VGroup(make_axes(f, width=6), make_axes(df, width=6)).arrange(RIGHT, buff=1)
        axes, d_axes = grid.to_edge(DOWN)[0], grid[-1]
        graph, derivative = axes.plot(f, color=BLUE), d_axes.plot(df, color=RED)
        f_label.set_color(BLUE).next_to(axes, UP).align_to(axes, LEFT)
        df_label.set_color(RED).next_to(d_axes, UP).align_to(d_axes, RIGHT)
        self.play(Create(grid), Create(graph), FadeIn(f_label, df_label))
        self.play(Create(derivative), run_time=1.5)
        self.wait(1)
""",  # noqa: E501
}


# How each style's own code begins, after the body all styles share: its first name
# (`class SecantLimitScene`, `NAMED_RULES`). There the model picks a style, and decoding makes it
# write the one a user asked for (decoding.StyleChoice). A name ends where the tokenizer splits
# too, so the model goes on in its own tokens (`NAMED_RULES = {` would split ` {"` unnaturally).
STYLE_OPENINGS = {
    style: re.match(r"(class )?[A-Za-z_]+", body.strip("\n")).group()
    for style, body in _BODIES.items()
}


# The code of a scene is the same for every function (it reads its math from the docstring), so
# decoding writes it instead of the model (decoding.SharedCode): HEADER_CODE between the
# docstring and the interval's values; after the interval's line, STYLE_CODE, the rest of a scene
# of that style; SHARED_CODE, what all styles hold there before their openings.
# The forced text ends before the space: the tokenizer puts a space with the word after it.
DOCSTRING_END, INTERVAL = '\n"""\n', "X_MIN, X_MAX ="
HEADER_CODE = _HEADER.template.split(DOCSTRING_END, 1)[1].split(INTERVAL, 1)[0] + INTERVAL
STYLE_CODE = {
    style: MATH_HEADER_END + _HEADER.template.split(MATH_HEADER_END, 1)[1] + body
    for style, body in _BODIES.items()
}
SHARED_CODE = os.path.commonprefix(list(STYLE_CODE.values()))


def shown_steps(steps: list[Step]) -> list[Step]:
    """Steps worth showing: d/dx x = 1 is implied by every other rule."""
    return [step for step in steps if step.expr != X] or steps


def worked_lines(steps: list[Step]) -> list[str]:
    """The rule applications before f', innermost first, one per line: `(u)' = <u' worked>`,
    each built from the lines above it, so writing one needs only a local look."""
    return [f"({notation.typed(step.expr)})' = {step.worked}" for step in shown_steps(steps)[:-1]]


def scene_code(
    expr: sp.Expr,
    derivative: sp.Expr,
    steps: list[Step],
    x_range: tuple[float, float],
    style: str,
    worked_steps: bool = False,
) -> str:
    """The full scene file for one function in one style; `worked_steps`: the header carries one
    line per rule application before f' (`worked_lines`)."""
    if style not in _BODIES:
        raise ValueError(f"unknown scene style {style!r}; choose one of {', '.join(STYLES)}")
    header = _HEADER.substitute(
        typed=notation.typed(expr),
        worked="".join(line + "\n" for line in worked_lines(steps)) if worked_steps else "",
        df_typed=steps[-1].worked,  # the whole function's step: the derivative, worked out
        x_min=_number(x_range[0]),
        x_max=_number(x_range[1]),
    )
    return header + _BODIES[style]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
