"""Render-validate the dataset's own scenes (trusted template code) in parallel.

Each worker process imports Manim once and renders many scenes, so validation costs the
scenes, not interpreter start-ups. `dry_run` executes every scene (all animations and
updaters) at 1 frame per second without writing video; `ql` renders 480p15 video. A scene that raises, or runs past its time limit,
is reported with its record id.
"""

from __future__ import annotations

import importlib.util
import multiprocessing.util
import shutil
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from rich.progress import Progress

from derivative_animator.scenes import SCENE_CLASS

_WORKDIR: Path | None = None


def _start_worker() -> None:
    global _WORKDIR
    _WORKDIR = Path(tempfile.mkdtemp(prefix="derivanim-validate-"))
    # Removed when the worker exits (multiprocessing runs its finalizers then, not atexit's).
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(_WORKDIR, True), exitpriority=0)
    import manim  # noqa: F401  (import once per worker)

    from derivative_animator.render_runner import share_parsed_svg_paths

    share_parsed_svg_paths()


def _timeout(signum, frame):
    raise TimeoutError("scene ran past its time limit")


def _render(record_id: str, style: str, code: str, mode: str, timeout_s: int) -> tuple[str, str | None]:
    from manim import tempconfig

    path = _WORKDIR / f"{record_id}.py"
    path.write_text(code)
    settings = {
        "media_dir": str(_WORKDIR / "media"),
        "quality": "low_quality",
        # A dry run still steps every animation and updater, once per second of scene
        # time: every line of the scene runs, at a fifth of the cost of 15 fps.
        **({"dry_run": True, "frame_rate": 1} if mode == "dry_run" else {}),
        "disable_caching": True,
        "progress_bar": "none",
        "verbosity": "ERROR",
    }
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(timeout_s)
    try:
        spec = importlib.util.spec_from_file_location(f"scene_{record_id.replace('-', '_')}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with tempconfig(settings):
            getattr(module, SCENE_CLASS[style])().render()
        return record_id, None
    except Exception as err:  # report every failure with the sample that caused it
        return record_id, f"{type(err).__name__}: {err}".splitlines()[0][:300]
    finally:
        signal.alarm(0)
        path.unlink(missing_ok=True)


def render_all(records, mode: str = "dry_run", workers: int = 2, timeout_s: int = 120):
    """Render every record's scene; returns [(record id, error)] for the failures."""
    if mode not in ("dry_run", "ql"):
        raise ValueError(f"validate.mode must be dry_run or ql, not {mode!r}")
    failures = []
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker) as pool, Progress() as bar:
        task = bar.add_task(f"rendering {len(records)} scenes ({mode})", total=len(records))
        futures = [pool.submit(_render, r.id, r.style, r.completion, mode, timeout_s) for r in records]
        for future in as_completed(futures):
            record_id, error = future.result()
            if error:
                failures.append((record_id, error))
            bar.advance(task)
    return sorted(failures)
