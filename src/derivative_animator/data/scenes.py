"""Manim scene templates: the code the model learns to write.

Every scene opens with its math header, the only lines that differ between functions: a
docstring holding f and f' in the notation people type (`f'(x) = 2x*sin(x) + x^2*cos(x)`: the
derivative as the rules apply to the parts, so the model copies rather than does arithmetic),
then the plotting interval. The scene reads both lines with plain sympy when it runs
(`header.SYMPY_READER`), and so does the math check: one reading on both sides, and a scene that
runs where only manim, numpy and sympy are installed (docs/decisions/0002-typed-math-header.md,
0013-standalone-scenes.md).

Everything on screen (formulas, curves, slopes, the rule steps) is derived from those two
expressions at run time, so a scene cannot show one derivative and plot another. Each pair of
axes fits the finite values of the curves it holds (`make_axes`: a wrong f' undefined on part
of the interval still renders, and only the math check fails it); f and f' share axes only when
neither would be squashed flat by the other's range (docs/decisions/0007-scene-axes.md).

What a viewer reads (docs/decisions/0012-graphs-that-teach.md): every text is a part of one
`MathTex` (`formulas`: one LaTeX run, one font, three sizes): f and f' in the top corners, a
caption row under them saying what each step shows, and the axes below that band, so no text
lies over a curve. The axes carry tick numbers (cut from that run's digits: `number`, no LaTeX
per number), light grid lines, an x label and the f / f' labels; their y-range takes in y = 0
unless the curve would then span under a third of it, and a spike (a pole) is cut at the
range of the middle half of the values, not fitted. `plot` keeps only the parts of a curve
inside its axes, so a pole splits it in pieces and nothing leaves the panel; `line` cuts the
tangent and the secant at the axes' edges. Live parts (`redraw`) are rebuilt each frame without
`Mobject.become`. Each video lasts 13-18 s.

The rule steps (`rule_steps`, graphs style only) are computed when the scene runs and agree with
`differentiate` step for step (tested): the model never writes a step list.

Styles:
- tangent: f above, f' below on axes of their own; a tangent line slides along f with a live
  slope readout beside the f' label while f' is revealed up to the tangent's x (the curve
  itself, no traced path), then f' is written;
- secant: a secant line through (x0, f(x0)) and (x0 + h, f(x0 + h)) with live h and slope turns
  into the tangent as h -> 0 (the limit definition; h shrinks by `np.geomspace`), then the
  limit's value and f' are written;
- graphs: the rule steps one by one (shrunk to fit the frame), then f and f' plotted.
"""

from __future__ import annotations

import os
import re
from string import Template

import sympy as sp

from derivative_animator.math import notation
from derivative_animator.math.differentiate import Step
from derivative_animator.math.header import MATH_HEADER_END, SYMPY_READER, SYMPY_READER_IMPORT
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
$reader_import

X_MIN, X_MAX = $interval
x = sp.Symbol("x")
$reader

lines = __doc__.strip().split("\n")  # f, any worked steps, f'
f_expr, df_expr = typed_line(lines[0]), typed_line(lines[-1])
f = sp.lambdify(x, f_expr, "numpy")
df = sp.lambdify(x, df_expr, "numpy")


TEXT = {}  # glyphs and labels (formulas)


def tex(expr):
    return sp.latex(expr, ln_notation=True)


def values(*gs):
    xs = np.linspace(X_MIN, X_MAX, 400)
    ys = np.concatenate([xs * 0 + g(xs) for g in gs])
    ys = ys[np.isfinite(ys)]
    if len(set(ys)) < 2:  # real nowhere, or flat
        return np.array([-1.0, 1.0]) + (ys[0] if len(ys) else 0)
    a, lo, hi, b = np.percentile(ys, [5, 25, 75, 95])
    return np.clip(ys, 3 * lo - 2 * hi, 3 * hi - 2 * lo) if np.ptp(ys) > 3 * (b - a) else ys  # cut spikes


def tick(span):
    return min(s for s in 10 ** np.floor(np.log10(span)) * np.array([2, 1, 0.5, 0.2, 0.1]) if span / s <= 6)


