"""The evaluation engine: samples and rows, and the evaluator that writes each generated
scene to disk and checks it on a queue of render workers (one warm sandbox each), the
oracle's renders filling the time the models' scenes are still being written."""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

from derivative_animator.errors import one_line
from derivative_animator.eval.settings import EvaluationSettings


@dataclass
class Sample:
    id: str
    function: str
    level: int
    style: str = "tangent"
    problem: str | None = None  # why this line cannot be evaluated at all (it does not parse)
    kinds: tuple[
        str, ...
    ] = ()  # a benchmark's: kinds of differentiation and length (math/expression_trees)


@dataclass
class Row:
    baseline: str
    sample_id: str
    function: str
    level: int
    attempt: int
    syntax: bool
    structure: bool | None
    executes: bool | None
    math: bool | None
    passed: bool
    error: str | None
    generation_s: float
    new_tokens: int
    tokens_per_s: float
    render_s: float | None
    code_path: str
    frame_path: str | None = None
    attempts_tried: int = 1
    layout: bool | None = None
    extra: dict = field(default_factory=dict)


def failed_row(sample: Sample, error: str, **known) -> Row:
    """A row for a sample that could not be evaluated (bad input, or a generation or check
    that failed unexpectedly): every check failed, the reason in `error`, extra.failed set.
    `known`: the row's fields already known (its baseline, always; a generation's figures)."""
    fields = dict(
        sample_id=sample.id,
        function=sample.function,
        level=sample.level,
        attempt=1,
        syntax=False,
        structure=None,
        executes=None,
        math=None,
        passed=False,
        generation_s=0.0,
        new_tokens=0,
        tokens_per_s=0.0,
        render_s=None,
        code_path="",
    )
    extra = {"failed": True, **known.pop("extra", {})}
    return Row(**{**fields, **known, "error": error, "extra": extra})


def resolved(row: Row) -> Future:
    future: Future = Future()
    future.set_result(row)
    return future


def then(future: Future, transform) -> Future:
    """A future for transform(future's result), without tying up a worker to wait for it."""
    chained: Future = Future()

    def done(finished: Future) -> None:
        try:
            chained.set_result(transform(finished.result()))
        except BaseException as error:  # noqa: BLE001 - handed on to whoever waits
            chained.set_exception(error)

    future.add_done_callback(done)
    return chained


def _generation_extra(generation) -> dict:
    """How a generation ended, for a row's `extra` (the oracle has no generation)."""
    return {
        "stop": generation.stop if generation else None,
        "rollbacks": generation.rollbacks if generation else 0,
        "guarded": generation.guarded if generation else 0,
    }


class _Job:
    def __init__(self, work):
        self.work, self.future, self.taken = work, Future(), False


class RenderQueue:
    """Render workers that take an URGENT job before a SPARE one, each kind in submission order.

    The oracle's renders depend on no model, so they are queued at the start as SPARE work:
    they fill the time the render workers would otherwise wait for the models' first scenes,
    and never delay a model's render (verification waits on those). `hurry` moves a queued
    job up, when a model writes exactly the oracle's scene and shares its render."""

    URGENT, SPARE = 0, 1

    def __init__(self, workers: int):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._cancelled = False
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, work, priority: int) -> _Job:
        job = _Job(work)
        self._queue.put((priority, next(self._order), job))
        return job

    def hurry(self, job: _Job) -> None:
        with self._lock:
            if not job.taken:  # a second entry; whichever a worker takes first runs it, once
                self._queue.put((self.URGENT, next(self._order), job))

    def shutdown(self, cancel_pending: bool = False) -> None:
        """Wait for every job, or (cancel_pending) only for the ones running."""
        self._cancelled = cancel_pending
        for _ in self._threads:
            self._queue.put((self.SPARE + 1, next(self._order), None))  # after every job
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._queue.get()[2]) is not None:
            with self._lock:
                if job.taken:
                    continue
                job.taken = True
            if self._cancelled:
                job.future.cancel()
                continue
            try:
                job.future.set_result(job.work())
            except BaseException as error:  # noqa: BLE001 - handed on to whoever waits
                job.future.set_exception(error)


