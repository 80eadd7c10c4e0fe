"""Scene templates: the rule steps a scene shows, and the header that is all that differs."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
import sympy as sp

from derivative_animator.data import scenes
from derivative_animator.math.differentiate import differentiate
from derivative_animator.math.header import math_header_length, typed_formulas
from derivative_animator.math.judge import same_values
from derivative_animator.math.parsing import X, parse_function


def scene_globals(code: str) -> dict:
    """Run a template scene's module level (our own oracle code, not generated code)."""
    namespace: dict = {}
    exec(compile(code.split("\nclass ")[0], "<scene>", "exec"), namespace)
    return namespace


def graphs_scene(function: str) -> str:
    expr = parse_function(function)
    derivative, steps = differentiate(expr)
    return scenes.scene_code(expr, derivative, steps, (0.5, 2), "graphs")


@pytest.fixture(scope="module")
def rule_steps():
    """The rule walker every graphs scene carries (it reads only its globals x and sp)."""
    return scene_globals(graphs_scene("x^2"))["rule_steps"]


def shown_by_differentiate(function: str) -> list[tuple[str, sp.Expr, sp.Expr]]:
    _, steps = differentiate(parse_function(function))
    return [(s.rule, s.expr, s.derivative) for s in scenes.shown_steps(steps)]


def test_rule_steps_agree_with_differentiate_on_every_dataset_function(all_records, rule_steps):
    for record in all_records:
        shown = rule_steps(parse_function(record.function))
        expected = shown_by_differentiate(record.function)
        assert [(rule, part) for rule, part, _ in shown] == [
            (rule, part) for rule, part, _ in expected
        ], record.function


@pytest.mark.parametrize(
    "function",
    [
        "1/(x sin(x))",
        "x^x",
        "e^{-x^2}",
        "sec(x) + csc(x)",
        "3x",
        "arccot(x)",
        "arcsec(x) + arcsinh(x)",
        "x^2 sin(x)/ln(x)",
        "2^x",
        "sqrt(x) arctan(x)",
        "sinh(x) cosh(x)",
    ],
)
def test_rule_steps_of_edge_cases_and_their_derivatives(function, rule_steps):
    shown, expected = rule_steps(parse_function(function)), shown_by_differentiate(function)
    assert [(r, p) for r, p, _ in shown] == [(r, p) for r, p, _ in expected]
    for (_, _, derivative), (_, _, right) in zip(shown, expected, strict=True):
        assert same_values(derivative, right, (0.5, 2)), function


def test_only_the_rule_steps_style_carries_the_walker(all_records):
    for record in all_records:
        assert ("def rule_steps" in record.completion) == (record.style == "graphs"), record.id
    assert (
        scene_globals(graphs_scene("x"))["rule_steps"](X) == []
    )  # the scene then shows d/dx x = 1


def test_below_the_math_header_every_scene_of_a_style_is_the_same(all_records):
    rests = {}
    for record in all_records:
        end = math_header_length(record.completion)
        header = record.completion[:end]
        assert (
            header.startswith('"""\nf(x) = ')
            and "\nf'(x) = " in header
            and "X_MIN, X_MAX = " in header
        )
        rests.setdefault(record.style, set()).add(record.completion[end:])
    assert {style: len(texts) for style, texts in rests.items()} == {
        style: 1 for style in scenes.STYLES
    }
    assert math_header_length("print('no header')") is None


def test_the_model_writes_a_scene_up_to_its_style_opening(all_records):
    for record in all_records:
        end = scenes.written_length(record.completion)
        written, rest = record.completion[:end], record.completion[end:]
        header = record.completion[: math_header_length(record.completion)]
        assert written == header + scenes.SHARED_CODE + scenes.STYLE_OPENINGS[record.style]
        assert written + rest == header + scenes.STYLE_CODE[record.style]
    assert scenes.written_length("print('no header')") is None
    first = all_records[0]
    other = first.completion.replace(scenes.STYLE_OPENINGS[first.style], "class OtherScene")
    assert scenes.written_length(other) is None


def test_the_scene_and_the_math_check_read_the_typed_docstring_alike(all_records):
    """The scene reads its docstring with sympy's parser (`typed`), the math check with
    `parse_function`: on every dataset scene both give f and the true derivative."""
    for record in all_records:
        namespace = scene_globals(record.completion)
        f_text, df_text = typed_formulas(
            ast.get_docstring(ast.parse(record.completion), clean=False)
        )
        function, x_range = parse_function(record.function), tuple(record.x_range)
        for read, text, expected in (
            (namespace["f_expr"], f_text, function),
            (namespace["df_expr"], df_text, sp.diff(function, X)),
        ):
            assert same_values(read, expected, x_range), (record.id, text)
            assert same_values(parse_function(text), expected, x_range), (record.id, text)