def number(value, step, size=1):
    places = max(0, int(-np.floor(np.log10(step))))
    glyphs = [TEXT[c].copy() for c in f"{np.round(value, places) + 0:.{places}f}" if c in TEXT]
    return VGroup(*glyphs).arrange(RIGHT, buff=0.04, coor_mask=RIGHT).scale(size)


def make_axes(*gs, width=10, height=2.1):
    ys = values(*gs)
    lo, hi = ys.min(), ys.max()
    if 3 * (hi - lo) >= max(hi, 0) - min(lo, 0) or hi == lo:  # y = 0 in view unless f flattens
        lo, hi = min(lo, 0), max(hi, 0)
    dx, dy = tick(X_MAX - X_MIN), tick(hi - lo)
    lo, hi = np.floor(lo / dy) * dy, np.ceil(hi / dy) * dy
    axes = Axes([X_MIN, X_MAX, dx], [lo, hi, dy], x_length=width, y_length=height, tips=False,
                axis_config={"include_ticks": False})
    for v in np.arange(np.ceil(X_MIN / dx) * dx, X_MAX + dx / 1e6, dx):
        axes.add(Line(axes.c2p(v, lo), axes.c2p(v, hi), stroke_width=1, color=GREY_E),
                 number(v, dx, 0.75).next_to(axes.c2p(v, lo), DOWN, 0.1))
    for v in np.arange(lo, hi + dy / 2, dy):
        axes.add(Line(axes.c2p(X_MIN, v), axes.c2p(X_MAX, v), stroke_width=1, color=GREY_E),
                 number(v, dy, 0.75).next_to(axes.c2p(X_MIN, v), LEFT, 0.1))
    labels = VGroup(*[TEXT[g] for g in gs]).arrange(RIGHT, buff=0.4)
    return axes.add(labels.next_to(axes.c2p(X_MIN, hi), UP, 0.15, aligned_edge=LEFT),
                    TEXT["x"].copy().next_to(axes.x_axis.get_end(), RIGHT, 0.15))


def formulas(*lines):
    # all texts in one LaTeX run
    lines = ["f(x) = " + tex(f_expr), "f'(x) = " + tex(df_expr), "x", "f(x)", "f'(x)", "0123456789.-", *lines]
    parts = MathTex(*[line + r"\\" for line in lines[:-1]], lines[-1], font_size=36)
    for part, corner, color in zip(parts, (UL, UR), (BLUE, RED)):
        part.scale(min(1, 6.6 / part.width, 0.9 / part.height)).set_color(color).to_corner(corner, buff=0.3)
    for part in parts[2:]:
        part.scale(min(0.75, 13 / part.width)).move_to(UP * 2.45)
    TEXT.update(zip(["x", f, df, *lines[5]], [*parts[2:5], *parts[5]]))
    parts[3].set_color(BLUE)
    parts[4].set_color(RED)
    return [parts[0], parts[1], *parts[6:]]


def inside(axes, points):
    low, high = axes.c2p(X_MIN, axes.y_range[0]), axes.c2p(X_MAX, axes.y_range[1])
    return np.all((low - 1e-6 <= points) & (points <= high + 1e-6), axis=-1)


def plot(axes, g, color):  # only what lies inside the axes: a pole splits the curve
    curve = axes.plot(g, x_range=[X_MIN, X_MAX, (X_MAX - X_MIN) / 400], color=color, use_smoothing=False)
    pieces = curve.points.reshape(-1, 4, 3)
    return curve.set_points(pieces[inside(axes, pieces[:, 0]) & inside(axes, pieces[:, 3])].reshape(-1, 3))


def line(axes, a, slope, length=30):  # through (a, f(a)), cut at the axes' edges
    p = axes.c2p(a, f(a))
    ends = p + np.outer(np.linspace(-length / 2, length / 2, 301), normalize(axes.c2p(a + 1, f(a) + slope) - p))
    ends = ends[inside(axes, ends)]
    return Line(ends[0], ends[-1], color=YELLOW) if inside(axes, p) and len(ends) > 1 else VMobject()


def dot(axes, x, y, color=YELLOW):
    return Dot(axes.c2p(x, y), color=color) if inside(axes, axes.c2p(x, y)) else VMobject()


