"""Checks of one generated scene: syntax, structure, execution, mathematics.

- syntax: the code parses (`ast`); code too long or nested too deeply to parse fails here;
- structure: it defines a Manim `Scene` subclass with a `construct` method;
- executes: Manim renders it in the sandbox (`sandbox.PythonSandbox`) within a time limit,
  and the movie that comes back decodes to frames of the asked size, is not one still
  picture, and holds the frames and length of the animations the render reports (the scene's
  exit code alone proves nothing: it ran in that process); a machine without LaTeX or cairo
  is an environment failure (executes = None, environment_error = True), not the code's;
- math: the derivative the code states equals the true derivative, its f (when it gives
  one) the function asked for, and both are defined on its plotting interval: `math.judge`,
  from the source without running it. Once rendered, the curves the scene plotted must be f
  and f' (`check_drawn`, the runner's samples: the scene's claim) and the movie must show
  them (`check_seen`, the host's own look at its pixels: `render.seen`);
- layout: what is on screen (reported beside the others, never part of `passed`): Manim's
  geometry as the runner saw it, and what the movie shows (`seen_layout`).
The report is the scene's claim and only tells the host where to look; what counts is the
movie (docs/decisions/0005-render-sandbox.md).
Whatever a scene holds, a failure is a reason, never a crash; whatever its render sends back
(movie, last frame, report.json), the host reads it within one budget (`render.untrusted`).
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

from derivative_animator import environment
from derivative_animator.errors import one_line
from derivative_animator.math.differentiate import true_derivative
from derivative_animator.math.judge import _check_math_safely, _values, parse_code
from derivative_animator.math.parsing import parse_function
from derivative_animator.render import untrusted
from derivative_animator.render.sandbox import PythonSandbox
from derivative_animator.render.sandbox_limits import SandboxLimits

SCENE_BASES = {"Scene", "MovingCameraScene", "ZoomedScene", "ThreeDScene", "VectorScene"}
MAX_CODE_CHARS = 100_000  # a scene is a few thousand characters
DRAWN_TOLERANCE = 1e-4  # plotted points sit on the curve; relative to the curve's size
MAX_CURVES = 20
# What a warm render sandbox imports once (PythonSandbox(preload=...)): Manim and what scenes use.
RENDER_PRELOAD = (
    "manim",
    "sympy",
    "numpy",
    "svgelements",
    "PIL.Image",
    "derivative_animator.render.render_runner",
)
CHECKS = ("syntax", "structure", "executes", "math")  # what `passed` needs
LAYOUT = "layout"  # what is on screen: reported beside them, never part of `passed`
REPORTED = (*CHECKS, LAYOUT)  # every check a table, the page or the CLI shows


@dataclass
class CheckResult:
    syntax: bool
    structure: bool | None = None
    executes: bool | None = None
    math: bool | None = None
    # What is on screen (a fifth check, apart from the four `passed` needs): no text past the
    # frame's edge or overlapping another, every curve mostly inside its axes, a last frame
    # that is not empty. None when the scene did not render.
    layout: bool | None = None
    layout_problems: list[str] = field(default_factory=list)
    error: str | None = None
    environment_error: bool = False
    scene: str | None = None
    math_method: str | None = None
    render_seconds: float | None = None
    movie: str | None = None
    frame: str | None = None
    isolation: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(getattr(self, name) for name in CHECKS)

    def to_dict(self) -> dict:
        return asdict(self)

    def _fail(self, message: str) -> None:
        # Every failure, first one first: a wrong derivative and a failed render are separate news.
        self.error = f"{self.error}; {message}" if self.error else message


@dataclass(frozen=True)
class RenderOptions:
    quality: str = "l"
    fps: int | None = None  # None: the quality's own frame rate
    quick: bool = False  # 1 frame per second: every animation still runs, the movie is small
    save_frame: bool = True
    limits: SandboxLimits = SandboxLimits()
    unsafe_no_sandbox: bool = False  # where bubblewrap cannot run: render anyway, without isolation
    without_package: bool = False  # the scene cannot import this package, as on a teacher's machine


def check_code(
    code: str,
    function: str | sp.Expr,
    execute: bool = True,
    render: RenderOptions = RenderOptions(),
    output_dir: Path | None = None,
    render_failing: bool = True,
    sandbox: PythonSandbox | None = None,
) -> CheckResult:
    """Run every check on one scene; rendered files are copied to output_dir if given.
    render_failing=False renders only a scene whose math is right (executes stays None
    otherwise): one that fails it cannot pass, and a render costs seconds. The render runs in
    `sandbox` (a warm one renders many scenes for one Manim import), or in a fresh process
    under render.limits."""
    target = parse_function(function) if isinstance(function, str) else function
    if len(code) > MAX_CODE_CHARS:
        return CheckResult(
            syntax=False,
            error=f"syntax: {len(code):,} characters; a scene may have {MAX_CODE_CHARS:,}",
        )
    try:
        tree = parse_code(code)
    except SyntaxError as err:
        return CheckResult(syntax=False, error=f"syntax: {err.msg} (line {err.lineno})")
    except (RecursionError, MemoryError, ValueError) as err:  # deep nesting, null bytes
        return CheckResult(syntax=False, error=f"syntax: Python cannot parse it ({one_line(err)})")
    result = CheckResult(syntax=True)

    scene = find_scene_class(tree)
    result.structure = scene is not None
    result.scene = scene
    if scene is None:
        result._fail("structure: no Scene subclass with a construct() method")

    result.math, result.math_method, math_error = _check_math_safely(tree, target)
    if math_error:
        result._fail(f"math: {math_error}")

    if execute and scene is not None and (render_failing or result.math):
        _check_execution(code, scene, target, render, result, output_dir, sandbox)
    return result


def find_scene_class(tree: ast.Module) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            has_construct = any(
                isinstance(item, ast.FunctionDef) and item.name == "construct" for item in node.body
            )
            if bases & SCENE_BASES and has_construct:
                return node.name
    return None


# --- execution -------------------------------------------------------------------------

FRAME_SIZE = {
    "l": (854, 480),
    "m": (1280, 720),
    "h": (1920, 1080),
    "k": (3840, 2160),
}  # Manim's qualities
FRAME_RATE = {"l": 15, "m": 30, "h": 60, "k": 60}  # their frame rates, where none is asked
# What a render sends back, each at most its cap: the sandbox refuses a file over it.
COLLECT = {
    "movie.mp4": untrusted.MAX_MOVIE_BYTES,
    "last_frame.png": untrusted.MAX_FRAME_BYTES,
    "report.json": untrusted.MAX_REPORT_BYTES,
}


def _check_execution(
    code: str,
    scene: str,
    target: sp.Expr,
    render: RenderOptions,
    result: CheckResult,
    output_dir: Path | None,
    sandbox: PythonSandbox | None,
) -> None:
    """Render in the sandbox. `executes` needs the sandbox server's exit status 0 and the
    movie the host finds decoding to frames of the asked size: a scene that exits early,
    skips its render or crashes quietly leaves no such movie."""
    problem = environment.render_problem_summary()
    if problem:
        result.executes, result.environment_error = None, True
        result._fail(problem)
        return
    box = sandbox or PythonSandbox(
        render.limits, warm=False, allow_unsandboxed=render.unsafe_no_sandbox
    )
    args = [
        "-m",
        "derivative_animator.render.render_runner",
        "scene.py",
        "--scene",
        scene,
        "--quality",
        render.quality,
        "--movie",
        "movie.mp4",
        "--report",
        "report.json",
    ]
    fps = 1 if render.quick else render.fps
    if fps is not None:
        args += ["--fps", str(fps)]
    if render.save_frame:
        args += ["--frame", "last_frame.png"]
    if render.without_package:
        args.append("--without-package")
    outcome = box.run(args, files={"scene.py": code}, collect=COLLECT)
    result.render_seconds = round(outcome.duration_s, 3)
    result.isolation = outcome.isolation
    if outcome.timed_out or outcome.returncode != 0:
        result.executes = False
        result._fail(
            f"executes: {outcome.failure or _last_error_line(outcome.stderr, outcome.returncode)}"
        )
        return
    try:
        _judge_reply(outcome, target, render, fps, result)
    except Exception as err:  # noqa: BLE001 - a reader's slip on hostile bytes is a failed check, not a crash
        result.executes = False
        result._fail(
            f"executes: the host could not read what the render sent back ({one_line(err)})"
        )
        return
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        for key, name in (("movie", "movie.mp4"), ("frame", "last_frame.png")):
            data = outcome.files.get(name)
            if data:
                destination = output_dir / f"{result.scene}{Path(name).suffix}"
                destination.write_bytes(data)
                setattr(result, key, str(destination))


def _judge_reply(
    outcome, target: sp.Expr, render: RenderOptions, fps: int | None, result: CheckResult
) -> None:
    """executes, math's drawn curves and layout from the files a render sent back, within
    the host's budget for one reply (untrusted.Budget): caps first, then the work. What the
    movie shows is the host's own observation; report.json is the scene's claim, used to
    tell the host where to look (docs/decisions/0005-render-sandbox.md)."""
    budget = untrusted.Budget()
    refused = outcome.refused
    report, report_problem = untrusted.read_report(outcome.files.get("report.json"), budget)
    if "report.json" in refused:
        report, report_problem = None, f"report.json is {refused['report.json']}"
    plays = _reported_plays(report)
    looks = _looks(plays)
    rate = fps or FRAME_RATE.get(render.quality)
    movie, movie_problem = untrusted.watch_movie(
        outcome.files.get("movie.mp4"),
        FRAME_SIZE.get(render.quality),
        rate,
        budget,
        keep=_frames_to_keep(looks),
    )
    if "movie.mp4" in refused:
        movie_problem = f"the movie is {refused['movie.mp4']}"
    if not movie_problem:
        movie_problem = (
            "the render's report cannot be read, so no animation is known to have run: "
            f"{report_problem}"
            if report_problem
            else movie_plays_problem(movie, plays, rate)
        )
    if movie_problem:
        result.executes = False
        result._fail(f"executes: {movie_problem}")
        return
    result.executes = True
    if result.math:
        drawn_error = (
            f"the render's report cannot be read: {report_problem}"
            if report_problem
            else check_drawn(_reported_curves(report), target) or check_seen(movie, looks, target)
        )
        if drawn_error:
            result.math = False
            result._fail(f"math: {drawn_error}")
    result.layout_problems = [report_problem] if report_problem else _reported_layout(report)
    if render.save_frame:
        pixels, frame_problem = untrusted.read_frame(
            outcome.files.get("last_frame.png"), FRAME_SIZE.get(render.quality), budget
        )
        if "last_frame.png" in refused:
            frame_problem = f"the last frame is {refused['last_frame.png']}"
        if frame_problem:
            result.layout_problems.append(frame_problem)
        elif not _has_content(pixels):
            result.layout_problems.append("the last frame is empty")
    result.layout_problems += seen_layout(movie, looks, target)
    result.layout = not result.layout_problems


MAX_PLAYS = 200  # animations read from the report (the runner records at most as many)


def _reported_plays(report: dict | None) -> list[dict]:
    """The runner's animations ({"run_time", "frames", "curves"}), read defensively: a play
    that is not in that shape ends the list."""
    plays = []
    raw = report.get("plays") if isinstance(report, dict) else None
    for play in (raw if isinstance(raw, list) else [])[:MAX_PLAYS]:
        try:
            run_time, frames = float(play["run_time"]), int(float(play["frames"]))
            curves = [c for c in list(play.get("curves") or [])[:MAX_CURVES] if isinstance(c, dict)]
        except Exception:  # noqa: BLE001 - the scene's claim, in whatever shape it chose
            break
        if not (
            np.isfinite(run_time) and 0 <= run_time <= untrusted.MAX_MOVIE_SECONDS and frames >= 0
        ):
            break
        plays.append({"run_time": run_time, "frames": frames, "curves": curves})
    return plays


LOOKS_PER_CURVE = 3  # frames a curve is looked for in: the last ones it is on screen in


def _looks(plays: list[dict]) -> dict:
    """Where to look for each plotted curve: curve number -> [(frame, where it lies there)],
    the frames after the last few animations that ended with it on screen, latest first. The
    scene's claim: the pixels in those frames decide."""
    looks: dict = {}
    for play in plays:
        for view in play["curves"]:
            number = view.get("curve")  # report.json's integers are read as floats
            if isinstance(number, (int, float)) and number in range(MAX_CURVES):
                looks.setdefault(int(number), []).insert(0, (play["frames"], view))
                del looks[int(number)][LOOKS_PER_CURVE:]
    return looks