@pytest.mark.parametrize(
    "docstring, expected",
    [
        ("\nf(x) = x^2\nf'(x) = 2x\n", ("x^2", "2x")),
        ("f(x) = x^2\nf'(x) = 2x", ("x^2", "2x")),
        ("\nf(x) = x^2\n", None),  # one line: the scene's unpacking fails, no derivative given
        ("\nf(x) = x^2\nf'(x) = 2x\nmore\n", None),
        (
            "\nf(x) = x^2 + x\n(x^2)' = 2x\nf'(x) = 2x + 1\n",
            ("x^2 + x", "2x + 1"),
        ),  # worked steps between
        ("\nf(x) = x^2 + x\n(x^2)' is 2x\nf'(x) = 2x + 1\n", None),
        ("\nf(x): x^2\nf'(x) = 2x\n", None),
        (None, None),
    ],
)
def test_typed_formulas_split_the_docstring_as_the_scene_does(docstring, expected):
    assert typed_formulas(docstring) == expected


def test_worked_steps_sit_between_f_and_f_prime_and_both_readers_skip_them():
    """data.worked_steps: one `(u)' = ...` line per rule application before f' (the last step
    is f' itself); the scene and the math check still read f and f' alike."""
    from derivative_animator.data import dataset
    from derivative_animator.data.dataset_schema import DataConfig

    config = DataConfig(
        sizes={"train": 8, "validation": 4, "test": 4}, tree_practice=0.5, worked_steps=True
    )
    records = [r for split in dataset.generate_splits(config).values() for r in split]
    step_lines = 0
    for record in records:
        lines = ast.get_docstring(ast.parse(record.completion), clean=False).strip().split("\n")
        assert lines[0].startswith("f(x) = ") and lines[-1].startswith("f'(x) = ")
        function = parse_function(record.function)
        _, steps = differentiate(function)
        assert lines[1:-1] == scenes.worked_lines(steps)
        step_lines += len(lines) - 2
        namespace = scene_globals(record.completion)
        f_text, df_text = typed_formulas("\n".join(lines))
        for read, text, expected in (
            (namespace["f_expr"], f_text, function),
            (namespace["df_expr"], df_text, sp.diff(function, X)),
        ):
            assert same_values(read, expected, tuple(record.x_range)), (record.id, text)
    assert step_lines > 2 * len(records)
    assert config.to_dict()["worked_steps"] is True and "worked_steps" not in DataConfig().to_dict()


# --- graphs that teach (issue 29 item 3): what is on screen when a template scene has run ---


def run_scene(code: str, directory) -> tuple:
    """Run a template scene's construct without writing a movie (Manim's dry run): the scene at
    its end, its plotted (axes, curve) pairs and its module's globals."""
    from manim import tempconfig
    from manim.mobject.graphing.coordinate_systems import CoordinateSystem

    from derivative_animator.render import render_runner

    path = directory / "scene.py"
    path.write_text(code)
    original = CoordinateSystem.plot
    plotted = render_runner.record_plots()
    settings = {"dry_run": True, "frame_rate": 5, "media_dir": str(directory / "media")}
    settings.update(disable_caching=True, progress_bar="none", verbosity="WARNING")
    try:
        with tempconfig(settings):
            scene = render_runner._load_scene_class(path, None)()
            scene.render()
    finally:
        CoordinateSystem.plot = original
    return scene, plotted, scene.construct.__func__.__globals__


def scene_for(function: str, style: str, x_range=None) -> str:
    if x_range is None:
        from derivative_animator.data.oracle import template_scene

        return template_scene(function, style)
    expr = parse_function(function)
    derivative, steps = differentiate(expr)
    return scenes.scene_code(expr, derivative, steps, x_range, style)


def box(axes) -> tuple:
    """The axes' plotting area in frame coordinates: (left, bottom), (right, top)."""
    return axes.c2p(axes.x_range[0], axes.y_range[0]), axes.c2p(axes.x_range[1], axes.y_range[1])


def on_screen(scene, plotted) -> list:
    members = {id(m) for m in scene.get_mobject_family_members()}
    return [(axes, curve) for axes, curve in plotted if id(curve) in members]


def anchors_inside(axes, curve) -> bool:
    low, high = box(axes)
    points = np.asarray(curve.get_anchors())
    return len(points) > 0 and bool(np.all((points >= low - 1e-3) & (points <= high + 1e-3)))


