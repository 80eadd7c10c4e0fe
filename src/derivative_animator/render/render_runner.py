"""Render one scene file with Manim: the program that runs inside the sandbox.

    python -m derivative_animator.render.render_runner SCENE.py [--scene NAME] [--quality l]
        [--fps N] [--movie movie.mp4] [--frame PNG] [--report report.json] [--without-package]

It imports only Manim and the scene file, installs an audit hook that refuses writes
outside the working directory, sockets and subprocesses other than LaTeX, renders, moves
the movie to --movie, and writes --report: {"scene": ..., "curves": [{"x": [...], "y":
[...]}, ...]}, the curves the scene plotted (`Axes.plot`), sampled from Manim's own graph
objects in axes coordinates, and "layout": [...], what a teacher would object to on screen
at the end of each animation (`layout_problems`: text past the frame's edge, overlapping
texts; `curve_visibility`: a curve mostly off its axes or squashed flat), and "plays": [...],
each animation's run time, the frames written by its end and where each plotted curve then
lies in the movie's pixels (`record_plays`). On failure it prints the traceback to stderr and
exits 1.
The scene runs in this process, so nothing here is proof of anything: everything in the
report is the scene's claim. The host judges the movie it finds (checks: `executes` and
`math` from its pixels, the plays only telling it where to look).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

ALLOWED_PROGRAMS = {"latex", "pdflatex", "xelatex", "lualatex", "dvisvgm", "dvips"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install_guard(root: Path) -> None:
    root_text = str(root.resolve())

    def inside(path) -> bool:
        try:
            resolved = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return (
            resolved == root_text
            or resolved.startswith(root_text + os.sep)
            or resolved == "/dev/null"
        )

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing and path is not None and not isinstance(path, int) and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory: {path}")
        elif event in (
            "os.remove",
            "os.rename",
            "os.rmdir",
            "os.mkdir",
            "shutil.rmtree",
            "os.chmod",
            "os.symlink",
            "os.link",
            "os.truncate",
        ):
            if args and not inside(args[0]):
                raise PermissionError(f"sandbox: {event} outside the working directory: {args[0]}")
        elif event == "socket.connect" or event == "socket.bind":
            raise PermissionError("sandbox: network access is not allowed")
        elif event in (
            "os.system",
            "os.exec",
            "os.posix_spawn",
            "os.spawn",
            "os.fork",
            "os.forkpty",
        ):
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event == "subprocess.Popen":
            program = os.path.basename(os.fsdecode(args[0])) if args and args[0] else ""
            if program not in ALLOWED_PROGRAMS:
                raise PermissionError(f"sandbox: starting {program or 'a program'} is not allowed")

    sys.addaudithook(hook)


def share_parsed_svg_paths() -> None:
    """Copies of a formula share its glyphs' parsed SVG paths instead of deep-copying them.

    Manim reads a glyph's svgelements Path only while building the glyph's points, yet every
    `copy()` (each Write, FadeOut, Transform) deep-copies it, ~200 objects a glyph: half of
    a formula scene's render time (a rule-steps scene 9.7 -> 5.3 s). Every frame is unchanged.
    """
    import svgelements

    svgelements.Path.__deepcopy__ = lambda self, memo: self


CURVE_POINTS = 200  # the most points reported per plotted curve


def record_plots() -> list:
    """Wrap `CoordinateSystem.plot` to remember each (axes, graph) a scene makes."""
    from manim.mobject.graphing.coordinate_systems import CoordinateSystem

    plotted: list = []
    plot = CoordinateSystem.plot

    def recording_plot(self, *args, **kwargs):
        graph = plot(self, *args, **kwargs)
        plotted.append((self, graph))
        return graph

    CoordinateSystem.plot = recording_plot
    return plotted


def sampled_curves(plotted: list) -> list[dict]:
    """Each plotted graph's anchor points (they lie on the curve) in its axes' coordinates."""
    import numpy as np

    curves = []
    for axes, graph in plotted:
        anchors = [part.get_anchors() for part in graph.family_members_with_points()]
        points = np.concatenate(anchors) if anchors else np.zeros((0, 3))
        if len(points) > CURVE_POINTS:
            points = points[np.linspace(0, len(points) - 1, CURVE_POINTS).round().astype(int)]
        xs, ys = [], []
        for point in points:
            if np.all(np.isfinite(point)):
                x, y = axes.point_to_coords(point)[:2]
                xs.append(float(x))
                ys.append(float(y))
        curves.append({"x": xs, "y": ys})
    return curves


LAYOUT_MARGIN = 0.05  # frame units a text may reach past the edge (anti-aliasing, stroke width)
OVERLAP_SHARE = 0.15  # two texts overlap when the intersection covers this share of the smaller
CURVE_VISIBLE_SHARE = 0.6  # of a plotted curve's points inside its axes' y-range
# a varying curve spanning less of its axes' height reads as a flat line (1/x beside -1/x^2: 12%)
CURVE_FLAT_SHARE = 0.12


def _is_text(mobject) -> bool:
    from manim import MarkupText, MathTex, Paragraph, SingleStringMathTex, Tex, Text
    from manim.mobject.text import tex_mobject

    parts = (
        (tex_mobject.MathTexPart,) if hasattr(tex_mobject, "MathTexPart") else ()
    )  # a MathTex's part (0.20+)
    return isinstance(
        mobject, (Text, MarkupText, Paragraph, SingleStringMathTex, MathTex, Tex, *parts)
    )


def _is_glyph_group(mobject) -> bool:
    """A group of text glyphs and nothing else: a number (`DecimalNumber`, a scene's tick label
    or readout built from glyphs) is one text to a reader, so it is checked as one."""
    children = mobject.submobjects
    return bool(children) and not mobject.has_points() and all(map(_is_text, children))


def _texts(mobjects) -> list:
    """The outermost texts on screen, coordinate systems' tick numbers and labels among them;
    a group of glyphs counts as one text."""
    found = []

    def walk(mobject):
        if _is_text(mobject) or _is_glyph_group(mobject):
            if mobject.has_points() or mobject.submobjects:
                found.append(mobject)
            return
        for child in mobject.submobjects:
            walk(child)

    for mobject in mobjects:
        walk(mobject)
    return found


def _visible(mobject) -> bool:
    """Anything of it drawn: a glyph with some fill or stroke (a MathTex's own opacity is its
    parts')."""
    return any(
        m.get_fill_opacity() > 0.05 or (m.get_stroke_opacity() > 0.05 and m.get_stroke_width() > 0)
        for m in mobject.family_members_with_points()
    )


def _box(mobject):
    from manim import DL, UR

    (x0, y0, _), (x1, y1, _) = mobject.get_critical_point(DL), mobject.get_critical_point(UR)
    return x0, y0, x1, y1


def layout_problems(scene, animation: int) -> list[str]:
    """What a teacher would object to on screen when an animation ends: text past the frame's
    edge, two texts overlapping. From Manim's own geometry."""
    from manim import config

    half_w, half_h = config.frame_width / 2 + LAYOUT_MARGIN, config.frame_height / 2 + LAYOUT_MARGIN
    problems = []
    texts = [t for t in _texts(scene.mobjects) if _visible(t)]
    boxes = [_box(t) for t in texts]
    for text, (x0, y0, x1, y1) in zip(texts, boxes, strict=True):
        if x0 < -half_w or x1 > half_w or y0 < -half_h or y1 > half_h:
            problems.append(
                f"animation {animation}: {_name(text)} reaches outside the frame "
                f"(x {x0:.1f} to {x1:.1f}, y {y0:.1f} to {y1:.1f})"
            )
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
            smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if (
                width > 0
                and height > 0
                and smaller > 0
                and width * height > OVERLAP_SHARE * smaller
            ):
                problems.append(
                    f"animation {animation}: {_name(texts[i])} and {_name(texts[j])} overlap"
                )
    return problems


def _name(text) -> str:
    parts = text.submobjects if _is_glyph_group(text) else [text]
    content = "".join(
        getattr(part, "tex_string", None) or getattr(part, "text", None) or type(part).__name__
        for part in parts
    )
    content = " ".join(str(content).split())
    return repr(content[:40] + ("..." if len(content) > 40 else ""))


def record_layout(problems: list) -> None:
    """Check the layout at the end of every animation (Scene.play), keeping each problem once."""
    from manim import Scene

    play = Scene.play
    count = [0]

    def checked_play(self, *args, **kwargs):
        result = play(self, *args, **kwargs)
        count[0] += 1
        for problem in layout_problems(self, count[0]):
            if problem.split(": ", 1)[1] not in {p.split(": ", 1)[1] for p in problems}:
                problems.append(problem)
        return result

    Scene.play = checked_play


MAX_VIEWS = 200  # plays recorded; a derivative scene has 5 to 15


def _pixel(camera, point) -> tuple[float, float]:
    """A frame point as (column, row) of the movie's pixels."""
    fx, fy = camera.frame_center[0], camera.frame_center[1]
    column = (point[0] - fx + camera.frame_width / 2) * camera.pixel_width / camera.frame_width
    row = (fy + camera.frame_height / 2 - point[1]) * camera.pixel_height / camera.frame_height
    return round(float(column), 2), round(float(row), 2)


def curves_on_screen(scene, plotted: list) -> list[dict]:
    """Each plotted curve on screen now: where its axes' box lies in the movie's pixels (the
    corners (x_min, y_min) and (x_max, y_max)), the ranges, the plot's sampling step and its
    colour. Only where to look: the host judges the pixels it finds there."""
    on_screen = {id(m) for m in scene.get_mobject_family_members()}
    camera = scene.renderer.camera
    found = []
    for number, (axes, graph) in enumerate(plotted):
        if id(graph) not in on_screen:
            continue
        x0, x1 = float(axes.x_range[0]), float(axes.x_range[1])
        y0, y1 = float(axes.y_range[0]), float(axes.y_range[1])
        try:
            color = graph.get_stroke_color().to_hex()
        except Exception:  # noqa: BLE001 - a colour Manim cannot name: the host looks for any
            color = None
        found.append(
            {
                "curve": number,
                "x": [x0, x1],
                "y": [y0, y1],
                "low": _pixel(camera, axes.c2p(x0, y0)),
                "high": _pixel(camera, axes.c2p(x1, y1)),
                "step": float(getattr(graph, "t_step", 0.0) or 0.0),
                "color": color,
            }
        )
    return found


def record_plays(plotted: list, plays: list) -> None:
    """At the end of every animation (Scene.play, waits included): its run time, the frames
    written so far (the next frame shows the animation's end) and the curves on screen."""
    from manim import Scene

    play = Scene.play

    def recorded_play(self, *args, **kwargs):
        result = play(self, *args, **kwargs)
        if len(plays) < MAX_VIEWS:
            renderer = self.renderer
            plays.append(
                {
                    "run_time": float(getattr(self, "duration", 0.0) or 0.0),
                    "frames": int(round(renderer.time * renderer.camera.frame_rate)),
                    "curves": curves_on_screen(self, plotted),
                }
            )
        return result

    Scene.play = recorded_play


def curve_visibility(plotted: list) -> list[str]:
    """Curves mostly outside their axes' y-range (off the drawn axes), or squashed flat by a
    y-range made for another curve; one line each. A constant curve is a flat line by right."""
    import numpy as np

    problems = []
    for number, (axes, graph) in enumerate(plotted, 1):
        anchors = [part.get_anchors() for part in graph.family_members_with_points()]
        if not anchors:
            continue
        points = np.concatenate(anchors)
        y_min, y_max = axes.y_range[0], axes.y_range[1]
        ys = np.array([axes.point_to_coords(p)[1] for p in points if np.all(np.isfinite(p))])
        inside = np.mean((ys >= y_min - 1e-9) & (ys <= y_max + 1e-9)) if len(ys) else 0.0
        if inside < CURVE_VISIBLE_SHARE:
            problems.append(
                f"curve {number}: only {inside:.0%} of it lies inside its axes' y-range"
            )
            continue
        span = (ys.max() - ys.min()) / (y_max - y_min) if len(ys) and y_max > y_min else 0.0
        if 1e-6 < span < CURVE_FLAT_SHARE:
            problems.append(
                f"curve {number}: squashed flat, it spans {span:.0%} of its axes' height"
            )
    return problems


def hide_package() -> None:
    """`import derivative_animator` fails from here on, as on a machine with only manim, numpy
    and sympy; this runner keeps the modules it already holds."""
    for name in [name for name in sys.modules if name.split(".")[0] == "derivative_animator"]:
        sys.modules[name] = None  # an import of a None entry raises ImportError


def _load_scene_class(path: Path, name: str | None):
    from manim import Scene

    spec = importlib.util.spec_from_file_location("generated_scene", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scenes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Scene) and obj.__module__ == module.__name__
    ]
    if name:
        scenes = [s for s in scenes if s.__name__ == name]
    if not scenes:
        raise LookupError(f"no Scene subclass{' named ' + name if name else ''} in {path.name}")
    return scenes[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scene_file", type=Path)
    parser.add_argument("--scene")
    parser.add_argument("--quality", default="l", choices=list("lmhk"))
    parser.add_argument("--fps", type=int, help="frames per second (default: the quality's own)")
    parser.add_argument(
        "--movie", type=Path, default=Path("movie.mp4"), help="where the movie goes"
    )
    parser.add_argument("--frame", type=Path, help="save the last frame as PNG here")
    parser.add_argument("--report", type=Path, default=Path("report.json"))
    parser.add_argument("--media-dir", type=Path, default=Path("media"))
    parser.add_argument(
        "--without-package",
        action="store_true",
        help="the scene cannot import derivative_animator (a teacher's machine)",
    )
    args = parser.parse_args(argv)

    workdir = Path.cwd()
    # Import what Manim needs before the guard, so library start-up is not mistaken
    # for the scene's own doing.
    import manim  # noqa: F401
    from manim import tempconfig

    share_parsed_svg_paths()
    plotted = record_plots()
    layout: list[str] = []
    record_layout(layout)
    plays: list[dict] = []
    record_plays(plotted, plays)
    _install_guard(workdir)
    quality = {"l": "low_quality", "m": "medium_quality", "h": "high_quality", "k": "fourk_quality"}
    settings = {
        "quality": quality[args.quality],
        "media_dir": str(args.media_dir.resolve()),
        **({"frame_rate": args.fps} if args.fps is not None else {}),
        "disable_caching": True,
        "progress_bar": "none",
        "verbosity": "WARNING",
    }
    if args.without_package:
        hide_package()
    scene_class = _load_scene_class(args.scene_file.resolve(), args.scene)
    with tempconfig(settings):
        scene = scene_class()
        scene.render()
        os.replace(scene.renderer.file_writer.movie_file_path, args.movie)
        if args.frame is not None:
            from PIL import Image

            Image.fromarray(scene.renderer.get_frame()).save(args.frame)
    report = {
        "scene": scene_class.__name__,
        "curves": sampled_curves(plotted),
        "layout": layout + curve_visibility(plotted),
        "plays": plays,
    }
    args.report.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
