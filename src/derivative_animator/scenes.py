"""Manim scene templates: the code the model learns to write.

Every scene starts with the same header: the function and its derivative as exact
sympy expressions (`f_expr`, `df_expr`: the one place the derivative lives, which the
math check reads), the rule steps as a scratchpad (each derivative written as its rule
applied to the parts' derivatives, `3*4*x**3`, so a model copies rather than does
arithmetic), and the plotting interval. What is
drawn on screen (formulas, curves, slopes) is derived from those at run time, so a scene
cannot show one derivative and plot another. Current Manim Community API only.

Styles:
- tangent: a tangent line slides along the curve with a live slope readout, then f'
  is drawn and the rule steps are written out;
- secant: a secant line through (x0, f(x0)) and (x0 + h, f(x0 + h)) turns into the
  tangent as h -> 0 (the limit definition), then the steps;
- graphs: f and f' plotted together, the steps written out one by one.
"""

from __future__ import annotations

from string import Template

import sympy as sp

from derivative_animator import notation
from derivative_animator.differentiate import Step
from derivative_animator.parsing import X

STYLES = ("tangent", "secant", "graphs")
SCENE_CLASS = {"tangent": "TangentLineScene", "secant": "SecantLimitScene", "graphs": "RuleStepsScene"}

_HEADER = Template(r'''from manim import *
import numpy as np
import sympy as sp

# f(x) = $typed
x = sp.Symbol("x")
f_expr = $f_code

# Differentiate one rule at a time: (rule, expression, its derivative).
# Each derivative applies its rule to the parts above; Python does the arithmetic.
steps = [
$steps]
df_expr = $df_code

f = sp.lambdify(x, f_expr, "numpy")
df = sp.lambdify(x, df_expr, "numpy")
X_MIN, X_MAX = $x_min, $x_max


def tex(expr):
    return sp.latex(expr, ln_notation=True)


def make_axes():
    xs = np.linspace(X_MIN, X_MAX, 200)
    ys = np.concatenate([np.broadcast_to(g(xs), xs.shape) for g in (f, df)]).astype(float)
    lo, hi = ys.min(), ys.max()
    step = 10 ** np.floor(np.log10(max(hi - lo, 1e-3) / 2))
    y_min, y_max = np.floor(lo / step) * step, np.ceil(hi / step) * step + step
    return Axes(x_range=[X_MIN, X_MAX, 1], y_range=[y_min, y_max, step],
                x_length=10, y_length=5, tips=False).to_edge(DOWN)


def formulas(*extra):
    """All of the scene's LaTeX in one compile: f, f', the rule steps, then `extra`."""
    steps_tex = [r"\text{%s: }\ \tfrac{d}{dx}\left[%s\right] = %s" % (rule, tex(e), tex(d))
                 for rule, e, d in steps]
    parts = ["f(x) = " + tex(f_expr), "f'(x) = " + tex(df_expr), *steps_tex, *extra]
    compiled = MathTex(*[part + r"\\" for part in parts[:-1]] + parts[-1:], font_size=34)
    for part in compiled:  # parts come out of one align* block: center each on its own
        part.scale_to_fit_width(min(part.width, config.frame_width - 1)).set_x(0)
    title, derivative = compiled[0].set_color(BLUE).to_edge(UP), compiled[1].set_color(RED)
    lines = VGroup(*compiled[2:2 + len(steps)]).arrange(DOWN, aligned_edge=LEFT).set_x(0)
    return title, derivative, lines, compiled[2 + len(steps):]

''')