def _frames_to_keep(looks: dict) -> list[int]:
    """The last frame and the latest frames the curves are looked for in, at most the cap."""
    frames = sorted({frame for seen in looks.values() for frame, _ in seen}, reverse=True)
    return [-1, *frames[: untrusted.MAX_KEPT_FRAMES - 1]]


def _pixels(movie: untrusted.MovieSeen, frame: int):
    """The frame's pixels where they were kept; the last frame for one past the movie's end."""
    return movie.kept.get(frame) if frame < movie.frames else movie.kept.get(-1)


MOVIE_SLACK_S = 0.5  # the movie's length beside the animations' run times, besides one frame each


def movie_plays_problem(
    movie: untrusted.MovieSeen, plays: list[dict], fps: float | None
) -> str | None:
    """Does the movie fit the animations the runner says ran: at least one, their frames
    all in the movie, a length their run times account for, and not one still picture?
    The plays are the scene's claim; the movie's frames and their changes are seen."""
    if not plays:
        return "no animation ran (the render reported no play)"
    claimed = plays[-1]["frames"]
    if abs(movie.frames - claimed) > 1:
        return f"the movie holds {movie.frames:,} frames; the animations that ran wrote {claimed:,}"
    if fps:
        seconds, run_times = movie.frames / fps, sum(play["run_time"] for play in plays)
        if abs(seconds - run_times) > MOVIE_SLACK_S + len(plays) / fps:
            return (
                f"the movie lasts {seconds:.1f} s; the animations that ran take {run_times:.1f} s"
            )
    if movie.frames > 1 and movie.changes == 0:
        return f"the movie is one still picture over {movie.frames:,} frames"
    return None


