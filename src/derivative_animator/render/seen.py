"""What a viewer of the movie sees: the host's own observation of the frames it decoded.

The scene runs in the process that writes report.json, so the report is only its claim;
the movie is what it shows. Here the host looks at movie frames for f and f': the report
says where each plotted curve's axes lie in the pixels and in which colour (where to look),
and the host checks that the pixels there trace the true function it knows, on that box.
A curve drawn transparent, off the frame, or somewhere other than where the report says is
not seen (docs/decisions/0005-render-sandbox.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp

from derivative_animator.math.parsing import X

SAMPLED_COLUMNS = 160  # pixel columns of a box looked at
SUBSAMPLES = 9  # points of the function evaluated across one column's x-interval
TOLERANCE_PX = (
    3.0  # rows beside the function's own that count as on it, at 480 rows (scales with height)
)
COLOR_DISTANCE = (
    90  # RGB distance from the curve's colour that still counts as it (H.264 blurs thin lines)
)
MIN_RECALL = (
    0.75  # of the columns where the function lies inside the box, those with the curve on it
)
MIN_PRECISION = 0.5  # of the curve-coloured pixels inside the box, those on the function
MAX_STEP_SHARE = 0.05  # the plot's sampling step a column may widen by, at most, of the x-range
MAX_HIDDEN = 0.75  # of the function's columns, those something else drawn may hide the curve in
MIN_SHOWN = 0.2  # of them, those the curve must show in
MIN_BOX_PX = 12  # a box smaller than this, either way, shows no curve


@dataclass
class Trace:
    recall: (
        float  # the function's columns not hidden by something else with the curve's colour on it
    )
    precision: float  # the curve's colour inside the box that lies on the function
    columns: int  # columns where the function is inside the box
    span: float = 0.0  # of the box's height, the rows the function covers in it
    shown: int = 0  # columns with the curve's colour on the function
    beyond: int = 0  # columns with the curve's colour on the function outside its box

    @property
    def seen(self) -> bool:
        return (
            self.shown >= max(10, MIN_SHOWN * self.columns)
            and self.recall >= MIN_RECALL
            and self.precision >= MIN_PRECISION
        )


def _color(text) -> np.ndarray | None:
    if not isinstance(text, str) or len(text) < 7 or not text.startswith("#"):
        return None
    try:
        return np.array([int(text[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int32)
    except ValueError:
        return None


def _floats(value, n: int) -> list[float] | None:
    try:
        numbers = [float(v) for v in list(value)[:n]]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == n and all(np.isfinite(numbers)) else None


@lru_cache(maxsize=64)
def _numeric(expr: sp.Expr):
    """The host's own f or f' as a numpy function (lambdify costs more than a trace)."""
    return sp.lambdify(X, expr, "numpy")


def trace(pixels: np.ndarray, view: dict, expr: sp.Expr) -> Trace | None:
    """How well the pixels inside the view's box trace `expr` (None: the view is no box)."""
    if not isinstance(view, dict):
        return None
    x_range, y_range = _floats(view.get("x"), 2), _floats(view.get("y"), 2)
    low, high = _floats(view.get("low"), 2), _floats(view.get("high"), 2)
    if not (x_range and y_range and low and high):
        return None
    (x0, x1), (y0, y1), (c0, r0), (c1, r1) = x_range, y_range, low, high
    height, width = pixels.shape[:2]
    if not (x1 > x0 and y1 > y0 and c1 - c0 >= MIN_BOX_PX and r0 - r1 >= MIN_BOX_PX):
        return None
    step = _floats([view.get("step", 0.0)], 1)
    step = min(max(step[0], 0.0), MAX_STEP_SHARE * (x1 - x0)) if step else 0.0
    tolerance = TOLERANCE_PX * height / 480
    columns = np.arange(max(np.ceil(c0), 0), min(np.floor(c1), width - 1) + 1)
    if len(columns) > SAMPLED_COLUMNS:
        columns = columns[np.linspace(0, len(columns) - 1, SAMPLED_COLUMNS).round().astype(int)]
    if len(columns) == 0:
        return Trace(0.0, 0.0, 0)
    per_px = (x1 - x0) / (c1 - c0)
    spread = np.linspace(-0.5, 0.5, SUBSAMPLES)
    xs = x0 + (columns[:, None] - c0 + spread[None, :]) * per_px
    xs = np.concatenate([xs, xs[:, :1] - step / 2, xs[:, -1:] + step / 2], axis=1)
    with np.errstate(all="ignore"):
        values = np.asarray(_numeric(expr)(xs), dtype=complex) * np.ones_like(xs)
    values = np.where(np.abs(values.imag) < 1e-9, values.real, np.nan)
    if step > 0:  # between samples, Manim's curve may lie anywhere between its neighbours' values
        wide = (
            x0
            + (columns[:, None] - c0) * per_px
            + np.linspace(-step / 2, step / 2, SUBSAMPLES)[None, :]
        )
        with np.errstate(all="ignore"):
            more = np.asarray(_numeric(expr)(wide), dtype=complex) * np.ones_like(wide)
        values = np.concatenate(
            [values, np.where(np.abs(more.imag) < 1e-9, more.real, np.nan)], axis=1
        )
    finite = np.isfinite(values)
    rows = np.where(finite, r0 + (values - y0) / (y1 - y0) * (r1 - r0), np.nan)
    with np.errstate(all="ignore"):
        top, bottom = (
            np.nanmin(np.where(finite, rows, np.inf), axis=1),
            np.nanmax(np.where(finite, rows, -np.inf), axis=1),
        )
    box_top, box_bottom = max(r1, 0), min(r0, height - 1)
    inside = finite.any(axis=1) & (bottom >= box_top) & (top <= box_bottom)
    colour = _color(view.get("color"))
    band = pixels[
        int(max(box_top - tolerance, 0)) : int(min(box_bottom + tolerance, height - 1)) + 1
    ][:, columns.astype(int)]
    band_top = int(max(box_top - tolerance, 0))
    drawn = band.astype(np.int32).sum(axis=-1) > 150  # anything unlike the black background
    if colour is not None:
        ink = np.sqrt(((band.astype(np.int32) - colour) ** 2).sum(axis=-1)) < COLOR_DISTANCE
    else:  # no colour named: anything drawn
        ink = drawn
    row_index = np.arange(band.shape[0])[:, None] + band_top
    lo = np.where(inside, np.clip(top, box_top, box_bottom) - tolerance, np.inf)
    hi = np.where(inside, np.clip(bottom, box_top, box_bottom) + tolerance, -np.inf)
    on = (row_index >= lo[None, :]) & (row_index <= hi[None, :])
    hits = (ink & on).any(axis=0) & inside
    # Something else drawn over the curve (a tangent line along a flat stretch) hides it: such
    # a column is left out, as long as most of the curve's columns are not hidden.
    hidden = (drawn & ~ink & on).any(axis=0) & inside & ~hits
    if hidden.sum() > MAX_HIDDEN * inside.sum():
        hidden[:] = False
    in_box = ink & (row_index >= box_top) & (row_index <= box_bottom)
    total = int(in_box.sum())
    span = 0.0
    if inside.any():
        covered = (
            np.clip(bottom[inside], box_top, box_bottom).max()
            - np.clip(top[inside], box_top, box_bottom).min()
        )
        span = float(covered / (r0 - r1))
    return Trace(
        beyond=_beyond_box(pixels, columns, colour, top, bottom, (box_top, box_bottom), tolerance),
        recall=float(hits.sum() / max(inside.sum() - hidden.sum(), 1)),
        precision=float((in_box & on).sum() / total) if total else 0.0,
        columns=int(inside.sum()),
        span=span,
        shown=int(hits.sum()),
    )