def redraw(build):  # always_redraw without become's slow point alignment
    def update(group):
        for old in group.family_members_with_points():
            old.clear_points()  # a play draws every part it saw begin
        group.remove(*group.submobjects).add(build())

    return VGroup().add_updater(update, call_updater=True)
''')  # noqa: E501

_BODIES = {
    "tangent": r"""

class TangentLineScene(Scene):
    def construct(self):
        title, derivative_tex, slope_tex, *captions = formulas(
            r"\text{slope} =", r"\text{the graph of } f", r"\text{the tangent line at } x \text{ has the slope } f'(x)",
            r"\text{as } x \text{ moves, the slopes draw the graph of } f'", r"f' \text{ is the slope of } f \text{ at every } x")
        axes, d_axes = VGroup(make_axes(f), make_axes(df)).arrange(DOWN, buff=0.2, aligned_edge=RIGHT).to_edge(DOWN, buff=0.2)
        graph, derivative = plot(axes, f, BLUE), plot(d_axes, df, RED)
        self.play(Write(title), FadeIn(captions[0]), Create(axes), Create(d_axes), Create(graph), run_time=2.5)
        t = ValueTracker(X_MIN + 0.1 * (X_MAX - X_MIN))
        a = t.get_value
        tangent = redraw(lambda: VGroup(line(axes, a(), df(a()), 3), dot(axes, a(), f(a()))))
        slope = redraw(lambda: number(df(a()), 0.01).next_to(slope_tex, RIGHT))
        whole = derivative.copy()
        derivative.add_updater(lambda m: m.pointwise_become_partial(whole, 0, np.mean(whole.points[:, 0] <= d_axes.c2p(a(), 0)[0])))
        slope_tex.next_to(TEXT[df], RIGHT, buff=1)
        self.play(Create(tangent), FadeTransform(captions[0], captions[1]), FadeIn(slope_tex), run_time=1.5)
        self.add(slope, derivative, redraw(lambda: dot(d_axes, a(), df(a()), RED)))
        self.wait(1.5)
        self.play(FadeTransform(captions[1], captions[2]))
        self.play(t.animate.set_value(X_MAX), run_time=6)
        derivative.clear_updaters().set_points(whole.points)
        self.play(Write(derivative_tex), FadeTransform(captions[2], captions[3]), run_time=1.5)
        self.wait(2)
""",  # noqa: E501
    "secant": r"""

class SecantLimitScene(Scene):
    def construct(self):
        limit = r"f'(x_0) = \lim_{h \to 0} \frac{f(x_0 + h) - f(x_0)}{h} ="
        title, derivative_tex, limit_tex, h_tex, slope_tex, *captions = formulas(
            limit, "h =", r"\text{slope} =", r"\text{the secant through } x_0 \text{ and } x_0 + h",
            r"\text{as } h \text{ shrinks, the secant becomes the tangent}",
            r"\text{its slope tends to the derivative } f'(x_0)", r"\text{the same limit at every } x \text{ gives } f'(x)")
        axes = make_axes(f, height=4.6).to_edge(DOWN, buff=0.2)
        graph = plot(axes, f, BLUE)
        self.play(Write(title), FadeIn(captions[0]), Create(axes), Create(graph), run_time=2.5)
        x0, h = X_MIN + 0.35 * (X_MAX - X_MIN), ValueTracker(0.3 * (X_MAX - X_MIN))
        d = h.get_value
        secant = redraw(lambda: VGroup(line(axes, x0, (f(x0 + d()) - f(x0)) / d()), dot(axes, x0, f(x0)), dot(axes, x0 + d(), f(x0 + d()))))
        readout = VGroup(h_tex, slope_tex).arrange(RIGHT, buff=2.2).next_to(TEXT[f], RIGHT, buff=1)
        self.play(Create(secant), FadeIn(readout), run_time=1.5)
        self.add(redraw(lambda: number(d(), d() / 100).next_to(h_tex, RIGHT)),
                 redraw(lambda: number((f(x0 + d()) - f(x0)) / d(), 0.001).next_to(slope_tex, RIGHT)))
        self.wait(0.5)
        self.play(FadeTransform(captions[0], captions[1]))
        for dx in d() * np.geomspace(1, 0.01, 5)[1:]:
            self.play(h.animate.set_value(dx))
            self.wait(0.5)
        limit_row = VGroup(limit_tex, number(df(x0), 0.001)).arrange(RIGHT).to_corner(UR, buff=0.3)
        self.play(Write(limit_row), FadeTransform(captions[1], captions[2]), run_time=1.5)
        self.wait(1.5)
        self.play(FadeTransform(limit_row, derivative_tex), FadeTransform(captions[2], captions[3]), run_time=1.5)
        self.wait(1.5)
""",  # noqa: E501
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
        title, derivative_tex, *rules, first, second, third = formulas(
            *lines, r"\text{each rule gives the derivative of one part}", r"\text{together they give } f'(x)",
            r"\text{where } f \text{ rises, } f' > 0 \text{; where } f \text{ falls, } f' < 0")
        corner = derivative_tex.get_center()
        column = VGroup(VGroup(*rules).arrange(DOWN, aligned_edge=LEFT), derivative_tex.scale(0.75)).arrange(DOWN)
        column.scale_to_fit_height(min(column.height, 5.6)).next_to(first, DOWN, buff=0.3)
        self.play(Write(title), FadeIn(first))
        for rule in rules:
            self.play(Write(rule), run_time=min(1.5, 6 / len(rules)))
        self.play(Write(derivative_tex), FadeTransform(first, second), run_time=1.5)
        self.wait(1.5)
        self.play(FadeOut(*rules), derivative_tex.animate.scale(1 / 0.75).move_to(corner))
        if all(not 0 < np.ptp(values(g)) < 0.3 * np.ptp(values(f, df)) for g in (f, df)):
            grid = VGroup(make_axes(f, df, height=4.6))
        else:
            grid = VGroup(make_axes(f, width=5.5, height=4.6), make_axes(df, width=5.5, height=4.6)).arrange(RIGHT, buff=0.6)
        axes, d_axes = grid.to_edge(DOWN, buff=0.2)[0], grid[-1]
        graph, derivative = plot(axes, f, BLUE), plot(d_axes, df, RED)
        self.play(Create(grid), Create(graph), FadeTransform(second, third), run_time=2)
        self.play(Create(derivative), run_time=2)
        self.wait(2.5)
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
_CODE = _HEADER.safe_substitute(reader_import=SYMPY_READER_IMPORT, reader=SYMPY_READER)
HEADER_CODE = _CODE.split(DOCSTRING_END, 1)[1].split(INTERVAL, 1)[0] + INTERVAL
STYLE_CODE = {
    style: MATH_HEADER_END + _CODE.split(MATH_HEADER_END, 1)[1] + body
    for style, body in _BODIES.items()
}
SHARED_CODE = os.path.commonprefix(list(STYLE_CODE.values()))


def docstring_opening(expr: sp.Expr) -> str:
    """A scene's first two lines: the docstring's opening and `f(x) = ` with the function in its
    canonical notation, the very text the prompt carries. Decoding writes it (decision 0016):
    copying the prompt's function is not the model's to get wrong."""
    return _HEADER.template.split("$typed", 1)[0] + notation.typed(expr) + "\n"


def written_length(code: str) -> int | None:
    """Characters of a scene up to the end of its style's opening: all the model writes when
    decoding writes the code (the code all styles share is the context it picks a style in);
    None for a scene that is not a template's."""
    start = code.find(MATH_HEADER_END)
    if start < 0 or not code.startswith(SHARED_CODE, start):
        return None
    after = start + len(SHARED_CODE)
    for opening in STYLE_OPENINGS.values():
        if code.startswith(opening, after):
            return after + len(opening)
    return None


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
        interval=interval_values(x_range),
        reader_import=SYMPY_READER_IMPORT,
        reader=SYMPY_READER,
    )
    return header + _BODIES[style]


def interval_values(x_range: tuple[float, float]) -> str:
    """The interval as a scene's `X_MIN, X_MAX = ` line writes it: `1, 5`, `0.1, 4`."""
    return f"{_number(x_range[0])}, {_number(x_range[1])}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