def seen_layout(movie: untrusted.MovieSeen, looks: dict, function: sp.Expr | None) -> list[str]:
    """Layout problems the movie shows (beside Manim's geometry, the scene's claim): something
    cut at the last frame's edge, a curve seen squashed flat on its axes or leaving them."""
    from derivative_animator.render import seen

    problems = [
        f"the last frame cuts something off at its {side} edge"
        for side in seen.cut_at_edges(movie.kept[-1])
    ]
    if function is None:
        return problems
    expressions = (function, true_derivative(function))
    for number, where in sorted(looks.items()):
        frame, view = where[0]
        pixels = _pixels(movie, frame)
        for expr in expressions if pixels is not None else ():
            found = seen.trace(pixels, view, expr)
            if found is not None and found.seen:
                if 1e-3 < found.span < CURVE_FLAT_SHARE:
                    problems.append(
                        f"curve {number + 1} is seen squashed flat: it spans {found.span:.0%} "
                        "of its axes' height"
                    )
                if found.beyond >= max(CURVE_BEYOND_COLUMNS, CURVE_BEYOND_SHARE * found.columns):
                    problems.append(
                        f"curve {number + 1} is seen leaving its panel: drawn past its axes in "
                        f"{found.beyond} of {found.columns} columns looked at"
                    )
                break
    return problems