class Evaluator:
    """Generates, writes each scene to disk, and checks it on a queue of render workers.

    A scene byte-identical to one already submitted for the same function (a fine-tuned
    model that writes exactly the oracle's scene) shares that render and its checks: the
    same code gives the same result, and a render costs seconds."""

    def __init__(self, settings: EvaluationSettings, run_dir: Path):
        from derivative_animator.render import checks
        from derivative_animator.render.sandbox import SandboxPool

        self.settings, self.run_dir = settings, run_dir
        render = settings.render
        self.render = checks.RenderOptions(
            quality=render.quality, fps=render.fps, limits=render.limits
        )
        # One warm sandbox a render worker: Manim is imported once each, not once a scene.
        self.sandboxes = SandboxPool(
            settings.workers,
            render.limits,
            checks.RENDER_PRELOAD,
            warm=render.warm,
            allow_unsandboxed=render.unsafe_no_sandbox,
        )
        self.queue = RenderQueue(settings.workers)
        self._checked: dict[tuple, _Job] = {}  # (function, code, render_failing) -> its check
        self._lock = threading.Lock()

    def submit(
        self,
        baseline: str,
        sample: Sample,
        code: str,
        attempt: int,
        generation,
        render_failing: bool = True,
        urgent: bool = True,
    ) -> Future:
        """Write `baseline`'s scene to disk and queue its check: an urgent one (a model's, waited
        on) before the spare ones (the oracle's, `Baseline.urgent`)."""
        stem = f"{sample.id}" + (f"-a{attempt}" if attempt > 1 else "")
        code_path = self.run_dir / "code" / baseline / f"{stem}.py"
        code_path.parent.mkdir(parents=True, exist_ok=True)
        code_path.write_text(code)
        own = {
            "baseline": baseline,
            "sample_id": sample.id,
            "function": sample.function,
            "level": sample.level,
            "attempt": attempt,
            "code_path": str(code_path.relative_to(self.run_dir)),
            "generation_s": round(generation.seconds, 3) if generation else 0.0,
            "new_tokens": generation.new_tokens if generation else 0,
            "tokens_per_s": round(generation.tokens_per_second, 1) if generation else 0.0,
        }
        with self._lock:
            key = (sample.function, code, render_failing)
            earlier = self._checked.get(key)
            if earlier is not None:
                if urgent:
                    self.queue.hurry(earlier)
                return then(
                    earlier.future,
                    lambda row: Row(
                        **{
                            **asdict(row),
                            **own,
                            "extra": {
                                **row.extra,
                                **_generation_extra(generation),
                                "render_shared_with": row.code_path,
                            },
                        }
                    ),
                )
            job = self._checked[key] = self.queue.submit(
                self._check(sample, code, stem, own, generation, render_failing),
                RenderQueue.URGENT if urgent else RenderQueue.SPARE,
            )
        return job.future

    def _check(
        self, sample: Sample, code: str, stem: str, own: dict, generation, render_failing: bool
    ):
        from derivative_animator.render import checks

        frames = self.run_dir / "frames" / own["baseline"] / stem

        def work() -> Row:
            try:
                with self.sandboxes.take() as sandbox:
                    result = checks.check_code(
                        code,
                        sample.function,
                        render=self.render,
                        output_dir=frames,
                        render_failing=render_failing,
                        sandbox=sandbox,
                    )
            except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
                return failed_row(
                    sample,
                    f"check failed: {one_line(error)}",
                    **{**own, "extra": _generation_extra(generation)},
                )
            frame = frames / f"{result.scene}.png" if result.scene else None
            return Row(
                **own,
                syntax=result.syntax,
                structure=result.structure,
                executes=result.executes,
                math=result.math,
                passed=result.passed,
                error=result.error,
                render_s=result.render_seconds,
                frame_path=str(frame.relative_to(self.run_dir))
                if frame and frame.is_file()
                else None,
                layout=result.layout,
                extra={
                    "environment_error": result.environment_error,
                    "isolation": result.isolation,
                    "layout_problems": result.layout_problems,
                    **_generation_extra(generation),
                },
            )

        return work

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, error_type, *exc) -> None:
        self.queue.shutdown(cancel_pending=error_type is not None)
        self.sandboxes.close()