BEYOND_PX = 4  # past the box's edge (and the tolerance), where a curve has left its panel


def _beyond_box(pixels, columns, colour, top, bottom, box_rows, tolerance) -> int:
    """Columns where the curve's colour lies on the function's path above or below its box:
    a curve drawn past its axes (Manim's plot is not clipped: spikes at a pole). Only a
    named colour counts; text of that colour in the path's way counts as the curve."""
    if colour is None or len(columns) == 0:
        return 0
    height = pixels.shape[0]
    ink = (
        np.sqrt(((pixels[:, columns.astype(int)].astype(np.int32) - colour) ** 2).sum(axis=-1))
        < COLOR_DISTANCE
    )
    rows = np.arange(height)[:, None]
    with np.errstate(invalid="ignore"):
        on_path = (rows >= top[None, :] - tolerance) & (rows <= bottom[None, :] + tolerance)
    outside = (rows < box_rows[0] - tolerance - BEYOND_PX) | (
        rows > box_rows[1] + tolerance + BEYOND_PX
    )
    return int((ink & on_path & outside).any(axis=0).sum())


EDGE_PX = 2  # the frame's outermost rows and columns
EDGE_INK = 24  # pixels along an edge with something drawn that mean something is cut there...
EDGE_RUNS = 3  # ...or separate stretches of them (a line leaving the frame makes one short one)


def cut_at_edges(pixels: np.ndarray) -> list[str]:
    """The frame's edges where something drawn is cut off (text past the frame): pixels
    unlike the background (the corners' most common colour) along the outermost rows or
    columns, more than a line leaving the frame makes (the oracle's tangent lines do)."""
    corners = np.concatenate(
        [pixels[:EDGE_PX, :EDGE_PX].reshape(-1, 3), pixels[-EDGE_PX:, -EDGE_PX:].reshape(-1, 3)]
    )
    colours, counts = np.unique(corners, axis=0, return_counts=True)
    background = colours[counts.argmax()].astype(np.int32)
    sides = {
        "top": pixels[:EDGE_PX],
        "bottom": pixels[-EDGE_PX:],
        "left": pixels[:, :EDGE_PX].transpose(1, 0, 2),
        "right": pixels[:, -EDGE_PX:].transpose(1, 0, 2),
    }
    cut = []
    for side, strip in sides.items():
        along = (np.abs(strip.astype(np.int32) - background).sum(axis=-1) > 90).any(axis=0)
        runs = int(np.count_nonzero(np.diff(along.astype(np.int8)) == 1) + along[0])
        if along.sum() >= EDGE_INK or runs >= EDGE_RUNS:
            cut.append(side)
    return cut