CURVE_FLAT_SHARE = 0.12  # as the runner's own (render_runner.CURVE_FLAT_SHARE)
CURVE_BEYOND_SHARE = 0.02  # of a seen curve's columns, those drawn past its axes: it left its panel
CURVE_BEYOND_COLUMNS = 3


def check_seen(movie: untrusted.MovieSeen, looks: dict, function: sp.Expr | None) -> str | None:
    """None when the movie shows f: some plotted curve's pixels, where it lies on screen,
    trace f on its axes' box, and every curve on screen traces f or f'. Otherwise why not,
    in one line. A curve drawn transparent or off the frame is not seen (render.seen)."""
    from derivative_animator.render import seen

    if function is None:
        return None
    if not looks:
        return "no plotted curve is ever on screen: nothing shows f"
    derivative = true_derivative(function)
    kinds = []
    for number, where in sorted(looks.items()):
        best = None
        for frame, view in where:
            pixels = _pixels(movie, frame)
            for kind, expr in (("f", function), ("f'", derivative)):
                found = seen.trace(pixels, view, expr) if pixels is not None else None
                if found is not None and found.seen:
                    best = kind
                    break
            if best:
                break
        if best is None:
            return (
                f"plotted curve {number + 1} is not seen in the movie where it is said to be "
                f"(in {len(where)} frame{'s' * (len(where) > 1)} looked at)"
            )
        kinds.append(best)
    if "f" not in kinds:
        return "the movie never shows f, only f'"
    return None


def movie_frames(data: bytes | None, size: tuple[int, int] | None = None) -> int:
    """How many video frames the movie decodes to (of `size`, when given), within the host's
    caps and budget (untrusted.read_movie); 0 if it does not."""
    return untrusted.read_movie(data, size, budget=untrusted.Budget())[0]


