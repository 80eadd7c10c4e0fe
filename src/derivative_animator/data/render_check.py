"""Render-validate the dataset's own scenes the way evaluation renders a model's: each through
`checks.check_code` in a warm render sandbox (one per worker, Manim imported once), judged on
all five checks. `dry_run` renders at 1 frame per second (every animation and updater still
runs); `ql` at the quality's own 15 fps. A scene that fails a check, raises, or runs past its
time limit is reported with its record id. The scenes are the project's own templates, so where
bubblewrap cannot run they render without it rather than not at all.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

from rich.progress import Progress

from derivative_animator.errors import one_line
from derivative_animator.render import checks
from derivative_animator.render.sandbox_limits import SandboxLimits


def render_all(records, mode: str = "dry_run", workers: int = 2, timeout_s: int = 120):
    """Render and check every record's scene; returns [(record id, what failed)] for the
    failures."""
    if mode not in ("dry_run", "ql"):
        raise ValueError(f"validate.mode must be dry_run or ql, not {mode!r}")
    render = checks.RenderOptions(
        quick=mode == "dry_run",
        save_frame=False,
        unsafe_no_sandbox=True,
        limits=SandboxLimits(timeout_s=timeout_s),
    )
    local, sandboxes, lock = threading.local(), [], threading.Lock()

    def judge(record) -> tuple[str, str | None]:
        if not hasattr(local, "sandbox"):
            local.sandbox = checks.PythonSandbox(
                render.limits, checks.RENDER_PRELOAD, allow_unsandboxed=True
            )
            with lock:
                sandboxes.append(local.sandbox)
        try:
            result = checks.check_code(
                record.completion, record.function, render=render, sandbox=local.sandbox
            )
        except Exception as err:  # noqa: BLE001 - every failure is reported with its sample
            return record.id, one_line(err)
        problems = (
            [result.error or "failed"] if not result.passed else []
        ) + result.layout_problems
        return record.id, "; ".join(problems)[:300] or None

    failures = []
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool, Progress() as bar:
            task = bar.add_task(f"rendering {len(records)} scenes ({mode})", total=len(records))
            for future in as_completed([pool.submit(judge, record) for record in records]):
                record_id, problem = future.result()
                if problem:
                    failures.append((record_id, problem))
                bar.advance(task)
    finally:
        for sandbox in sandboxes:
            sandbox.close()
    return sorted(failures)
