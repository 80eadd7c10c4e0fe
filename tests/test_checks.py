"""The checker: the template oracle passes; planted faults are classified correctly."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

from derivative_animator.data.oracle import CannotAnimate, template_scene
from derivative_animator.data.scenes import STYLES
from derivative_animator.math.differentiate import differentiate, true_derivative
from derivative_animator.math.header import PROJECT_READER_IMPORT, SYMPY_READER, SYMPY_READER_IMPORT
from derivative_animator.math.judge import (
    _interval,
    check_function,
    check_math,
    expressions_equal,
    same_values,
)
from derivative_animator.math.parsing import X, parse_function
from derivative_animator.render import checks

FAST = checks.RenderOptions(quick=True, save_frame=False)


@pytest.fixture(scope="module")
def warm_renders():
    """A warm render sandbox shared by this module's tests (Manim imported once)."""
    with checks.PythonSandbox(
        checks.SandboxLimits(timeout_s=15), preload=checks.RENDER_PRELOAD
    ) as box:
        yield box


@pytest.fixture(params=["fresh", "warm"])
def sandbox(request):
    """Where a planted scene renders: a fresh process (None), or the warm sandbox's forked child."""
    return request.getfixturevalue("warm_renders") if request.param == "warm" else None


def oracle(function, style="tangent"):
    return template_scene(function, style)


def with_line(code, name, text):
    """The scene with its docstring's `f(x) = ...` (name "f") or `f'(x) = ...` line rewritten."""
    line = "f(x)" if name == "f" else "f'(x)"
    changed, count = re.subn(
        rf"^{re.escape(line)} = .*$", f"{line} = {text}", code, count=1, flags=re.M
    )
    assert count == 1
    return changed


@pytest.mark.parametrize("function", ["3x^4 - 2x^2 + 5", "ln x", "x^2 sin x", "e^{-x^2}"])
def test_oracle_math_for_every_level(function):
    for style in STYLES:
        result = checks.check_code(oracle(function, style), function, execute=False)
        assert result.syntax and result.structure and result.math, result.error
        assert result.math_method == "symbolic"


@pytest.mark.parametrize(
    "written, true",
    [
        ("sec(x)^2", "1 + tan(x)^2"),
        ("2sin(x)cos(x)", "sin(2x)"),
        ("cosh(x)^2 - sinh(x)^2", "1"),
        ("e^(2x)", "e^x e^x"),
    ],
)
def test_a_derivative_equal_in_another_form_is_confirmed_symbolically(written, true):
    assert expressions_equal(parse_function(written), parse_function(true), (0.2, 1.2)) == (
        True,
        "symbolic",
    )


@pytest.mark.timeout(60)  # a hang, not a speed target: sympy's simplify ran for minutes here
def test_the_chain_rule_left_unsimplified_is_judged_without_a_hang():
    function = parse_function("cot(6x^2 + 4x + 4)/arctan(x)")
    written = parse_function(
        "(-csc(6x^2 + 4x + 4)^2*(6*2x + 4)*arctan(x) - cot(6x^2 + 4x + 4)*1/(x^2 + 1))/arctan(x)^2"
    )
    true = sp.diff(function, X)
    assert expressions_equal(written, true, (0.5, 2.0)) == (True, "symbolic")
    wrong = written + parse_function("x^2 - x^2 + 1/100")
    assert expressions_equal(wrong, true, (0.5, 2.0)) == (False, "numeric")
    padded = true * (X**2 + 2 * X + 1) ** 100 / (X + 1) ** 200  # equal, but never expanded
    assert expressions_equal(padded, true, (0.5, 2.0)) == (True, "numeric")


def test_a_derivative_whose_exponential_form_is_huge_is_confirmed_numerically():
    """The textbook's cbrt(e^(csc(x^2))/(sqrt(x^3 - 9) tan(x))): sympy cancelled its exponential
    form for 10 s to say "symbolic"; the verdict never needed it."""
    function = parse_function("cbrt(e^(csc(x^2))/(sqrt(x^3 - 9) tan(x)))")
    worked, true = differentiate(function)[0], true_derivative(function)
    assert sp.expand(worked - true) != 0  # so only the exponential form could prove it
    x_range = _interval(function, true)
    assert expressions_equal(worked, true, x_range) == (True, "numeric")
    assert same_values(worked, true, x_range)
    assert not same_values(worked + 1 / X, true, x_range)


@pytest.mark.needs_render
@pytest.mark.parametrize("style", STYLES)
def test_oracle_renders_each_style(style, tmp_path):
    result = checks.check_code(
        oracle("x^2 sin x", style), "x^2 sin(x)", render=checks.RenderOptions(), output_dir=tmp_path
    )
    assert result.passed, result.error
    assert (tmp_path / f"{result.scene}.png").stat().st_size > 1000
    assert (tmp_path / f"{result.scene}.mp4").stat().st_size > 1000


@pytest.mark.needs_render
def test_render_frame_rate_is_passed_to_manim(tmp_path):
    import av

    result = checks.check_code(
        oracle("x^2", "tangent"), "x^2", output_dir=tmp_path, render=checks.RenderOptions(fps=5)
    )
    assert result.passed, result.error
    with av.open(str(tmp_path / f"{result.scene}.mp4")) as movie:
        assert movie.streams.video[0].average_rate == 5  # Manim's low quality is 15 fps otherwise