_BODIES = {
    "tangent": r'''
class TangentLineScene(Scene):
    def construct(self):
        title, derivative_tex, lines, _ = formulas()
        axes = make_axes()
        graph = axes.plot(f, color=BLUE)
        self.play(Create(axes), Create(graph), Write(title))

        t = ValueTracker(X_MIN + 0.1 * (X_MAX - X_MIN))

        def tangent_line():
            x0 = t.get_value()
            p, q = axes.c2p(x0, f(x0)), axes.c2p(x0 + 1, f(x0) + df(x0))
            u = (q - p) / np.linalg.norm(q - p)
            return Line(p - 1.5 * u, p + 1.5 * u, color=YELLOW)

        def slope_readout():
            text = f"slope at x = {t.get_value():.2f}:  {float(df(t.get_value())):.3f}"
            return Text(text, font_size=28, color=YELLOW).next_to(title, DOWN)

        dot = always_redraw(lambda: Dot(axes.c2p(t.get_value(), f(t.get_value())), color=YELLOW))
        tangent, readout = always_redraw(tangent_line), slope_readout()
        self.play(Create(tangent), FadeIn(dot), FadeIn(readout))
        for stop in np.linspace(X_MIN, X_MAX, 5)[1:-1] + 0.05 * (X_MAX - X_MIN):
            self.play(t.animate.set_value(stop), run_time=1)
            self.remove(readout)
            readout = slope_readout()
            self.add(readout)
            self.wait(0.3)

        derivative = axes.plot(df, color=RED)
        self.play(FadeOut(readout), Create(derivative), Write(derivative_tex.next_to(title, DOWN)))
        self.wait(0.5)
        self.play(FadeOut(axes, graph, derivative, dot, tangent),
                  FadeIn(lines.next_to(derivative_tex, DOWN)))
        self.wait(1)
''',
    "secant": r'''
class SecantLimitScene(Scene):
    def construct(self):
        limit_tex = r"f'(x_0) = \lim_{h \to 0} \frac{f(x_0 + h) - f(x_0)}{h}"
        title, derivative_tex, lines, (limit,) = formulas(limit_tex)
        axes = make_axes()
        graph = axes.plot(f, color=BLUE)
        self.play(Create(axes), Create(graph), Write(title))

        x0 = X_MIN + 0.35 * (X_MAX - X_MIN)
        h0 = 0.3 * (X_MAX - X_MIN)
        h = ValueTracker(h0)
        secant = always_redraw(lambda: axes.get_secant_slope_group(
            x0, graph, dx=h.get_value(), dx_line_color=GREEN, dy_line_color=GREEN,
            secant_line_color=YELLOW, secant_line_length=6))

        def readout():
            slope = (f(x0 + h.get_value()) - f(x0)) / h.get_value()
            text = f"h = {h.get_value():.3f}:  secant slope = {slope:.3f}"
            return Text(text, font_size=28, color=YELLOW).next_to(title, DOWN)

        numbers = readout()
        self.add(secant, Dot(axes.c2p(x0, f(x0)), color=YELLOW))
        self.play(FadeIn(numbers))
        for scale in (0.5, 0.2, 0.05, 0.005):
            self.play(h.animate.set_value(scale * h0), run_time=0.8)
            self.remove(numbers)
            numbers = readout()
            self.add(numbers)
            self.wait(0.3)

        value = Text(f"= {float(df(x0)):.3f}", font_size=32, color=RED)
        result = VGroup(limit, value).arrange(RIGHT).next_to(title, DOWN)
        self.play(FadeOut(numbers), Write(result))
        self.wait(0.5)
        self.clear()
        self.add(title)
        self.play(Write(derivative_tex.next_to(title, DOWN)))
        self.play(FadeIn(lines.next_to(derivative_tex, DOWN)))
        self.wait(1)
''',
    "graphs": r'''
class RuleStepsScene(Scene):
    def construct(self):
        title, derivative_tex, lines, legend = formulas("f(x)", "f'(x)")
        self.play(Write(title))
        lines.next_to(title, DOWN)
        for line in lines:
            self.play(Write(line), run_time=0.6)
        self.play(Write(derivative_tex.next_to(lines, DOWN)))
        self.wait(0.5)
        self.play(FadeOut(lines, derivative_tex))

        axes = make_axes().scale(0.85).to_edge(DOWN)
        graph = axes.plot(f, color=BLUE)
        derivative = axes.plot(df, color=RED)
        legend = VGroup(legend[0].set_color(BLUE), legend[1].set_color(RED)).arrange(RIGHT, buff=1)
        self.play(Create(axes), Create(graph), FadeIn(legend.next_to(title, DOWN)))
        self.play(Create(derivative), run_time=1.5)
        self.wait(1)
''',
}


def _step_line(step: Step) -> str:
    return f'    ("{step.rule}", {notation.code(step.expr)}, {step.worked}),\n'



def shown_steps(steps: list[Step]) -> list[Step]:
    """Steps worth showing: d/dx x = 1 is implied by every other rule."""
    return [step for step in steps if step.expr != X] or steps


def scene_code(
    expr: sp.Expr,
    derivative: sp.Expr,
    steps: list[Step],
    x_range: tuple[float, float],
    style: str,
) -> str:
    """The full scene file for one function in one style."""
    if style not in _BODIES:
        raise ValueError(f"unknown scene style {style!r}; choose one of {', '.join(STYLES)}")
    header = _HEADER.substitute(
        typed=notation.typed(expr),
        f_code=notation.code(expr),
        steps="".join(_step_line(step) for step in shown_steps(steps)),
        df_code=steps[-1].worked,  # the whole function's step: the derivative, worked out
        x_min=_number(x_range[0]),
        x_max=_number(x_range[1]),
    )
    return header + _BODIES[style]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