def _reported_curves(report: dict | bytes | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The runner's plotted curves, read defensively (the scene ran in that process)."""
    if not isinstance(report, dict):
        report = untrusted.read_report(report)[0] or {}
    curves = []
    try:
        for curve in list(report.get("curves", []))[:MAX_CURVES]:
            xs = np.asarray(curve["x"][:1000], dtype=float)
            ys = np.asarray(curve["y"][:1000], dtype=float)
            if xs.shape == ys.shape and xs.ndim == 1:
                curves.append((xs, ys))
    except Exception:  # noqa: BLE001 - the scene's claim, in whatever shape it chose
        return []
    return curves


MAX_LAYOUT_PROBLEMS = 20
EMPTY_FRAME_SHARE = 0.002  # of pixels unlike the background: below it, nothing is on screen


def _reported_layout(report: dict | bytes | None) -> list[str]:
    """The runner's layout problems, read defensively; an unreadable report is a problem itself."""
    if not isinstance(report, dict):
        report = untrusted.read_report(report)[0] or {}
    problems = report.get("layout")
    if not isinstance(problems, list):
        return ["the render reported no layout"]
    return [str(p)[:300] for p in problems[:MAX_LAYOUT_PROBLEMS]]


def frame_has_content(data: bytes | None, size: tuple[int, int] | None = None) -> bool:
    """Does the PNG show anything: enough pixels unlike its most common (background) colour?"""
    pixels = untrusted.read_frame(data, size)[0]
    return pixels is not None and _has_content(pixels)


def _has_content(pixels: np.ndarray) -> bool:
    pixels = pixels.reshape(-1, 3)
    colours, counts = np.unique(
        pixels[:: max(1, len(pixels) // 200_000)], axis=0, return_counts=True
    )
    background = colours[counts.argmax()].astype(np.int16)
    differs = np.abs(pixels.astype(np.int16) - background).sum(axis=1, dtype=np.int32) > 30
    return float(differs.mean()) > EMPTY_FRAME_SHARE


def check_drawn(
    curves: list[tuple[np.ndarray, np.ndarray]], function: sp.Expr | None
) -> str | None:
    """None when the drawn curves are f and f': at least one is f, every one is f or f'.
    Otherwise why not, in one line. The scene's docstring is only its claim; this is the picture."""
    if function is None:
        return None
    derivative = true_derivative(function)
    if not curves:
        return "the scene plots no curve (Axes.plot): nothing shows f"
    kinds = []
    for xs, ys in curves:
        off_f = _first_point_off(xs, ys, function)
        if off_f is not None and _first_point_off(xs, ys, derivative) is not None:
            x, y = xs[off_f], ys[off_f]
            f_value, df_value = (_values(expr, [float(x)])[0] for expr in (function, derivative))
            shown = lambda v: "undefined" if v is None else f"{v:.4g}"  # noqa: E731
            return (
                f"a plotted curve is neither f nor f' (at x = {x:.4g} it draws {y:.4g}; "
                f"f = {shown(f_value)}, f' = {shown(df_value)})"
            )
        kinds.append("f" if off_f is None else "f'")
    if "f" not in kinds:
        return "the scene plots f' but never f"
    return None


def _first_point_off(xs: np.ndarray, ys: np.ndarray, expr: sp.Expr) -> int | None:
    """None when the plotted points lie on expr's curve (within DRAWN_TOLERANCE of its size,
    over at least half of them); else the index of the first point that does not."""
    finite = np.isfinite(xs) & np.isfinite(ys)
    expected = np.array([np.nan if v is None else v for v in _values(expr, list(xs))], dtype=float)
    known = finite & np.isfinite(expected)
    if known.sum() < max(2, finite.sum() // 2):
        undefined = finite & ~known
        return int(np.argmax(undefined)) if undefined.any() else 0
    scale = 1.0 + np.abs(expected[known]).max() + np.ptp(expected[known])
    off = known & (np.abs(ys - np.where(known, expected, 0.0)) > DRAWN_TOLERANCE * scale)
    return int(np.argmax(off)) if off.any() else None


def _last_error_line(stderr: str, returncode: int) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or line.startswith("sandbox:"):
            return line[:300]
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    return lines[-1][:300] if lines else f"exit code {returncode}"