@pytest.mark.needs_render
@pytest.mark.parametrize("style", scenes.STYLES)
@pytest.mark.parametrize("function", ["1/(1+x^2)", "arcsin(x)"])
def test_a_scene_teaches_with_numbers_labels_captions_and_time(function, style, tmp_path):
    """Tick numbers on both axes, x and f / f' labels, y = 0 in view (arcsin: f' >= 1), a
    caption on screen, every text above the curves, the curves inside their axes, 12-20 s."""
    from derivative_animator.render import render_runner

    scene, plotted, names = run_scene(scene_for(function, style), tmp_path)
    assert 12 <= scene.renderer.time <= 20, scene.renderer.time
    shown = on_screen(scene, plotted)
    assert shown and {id(c) for _, c in shown} == {id(c) for _, c in plotted}
    texts = render_runner._texts(scene.mobjects)
    assert any(r"\text{" in getattr(t, "tex_string", "") for t in texts), "no caption on screen"
    for axes, curve in shown:
        (left, bottom, _), (right, top, _) = box(axes)
        numbers = [m for m in axes.submobjects if type(m).__name__ == "VGroup" and len(m) > 0]
        below = [m for m in numbers if m.get_top()[1] < bottom and left - 0.5 < m.get_x() < right]
        beside = [m for m in numbers if m.get_right()[0] < left]
        assert len(below) >= 3 and len(beside) >= 3, (len(below), len(beside))
        labels = {id(names["TEXT"][names["f"]]), id(names["TEXT"][names["df"]])}
        assert labels & {id(m) for m in axes.get_family()}, "no f or f' label on the axes"
        assert axes.y_range[0] <= 0 <= axes.y_range[1], axes.y_range  # y = 0 in view
        assert anchors_inside(axes, curve)
        for text in texts:
            x0, y0, x1, y1 = render_runner._box(text)
            xs, ys = np.asarray(curve.get_anchors())[:, :2].T
            over = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
            assert not over.any(), f"{render_runner._name(text)} lies over a curve"


@pytest.mark.needs_render
@pytest.mark.parametrize("style", ["tangent", "graphs"])
def test_a_pole_splits_the_curve_and_its_spike_neither_leaves_the_panel_nor_sets_the_range(
    style, tmp_path
):
    """tan(2x) on -3..3 (a model may write that interval): each curve in pieces between the
    poles, every piece inside its axes, and the y-range fits the curve between the spikes."""
    scene, plotted, names = run_scene(scene_for("tan(2x)", style, (-3, 3)), tmp_path)
    for axes, curve in on_screen(scene, plotted):
        assert anchors_inside(axes, curve)
        assert len(curve.get_subpaths()) >= 4  # 4 poles in -3..3: 5 pieces, cut at the range
        assert axes.y_range[1] - axes.y_range[0] <= 60, axes.y_range  # 2 sec^2(2x) is 2 at least


@pytest.mark.needs_render
def test_the_tangent_line_is_cut_at_the_edges_of_its_axes(tmp_path):
    """However steep, and however near an edge, the tangent never leaves the plotting area."""
    scene, plotted, names = run_scene(scene_for("x^3", "tangent"), tmp_path)
    axes = plotted[0][0]
    low, high = box(axes)
    x_min, x_max = axes.x_range[:2]
    for a in np.linspace(x_min, x_max, 9):
        for slope in (0.0, 1.0, -5.0, 300.0):
            line = names["line"](axes, a, slope)
            ends = np.array([line.get_start(), line.get_end()])
            assert np.all((ends >= low - 1e-6) & (ends <= high + 1e-6)), (a, slope, ends)


@pytest.mark.needs_render
@pytest.mark.parametrize("style", scenes.STYLES)
@pytest.mark.parametrize(
    "function, written",
    [
        ("sqrt(-ln(cos(x)))", "sin(x)/(2sqrt(ln(cos(x))))"),  # a model's f': real nowhere here
        ("x^2", "0"),  # one value everywhere: no span to put ticks on
    ],
)
def test_a_scene_runs_to_its_end_whatever_f_prime_it_is_given(function, written, style, tmp_path):
    """A wrong f' is the math check's to fail; the scene still plays (f drawn, f' on empty or
    flat axes) instead of raising, so a teacher sees what was written."""
    code = scene_for(function, style)
    code = re.sub(r"^f'\(x\) = .*$", f"f'(x) = {written}", code, count=1, flags=re.M)
    scene, plotted, _ = run_scene(code, tmp_path)
    assert 12 <= scene.renderer.time <= 20, scene.renderer.time
    assert any(len(curve.get_anchors()) > 0 for _, curve in on_screen(scene, plotted))  # f