@pytest.mark.needs_render
@pytest.mark.slow
@pytest.mark.parametrize("function", ["3x^4 - 2x^2 + 5", "2cos(x) + x", "x/(x^2+1)", "sin(x^2)"])
@pytest.mark.parametrize("style", STYLES)
def test_oracle_passes_all_four_checks_for_every_level_and_style(function, style):
    result = checks.check_code(oracle(function, style), function)
    assert result.passed and result.layout, (result.error, result.layout_problems)


HARD_FUNCTIONS = [
    line.strip()
    for line in (Path(__file__).parent / "data" / "hard_functions.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.mark.needs_render
@pytest.mark.slow
def test_the_oracle_passes_all_five_checks_on_the_hard_set_in_every_style(warm_renders):
    """Steep polynomials, poles, domain edges, tiny and huge ranges, long rule-step lists, mixed
    levels (tests/data/hard_functions.txt): each style's scene renders, is right and is legible."""
    assert len(HARD_FUNCTIONS) >= 40
    failures = []
    for number, function in enumerate(HARD_FUNCTIONS):
        style = STYLES[
            number % len(STYLES)
        ]  # every style on a third of them: all three, in CI's time
        result = checks.check_code(
            oracle(function, style),
            function,
            render=checks.RenderOptions(quick=True),
            sandbox=warm_renders,
        )
        if not (result.passed and result.layout):
            failures.append(f"{function} ({style}): {result.error or result.layout_problems}")
    assert not failures, "\n".join(failures)


@pytest.mark.needs_render
@pytest.mark.slow
def test_the_oracle_passes_all_five_checks_on_every_validation_and_test_function(
    default_splits, warm_renders
):
    """The scenes evaluation compares models against: each in its dataset style, rendered."""
    records = default_splits["validation"] + default_splits["test"]
    assert len(records) == 107
    failures = []
    for record in records:
        result = checks.check_code(
            oracle(record.function, record.style),
            record.function,
            render=checks.RenderOptions(quick=True),
            sandbox=warm_renders,
        )
        if not (result.passed and result.layout):
            failures.append(
                f"{record.function} ({record.style}): {result.error or result.layout_problems}"
            )
    assert not failures, "\n".join(failures)


def test_syntax_error():
    result = checks.check_code("from manim import *\nclass S(Scene)\n    pass\n", "x^2")
    assert result.syntax is False and "syntax" in result.error and not result.passed


def test_missing_scene_class():
    result = checks.check_code("df_expr = 2*x\n", "x^2", execute=False)
    assert result.structure is False and "structure" in result.error


def test_wrong_derivative_is_caught_without_running_anything():
    code = with_line(oracle("x^3"), "df", "3x^3")
    result = checks.check_code(code, "x^3", execute=False)
    assert result.math is False and "derivative 3x^3 is wrong; expected 3x^2" in result.error
    unreadable = checks.check_code(with_line(oracle("x^3"), "df", "3x^(2"), "x^3", execute=False)
    assert unreadable.math is False and "derivative is not a plain expression" in unreadable.error


def test_every_failure_is_reported_in_order():
    code = with_line(
        oracle("x^2"), "df", "1/(2ln(x"
    )  # sympy cannot read it either: the render fails
    result = checks.check_code(code, "x^2", render=checks.RenderOptions(quick=True))
    assert result.math is False and result.executes is False
    assert result.error.startswith("math: derivative") and "; execute" in result.error, result.error


def test_wrong_function_is_caught():
    code = with_line(oracle("x^3"), "f", "x^4")
    result = checks.check_code(code, "x^3", execute=False)
    assert result.math is False and "animates f(x) = x^4" in result.error


def test_check_function_reads_f_alone():
    import ast

    from derivative_animator.math.parsing import parse_function

    code = oracle("x^3")
    assert check_function(ast.parse(code), parse_function("x^3")) is True
    assert check_function(ast.parse(with_line(code, "f", "x^4")), parse_function("x^3")) is False
    assert (
        check_function(ast.parse("f_expr = x**3"), parse_function("x^3")) is True
    )  # code, not typed
    assert check_function(ast.parse("y = 1"), parse_function("x^3")) is None


@pytest.mark.parametrize("derivative", ["sin(2x)", "2sin(x) cos(x)", "2*sin(x)*cos(x)"])
def test_equivalent_forms_of_the_derivative_pass(derivative):
    code = with_line(oracle("sin(x)^2"), "df", derivative)
    assert checks.check_code(code, "sin(x)^2", execute=False).math is True
    assert (
        check_math(ast.parse("df_expr = sp.sin(2*x)"), checks.parse_function("sin(x)^2"))[0] is True
    )


def test_lambda_derivative_is_found():
    tree = ast.parse("import numpy as np\ndf = lambda t: 2*np.cos(2*t)\n")
    assert check_math(tree, checks.parse_function("sin(2x)"))[0] is True


@pytest.mark.needs_render
@pytest.mark.parametrize(
    "plant, expected",
    [
        (lambda c: c.replace("Create(axes)", "ShowCreation(axes)"), "NameError"),
        (
            lambda c: c.replace("def construct(self):", "def construct(self):\n        1 / 0"),
            "ZeroDivisionError",
        ),
        (
            lambda c: c.replace(
                "def construct(self):", "def construct(self):\n        while True: pass"
            ),
            "timed out",
        ),
    ],
)
def test_planted_runtime_faults(plant, expected, sandbox):
    render = checks.RenderOptions(
        quick=True, save_frame=False, limits=checks.SandboxLimits(timeout_s=15)
    )
    result = checks.check_code(plant(oracle("x^2")), "x^2", render=render, sandbox=sandbox)
    assert result.executes is False and expected in result.error, result.error
    assert result.math is True  # the mathematics was right; only execution failed


@pytest.mark.needs_render
def test_scene_writing_outside_its_dir_fails_and_host_is_untouched(tmp_path, sandbox):
    victim = tmp_path / "host_file.txt"
    victim.write_text("precious")
    code = oracle("x^2").replace(
        "def construct(self):",
        f"def construct(self):\n        open({str(victim)!r}, 'w').write('overwritten')",
    )
    result = checks.check_code(code, "x^2", render=FAST, sandbox=sandbox)
    assert result.executes is False
    assert victim.read_text() == "precious"


def test_environment_failure_is_not_a_code_failure(monkeypatch):
    monkeypatch.setattr(
        checks.environment, "render_problem_summary", lambda: "environment: latex not found"
    )
    result = checks.check_code(oracle("x^2"), "x^2")
    assert (
        result.executes is None and result.environment_error and "latex not found" in result.error
    )


def test_render_failing_false_renders_only_scenes_whose_math_is_right(monkeypatch):
    rendered = []
    monkeypatch.setattr(checks, "_check_execution", lambda code, *args: rendered.append(code))
    wrong = with_line(oracle("x^3"), "df", "3x^3")
    result = checks.check_code(wrong, "x^3", render_failing=False)
    assert result.math is False and result.executes is None and rendered == []
    checks.check_code(oracle("x^3"), "x^3", render_failing=False)
    checks.check_code(wrong, "x^3")  # the default renders whatever the math
    assert rendered == [oracle("x^3"), wrong]


def test_header_math_is_right_judges_the_header_alone():
    from derivative_animator.math.judge import header_math_is_right
    from derivative_animator.math.parsing import parse_function

    def header(derivative):
        return (
            f'"""\nf(x) = x^2 sin(x)\nf\'(x) = {derivative}\n"""\n'
            "import sympy as sp\n\nX_MIN, X_MAX = -3, 3\n"
        )

    target = parse_function("x^2 sin(x)")
    assert header_math_is_right(header("2x*sin(x) + x^2*cos(x)"), target)
    assert not header_math_is_right(header("2x*cos(x)"), target)
    assert not header_math_is_right(header("2x*(cos(x)"), target)
    assert not header_math_is_right(
        header("2x*sin(x) + x^2*cos(x)").replace("f(x) = x^2", "f(x) = x^3"), target
    )


@pytest.mark.needs_render
def test_a_wrong_derivative_undefined_on_part_of_the_interval_still_renders():
    """The axes fit the finite values: the scene renders, and only the math check fails it."""
    code = with_line(oracle("x^2"), "df", "2sqrt(x - 1)")  # NaN on [-3, 1)
    result = checks.check_code(code, "x^2", render=FAST)
    assert result.executes is True and result.math is False, result.error


def test_a_plotting_interval_where_the_function_is_undefined_fails_the_math():
    code = oracle("-2sqrt(sin(x))")
    assert checks.check_code(code, "-2sqrt(sin(x))", execute=False).math is True
    outside = re.sub(r"^X_MIN, X_MAX = .*$", "X_MIN, X_MAX = -3, 3", code, flags=re.M)
    result = checks.check_code(outside, "-2sqrt(sin(x))", execute=False)
    assert result.math is False and "X_MIN, X_MAX = -3, 3 is not one where" in result.error
    empty = re.sub(r"^X_MIN, X_MAX = .*$", "X_MIN, X_MAX = 2, 1", code, flags=re.M)
    assert checks.check_code(empty, "-2sqrt(sin(x))", execute=False).math is False


def test_the_interval_for_a_docstring_is_found_with_the_f_prime_it_claims():
    from derivative_animator.math import curriculum
    from derivative_animator.math.judge import interval_for
    from derivative_animator.math.parsing import parse_function

    def docstring(f, df):
        return f'"""\nf(x) = {f}\nf\'(x) = {df}\n"""\n'

    for f, df in (("ln(x)", "1/x"), ("sqrt(x - 2)", "1/(2sqrt(x - 2))"), ("tan(x)", "sec(x)^2")):
        found = interval_for(docstring(f, df), parse_function(f))
        derivative = parse_function(df)
        assert found == curriculum.plot_interval(parse_function(f), derivative, wider=True), f
        assert curriculum.defined_on(parse_function(f), derivative, found), f
    # the claimed f', not the true one: 1/(x - 3) is plotted where it is defined, not across 3
    found = interval_for(docstring("ln(x)", "1/(x - 3)"), parse_function("ln(x)"))
    assert found is not None and not found[0] < 3 < found[1]
    for unreadable in ('"""\nf(x) = x^2\n"""\n', docstring("x^2", "2x +"), "x = (", ""):
        assert interval_for(unreadable, parse_function("x^2")) is None


def test_a_plotting_interval_across_a_pole_fails_the_math():
    """The model drew 4ln(x) tan(x) on (0.2, 3), across tan's pole at pi/2, where floating point
    gives tan(pi/2) = 1.6e16: finite, yet no value; f' was a flat line beside the spike."""
    code = oracle("4ln(x) tan(x)")
    assert checks.check_code(code, "4ln(x) tan(x)", execute=False).math is True
    across = re.sub(r"^X_MIN, X_MAX = .*$", "X_MIN, X_MAX = 0.2, 3", code, flags=re.M)
    result = checks.check_code(across, "4ln(x) tan(x)", execute=False)
    assert result.math is False and "X_MIN, X_MAX = 0.2, 3 is not one where" in result.error


SHARED_PATHS_PROBE = r"""
import hashlib, os
from manim import FadeOut, MathTex, Scene, Write, tempconfig
from derivative_animator.render.render_runner import share_parsed_svg_paths

class Formula(Scene):
    def construct(self):
        formula = MathTex(r"f'(x) = \tfrac{d}{dx}\left[x^2 \sin x\right]")
        self.play(Write(formula))
        self.play(FadeOut(formula))

def frames():
    drawn = []
    with tempconfig({"quality": "low_quality", "frame_rate": 5, "media_dir": os.getcwd(),
                     "disable_caching": True, "progress_bar": "none"}):
        scene = Formula()
        write = scene.renderer.add_frame

        def record(frame, num_frames=1):
            drawn.append(frame.tobytes())
            write(frame, num_frames)

        scene.renderer.add_frame = record
        scene.render()
    return len(drawn), hashlib.sha256(b"".join(drawn)).hexdigest()

plain = frames()
share_parsed_svg_paths()
glyph = MathTex("x").family_members_with_points()[0]
assert glyph.copy().path_obj is glyph.path_obj, "copies still deep-copy the parsed path"
assert frames() == plain, "sharing parsed SVG paths changed the frames"
print("frames", plain[0])
"""


@pytest.mark.needs_render
def test_sharing_parsed_svg_paths_leaves_every_frame_unchanged(tmp_path):
    """The render runner's speed-up: copies share glyph paths, and every frame is identical."""
    probe = subprocess.run(
        [sys.executable, "-c", SHARED_PATHS_PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert int(probe.stdout.split()[-1]) > 5  # frames were drawn and compared


@pytest.mark.needs_render
def test_dataset_validation_renders_through_the_evaluations_sandbox_and_reports_a_broken_scene(
    default_splits,
):
    from dataclasses import replace

    from derivative_animator.data import render_check

    good = default_splits["test"][:2]
    broken = replace(
        good[0], id="broken", completion=good[0].completion.replace("f'(x) = ", "f'(x) = 1 + ", 1)
    )
    failures = render_check.render_all([*good, broken], workers=2)
    assert [record_id for record_id, _ in failures] == ["broken"] and "math" in failures[0][1]


# --- a scene cannot fake its verdict ------------------------------------------------------

FAKES = {
    "exits before rendering": "import os\n        os._exit(0)",
    "replaces the renderer": "Scene.render = lambda self, *a, **k: None\n        return",
    "crashes, then exits 0 at exit": (
        "import atexit, os\n        atexit.register(os._exit, 0)\n        1 / 0"
    ),
    "writes a fake movie": (
        "open('movie.mp4', 'wb').write(b'not a movie')\n        import os\n        os._exit(0)"
    ),
}


@pytest.mark.needs_render
@pytest.mark.parametrize("fake", list(FAKES))
def test_a_scene_cannot_fake_executes(fake, sandbox):
    code = oracle("x^2").replace(
        "def construct(self):", "def construct(self):\n        " + FAKES[fake], 1
    )
    result = checks.check_code(code, "x^2", render=FAST, sandbox=sandbox)
    assert result.executes is False and not result.passed, (fake, result.error)


@pytest.mark.needs_render
def test_the_curves_drawn_must_be_the_docstrings(sandbox):
    """The docstring says x^2 (right, with the right derivative) but the scene plots sin."""
    code = oracle("x^2").replace("plot(axes, f, BLUE)", "plot(axes, np.sin, BLUE)")
    result = checks.check_code(code, "x^2", render=FAST, sandbox=sandbox)
    assert result.executes is True and result.math is False, result.error
    assert "neither f nor f'" in result.error


def project_reader(code):
    """The scene as models trained before standalone scenes write it: the project's parser."""
    return code.replace(SYMPY_READER_IMPORT, PROJECT_READER_IMPORT).replace(SYMPY_READER, "")


@pytest.mark.needs_render
def test_a_scene_that_reads_its_docstring_another_way_fails(sandbox):
    """sympy's parse_expr reads `sin x cos x` as sin(x cos(x)); the project's parser reads
    sin(x)cos(x). A scene reading it with the project's parser passes; a standalone scene,
    which reads it with sympy, would draw another curve and fails the math."""
    typed = with_line(oracle("sin x cos x"), "f", "sin x cos x")
    result = checks.check_code(project_reader(typed), "sin x cos x", render=FAST, sandbox=sandbox)
    assert result.passed, result.error
    result = checks.check_code(typed, "sin x cos x", render=FAST, sandbox=sandbox)
    assert result.math is False and "sympy reads 'sin x cos x' as sin(x cos(x))" in result.error


@pytest.mark.needs_render
def test_a_template_scene_renders_where_the_package_cannot_be_imported(sandbox):
    """A teacher's machine has manim, numpy and sympy, not this project: template scenes run
    there; a scene importing the project's parser does not (so the package really is hidden)."""
    without = checks.RenderOptions(quick=True, save_frame=False, without_package=True)
    for style in STYLES:
        result = checks.check_code(
            oracle("x^2 sin x", style), "x^2 sin x", render=without, sandbox=sandbox
        )
        assert result.passed, (style, result.error)
    old = checks.check_code(
        project_reader(oracle("x^2 sin x")), "x^2 sin x", render=without, sandbox=sandbox
    )
    assert old.executes is False and "derivative_animator" in old.error, old.error


def test_drawn_curves_are_judged_against_f_and_f_prime():
    import numpy as np
    import sympy as sp

    x = sp.Symbol("x")
    xs = np.linspace(-2, 2, 50)
    f, df = (xs**2, 2 * xs)
    assert checks.check_drawn([(xs, f), (xs, df)], x**2) is None
    assert checks.check_drawn([(xs, f)], x**2) is None
    assert "never f" in checks.check_drawn([(xs, df)], x**2)
    assert "no curve" in checks.check_drawn([], x**2)
    assert "neither" in checks.check_drawn([(xs, f), (xs, f + 0.01)], x**2)
    assert checks.check_drawn([(xs, f * (1 + 1e-9))], x**2) is None  # floating point is not a miss


def test_a_curve_report_is_read_defensively():
    assert checks._reported_curves(b"not json") == []
    assert checks._reported_curves(b'{"curves": [{"x": [1, 2], "y": ["a"]}]}') == []
    assert checks._reported_curves(b'{"curves": 5}') == []
    assert len(checks._reported_curves(b'{"curves": [{"x": [1, 2], "y": [3, 4]}]}')) == 1


def test_a_movie_that_does_not_decode_is_not_a_movie():
    assert checks.movie_frames(None) == 0
    assert checks.movie_frames(b"\x00" * 1000) == 0


# --- whatever a scene holds, the host-side check answers -------------------------------

SCENE_WITHOUT_DOCSTRING = (
    "from manim import *\nclass S(Scene):\n    def construct(self):\n        pass\n"
)


@pytest.mark.parametrize(
    "text",
    [
        "-" * 20000 + "x",
        "(" * 5000 + "x" + ")" * 5000,
        "9" * 5000 + "^" + "9" * 5000,
    ],
)
def test_docstring_formulas_no_checker_can_handle_fail_with_a_reason(text):
    result = checks.check_code(with_line(oracle("x^2"), "df", text), "x^2", execute=False)
    assert result.math is False and result.error.startswith("math:") and "\n" not in result.error


@pytest.mark.parametrize(
    "expression, check",
    [
        ("-" * 900 + "x", "math"),  # parses, but too deep for the expression reader: RecursionError
        ("-" * 3000 + "x", "syntax"),  # Python's parser: RecursionError
        ("-" * 20000 + "x", "syntax"),  # Python's parser: MemoryError
        ("(" * 300 + "x" + ")" * 300, "syntax"),
        ("x\x00", "syntax"),  # ValueError
        ("x\n" + "pass\n" * 30000, "syntax"),  # too long to check
    ],
)
def test_code_no_parser_can_handle_fails_with_a_reason(expression, check):
    result = checks.check_code(
        SCENE_WITHOUT_DOCSTRING + "df_expr = " + expression + "\n", "x^2", execute=False
    )
    assert (
        getattr(result, check) is False
        and result.error.startswith(f"{check}:")
        and "\n" not in result.error
    )


def test_check_json_answers_for_a_scene_nested_thousands_deep(tmp_path):
    scene = tmp_path / "deep.py"
    scene.write_text(SCENE_WITHOUT_DOCSTRING + "df_expr = " + "-" * 900 + "2*x\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "derivative_animator.cli",
            "check",
            str(scene),
            "--function",
            "x^2",
            "--json",
            "--no-execute",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    import json

    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-1000:]
    assert json.loads(done.stdout)["math"] is False


@pytest.mark.needs_render
@pytest.mark.parametrize(
    "function",
    [
        "4x^3 + 2x - 3/x",
        "(3x + 2)^4",
        "x^6 - 50x",
        "500x^2",
        "x^2 + 200",
        "arccos(3x)",
        "ln(x - 7)",
        "sqrt(x - 20)",
    ],
)
def test_the_oracle_animates_functions_typed_the_way_textbooks_write_them(function, warm_renders):
    """Each was refused by the fixed intervals near 0: steep, shifted, or defined only far away."""
    result = checks.check_code(oracle(function), function, render=FAST, sandbox=warm_renders)
    assert result.passed, result.error


def test_only_a_function_with_no_readable_interval_is_refused():
    with pytest.raises(CannotAnimate, match="cannot animate f\\(x\\) = sqrt\\(x - 1000\\)"):
        oracle("sqrt(x - 1000)")
    with pytest.raises(CannotAnimate, match="constant"):
        oracle("sin(x)^2 + cos(x)^2")


LAYOUT_SCENE = '''"""
f(x) = x^2
f'(x) = 2x
"""
from manim import *


class Crowded(Scene):
    def construct(self):
        axes = Axes([-2, 2, 1], [-1, 1, 1], x_length=6, y_length=3, x_axis_config={"include_numbers": True})
        curve = axes.plot(lambda x: x**2, x_range=[-2, 2])  # mostly above y = 1: off its axes
        flat = axes.plot(lambda x: 0.02 * x, x_range=[-2, 2])  # 4% of the axes' height
        level = axes.plot(lambda x: 0.5 + 0 * x, x_range=[-2, 2])  # constant: flat by right
        self.play(Create(axes), Create(curve), Create(flat), Create(level))
        self.play(Write(Text("first label").move_to(UP * 3)), Write(Text("second label").move_to(UP * 3.1)))
        self.play(Write(MathTex("f'(x) = 2x").move_to(DOWN * 4.2)))
        self.play(Write(MathTex("tick").move_to(axes.x_axis.numbers[-1])), Write(DecimalNumber(3.25).move_to(RIGHT * 7.3)))
        self.play(*[FadeOut(m) for m in self.mobjects])
        self.wait(2)
'''  # noqa: E501


@pytest.mark.needs_render
def test_layout_reports_text_off_frame_overlapping_texts_curves_off_their_axes_and_an_empty_last_frame(  # noqa: E501
    warm_renders,
):
    result = checks.check_code(
        LAYOUT_SCENE, "x^2", render=checks.RenderOptions(quick=True), sandbox=warm_renders
    )
    assert result.executes and result.layout is False
    problems = "\n".join(result.layout_problems)
    assert "'firstlabel' and 'secondlabel' overlap" in problems  # Manim's Text keeps no spaces
    assert '"f\'(x) = 2x" reaches outside the frame' in problems
    # numbers are groups of glyphs, tick numbers belong to their axes: both are seen, as one text
    assert "'3.25' reaches outside the frame" in problems
    assert re.search(r"animation 4: '[-\d.]+' and 'tick' overlap", problems)
    assert "curve 1: only" in problems and "the last frame is empty" in problems
    assert (
        "curve 2: squashed flat, it spans 4% of its axes' height" in problems
        and "curve 3" not in problems
    )
    assert result.passed is not None  # layout never changes what the four checks mean


@pytest.mark.needs_render
def test_the_oracles_long_rule_step_list_fits_the_frame(warm_renders):
    """It ran off the bottom of the frame (the layout check said so); now it shrinks to fit."""
    long = checks.check_code(
        oracle("x^2 sin(x) e^x + ln(x) cos(x)", "graphs"),
        "x^2 sin(x) e^x + ln(x) cos(x)",
        render=FAST,
        sandbox=warm_renders,
    )
    assert long.passed and long.layout is True, long.layout_problems
    short = checks.check_code(oracle("x^2", "graphs"), "x^2", render=FAST, sandbox=warm_renders)
    assert short.passed and short.layout is True and short.layout_problems == []


def test_an_empty_frame_is_told_from_one_with_something_on_it():
    import io

    from PIL import Image

    def png(draw_square: bool) -> bytes:
        image = Image.new("RGB", (854, 480), (0, 0, 0))
        if draw_square:
            image.paste((255, 255, 255), (100, 100, 160, 160))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    assert checks.frame_has_content(png(True)) and not checks.frame_has_content(png(False))
    assert not checks.frame_has_content(b"not a png") and not checks.frame_has_content(None)


# --- what a render sends back is read within the host's budget -----------------------------


def _send_back(payload: str) -> str:
    """Scene lines (indented for construct) that replace what the runner writes after the render."""
    return "\n        ".join(payload.strip().splitlines())


def _hostile_movie(kind: str) -> str:
    import base64

    from test_untrusted import movie_declaring, movie_repeating_a_keyframe

    data = movie_declaring(16_000_000) if kind == "declared" else movie_repeating_a_keyframe(5000)
    encoded = base64.b64encode(data).decode()
    return _send_back(f"""
import base64, os
_movie, _replace = base64.b64decode("{encoded}"), os.replace
os.replace = lambda src, dst, *a, **k: open(dst, 'wb').write(_movie) if str(dst).endswith('movie.mp4') else _replace(src, dst, *a, **k)
""")  # noqa: E501


def _hostile_report(text: str) -> str:
    return _send_back(f"""
import json
json.dumps = lambda *a, **k: {text}
""")


PNG_BOMB = _send_back("""
import struct, zlib
from PIL import Image
def _chunk(kind, payload): return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))
_z = zlib.compressobj(9)
_body = b''.join(_z.compress(b'\\0' * 13001) for _ in range(13000)) + _z.flush()
_bomb = b'\\x89PNG\\r\\n\\x1a\\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', 13000, 13000, 8, 0, 0, 0, 0)) + _chunk(b'IDAT', _body) + _chunk(b'IEND', b'')
Image.Image.save = lambda self, fp, *a, **k: open(fp, 'wb').write(_bomb)
""")  # noqa: E501

SENT_BACK = {  # attack -> (scene lines, the check that fails, what its reason says)
    "a PNG bomb as the last frame": (
        PNG_BOMB,
        "layout",
        "the last frame is 13000x13000, not the 854x480 asked",
    ),
    "a movie declaring 16 million frames": (
        lambda: _hostile_movie("declared"),
        "executes",
        "the movie declares 16,000,000 frames; at most 301 are read",
    ),
    "a movie repeating one keyframe": (
        lambda: _hostile_movie("repeated"),
        "executes",
        "the movie declares 5,000 frames; at most 301 are read",
    ),
    "a report over its size": (
        _hostile_report("'{\"layout\": [\"' + 'x' * (3 << 20) + '\"]}'"),
        "executes",
        "report.json is 3.0 MB, over its 2.0 MB cap",
    ),
    "a report nested 500,000 deep": (
        _hostile_report("'{\"curves\": ' + '[' * 500000 + ']' * 500000 + '}'"),
        "executes",
        "report.json nests 500001 deep, over its 8 cap",
    ),
    "a report with a 400-digit integer": (
        _hostile_report(
            '\'{"curves": [{"x": [\' + \'9\' * 400 + \', 1, 2], "y": [1, 2, 3]}], "layout": []}\''
        ),
        "executes",
        "no animation ran",
    ),  # and no OverflowError
}


@pytest.mark.needs_render
@pytest.mark.parametrize("attack", list(SENT_BACK))
def test_what_a_scene_sends_back_is_read_within_the_hosts_budget(attack, sandbox):
    """Each hostile reply fails its check with a one-line reason within seconds of host work
    (the budget: untrusted.HOST_SECONDS); in a warm sandbox the next, innocent scene passes."""
    import resource
    import time

    lines, check, reason = SENT_BACK[attack]
    code = oracle("x^2").replace(
        "def construct(self):",
        "def construct(self):\n        " + (lines() if callable(lines) else lines),
        1,
    )
    render = checks.RenderOptions(
        quick=True, save_frame=True, limits=checks.SandboxLimits(timeout_s=30)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = checks.check_code(code, "x^2", render=render, sandbox=sandbox)
    host_seconds = time.perf_counter() - start - (result.render_seconds or 0)
    assert getattr(result, check) is False, (attack, result.error, result.layout_problems)
    told = result.layout_problems if check == "layout" else [result.error]
    assert any(reason in line and "\n" not in line for line in told), (attack, told)
    assert host_seconds < 5, host_seconds
    assert (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 << 10
    )  # KB: within 512 MB
    if sandbox is not None:
        innocent = checks.check_code(oracle("x^2"), "x^2", render=render, sandbox=sandbox)
        assert innocent.passed and innocent.layout, (innocent.error, innocent.layout_problems)


# --- verdicts from what the movie shows, not from what the scene says (issue 30, item 1) ---

TRANSPARENT_PLOTS_AND_ANOTHER_CURVE = (
    "plot(axes, f, BLUE), plot(d_axes, df, RED)",
    "plot(axes, f, BLUE).set_stroke(opacity=0), plot(d_axes, df, RED).set_stroke(opacity=0)\n"
    "        self.add(ParametricFunction(lambda t: axes.c2p(t, 3 * np.sin(t)), "
    "t_range=[X_MIN, X_MAX], color=BLUE))",
)

PATCHED_REPORT = """
import sys
_runner = sys.modules["__main__"]
_xs = np.linspace(X_MIN, X_MAX, 50)
_runner.sampled_curves = lambda plotted: [{"x": list(_xs), "y": list(_xs ** 2)}, {"x": list(_xs), "y": list(2 * _xs)}]
_runner.curve_visibility = lambda plotted: []
_runner.layout_problems = lambda scene, animation: []
big = Axes([X_MIN, X_MAX, 1], [-100, 100, 50], x_length=10, y_length=3)
self.play(Create(big), Create(big.plot(lambda t: 40 + 0.05 * np.sin(t), color=BLUE)),
          Create(big.plot(lambda t: t ** 2, color=RED)))
self.play(Write(Text("cut off at the bottom").move_to(DOWN * 4.1)))
self.wait(1)
return
"""  # noqa: E501

RENDER_WITHOUT_CONSTRUCT = """
def _movie_without_construct(self, *args, **kwargs):
    import av
    path = self.renderer.file_writer.movie_file_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as movie:
        stream = movie.add_stream("h264", rate=config.frame_rate)
        stream.width, stream.height, stream.pix_fmt = config.pixel_width, config.pixel_height, "yuv420p"
        for i in range(30):
            pixels = np.zeros((config.pixel_height, config.pixel_width, 3), dtype=np.uint8)
            pixels[200:260, 10 * i:10 * i + 60] = 255
            movie.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        movie.mux(stream.encode())
    try:
        self.construct()
    except Exception:
        pass


Scene.render = _movie_without_construct
"""  # noqa: E501


@pytest.mark.needs_render
def test_a_curve_plotted_transparent_beside_another_drawn_curve_fails_math(sandbox):
    """f and f' go through Axes.plot (the runner samples them: right) but are invisible; what
    the movie shows on f's axes is 3 sin x. The claim passes; the pixels do not."""
    old, new = TRANSPARENT_PLOTS_AND_ANOTHER_CURVE
    code = oracle("x^2").replace(old, new)
    assert code != oracle("x^2")
    result = checks.check_code(code, "x^2", render=FAST, sandbox=sandbox)
    assert result.executes is True and result.math is False, result.error
    assert "plotted curve 1 is not seen in the movie" in result.error


@pytest.mark.needs_render
def test_a_report_patched_through_sys_modules_fails_math_and_layout(sandbox):
    """The scene replaces the runner's samplers: the report claims x^2 and 2x and a clean
    layout, while the movie shows a wrong curve near 40, x^2 squashed flat on axes to 100,
    and text cut at the bottom edge."""
    code = oracle("x^2").replace(
        "def construct(self):", "def construct(self):\n        " + _send_back(PATCHED_REPORT), 1
    )
    result = checks.check_code(
        code, "x^2", render=checks.RenderOptions(quick=True), sandbox=sandbox
    )
    assert result.executes is True and result.math is False, result.error
    assert "plotted curve 1 is not seen in the movie" in result.error
    assert result.layout is False
    assert "the last frame cuts something off at its bottom edge" in result.layout_problems, (
        result.layout_problems
    )
    assert any("curve 2 is seen squashed flat" in p for p in result.layout_problems), (
        result.layout_problems
    )


@pytest.mark.needs_render
def test_a_curve_drawn_past_its_axes_is_seen_leaving_its_panel(sandbox):
    """f's axes stop at 5 while x^2 reaches 9, and f is plotted by Manim whole, not cut at its
    axes (`plot`): Manim draws the curve on past the box, over what lies above it. Three
    quarters of it is inside, so the runner's geometry is content; the pixels show the curve
    leaving its panel."""
    code = (
        oracle("x^2")
        .replace("ys = ys[np.isfinite(ys)]", "ys = np.minimum(ys[np.isfinite(ys)], 4.5)", 1)
        .replace("plot(axes, f, BLUE)", "axes.plot(f, color=BLUE)", 1)
    )
    assert code.count("4.5)") == 1 and code.count("axes.plot(f, color=BLUE)") == 1
    result = checks.check_code(code, "x^2", render=FAST, sandbox=sandbox)
    assert result.passed, result.error  # f and f' are there to be seen
    [problem] = result.layout_problems
    leaving = re.fullmatch(
        r"curve 1 is seen leaving its panel: drawn past its axes in (\d+) of (\d+) columns "
        r"looked at",
        problem,
    )
    assert result.layout is False and leaving, problem
    beyond, looked = map(int, leaving.groups())  # a quarter of x^2's columns lie above 5
    assert 0.15 * (beyond + looked) < beyond < 0.3 * (beyond + looked), problem


@pytest.mark.needs_render
def test_a_movie_written_without_construct_does_not_execute(sandbox):
    """Scene.render replaced by one that writes a right-sized, moving movie with PyAV while
    construct raises: the movie decodes, but no animation ran to make it."""
    code = oracle("x^2").replace(
        "class TangentLineScene", RENDER_WITHOUT_CONSTRUCT + "\n\nclass TangentLineScene", 1
    )
    code = code.replace("def construct(self):", "def construct(self):\n        1 / 0", 1)
    result = checks.check_code(code, "x^2", render=FAST, sandbox=sandbox)
    assert result.executes is False and not result.passed, result.error
    assert "no animation ran" in result.error


def _movie_of(frames: list) -> bytes:
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as movie:
        stream = movie.add_stream("h264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 854, 480, "yuv420p"
        for pixels in frames:
            movie.mux(
                stream.encode(__import__("av").VideoFrame.from_ndarray(pixels, format="rgb24"))
            )
        movie.mux(stream.encode())
    return buffer.getvalue()


def test_a_still_movie_or_one_the_animations_do_not_account_for_does_not_execute():
    import numpy as np

    from derivative_animator.render import untrusted

    black = np.zeros((480, 854, 3), dtype=np.uint8)
    moving = [black.copy() for _ in range(15)]
    for i, frame in enumerate(moving):
        frame[200:260, 40 * i : 40 * i + 60] = 255
    plays = [{"run_time": 1.0, "frames": 15, "curves": []}]
    seen, problem = untrusted.watch_movie(_movie_of(moving), (854, 480), 15)
    assert problem is None and seen.frames == 15 and seen.changes >= 10
    assert checks.movie_plays_problem(seen, plays, 15) is None
    assert "no animation ran" in checks.movie_plays_problem(seen, [], 15)
    assert "the animations that ran wrote 45" in checks.movie_plays_problem(
        seen, [{"run_time": 3.0, "frames": 45, "curves": []}], 15
    )
    assert "the animations that ran take 9.0 s" in checks.movie_plays_problem(
        seen, [{"run_time": 9.0, "frames": 15, "curves": []}], 15
    )
    still, _ = untrusted.watch_movie(_movie_of([black] * 15), (854, 480), 15)
    assert "one still picture" in checks.movie_plays_problem(still, plays, 15)


def test_a_curve_is_seen_where_its_pixels_trace_the_function():
    """render.seen on a drawn frame: x^2 in blue on a box is seen as x^2, not as 2x; the same
    curve in another place, a box filled with blue, or nothing drawn is not seen."""
    import numpy as np
    import sympy as sp
    from PIL import Image, ImageDraw

    from derivative_animator.render import seen

    x = sp.Symbol("x")
    view = {
        "curve": 0,
        "x": [-2.0, 2.0],
        "y": [0.0, 4.0],
        "low": [100.0, 400.0],
        "high": [700.0, 100.0],
        "step": 0.04,
        "color": "#58C4DD",
    }

    def frame(draw_curve=True, shift=0.0, fill=False):
        image = Image.new("RGB", (854, 480))
        draw = ImageDraw.Draw(image)
        if fill:
            draw.rectangle((100, 100, 700, 400), fill=(88, 196, 221))
        if draw_curve:
            xs = np.linspace(-2, 2, 300)
            draw.line(
                [(100 + (t + 2) * 150, 400 - (t**2 + shift) * 75) for t in xs],
                fill=(88, 196, 221),
                width=3,
            )
        return np.asarray(image)

    assert seen.trace(frame(), view, x**2).seen
    assert not seen.trace(frame(), view, 2 * x).seen
    assert not seen.trace(frame(shift=1.0), view, x**2).seen
    assert not seen.trace(frame(fill=True), view, x**2).seen
    assert not seen.trace(frame(draw_curve=False), view, x**2).seen
    assert (
        seen.trace(frame(), {**view, "low": "left"}, x**2) is None
    )  # not a box: nothing to look at
    assert seen.cut_at_edges(frame()) == []
    cut = frame().copy()
    cut[-3:, 300:340] = 255  # 40 columns: text, not a line crossing the edge
    assert seen.cut_at_edges(cut) == ["bottom"]
