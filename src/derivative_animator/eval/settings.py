"""The evaluation's settings: one typed object built from the composed `eval` group (conf/eval,
the one home of their defaults: the fields here have none), validated on construction.

    settings = EvaluationSettings.from_config(cfg.eval)     # evaluate.py, once

Which baselines run is checked against the registry (`eval/baselines.py`), not here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from derivative_animator.model.settings import ApiSettings, plain

QUALITIES = ("l", "m", "h", "k")  # Manim's: 480p, 720p, 1080p, 4K


@dataclass(frozen=True)
class RenderSettings:
    """How the evaluator renders each scene (eval.render)."""

    quality: str
    fps: int | None  # None: the quality's own frame rate
    timeout_s: float
    memory_mb: int
    warm: bool  # one warm sandbox a render worker, Manim imported once
    unsafe_no_sandbox: bool  # where bubblewrap cannot run: render generated code anyway, unisolated

    def __post_init__(self):
        if self.quality not in QUALITIES:
            raise ValueError(
                f"eval.render.quality must be one of {', '.join(QUALITIES)}, got {self.quality!r}"
            )
        if self.fps is not None and self.fps < 1:
            raise ValueError(f"eval.render.fps must be a positive number or null, got {self.fps}")
        try:
            self.limits  # noqa: B018 - the sandbox's own rules, said once, in SandboxLimits
        except ValueError as error:
            raise ValueError(f"eval.render: {error}") from None

    @property
    def limits(self):
        """The render sandbox's limits (render/sandbox.SandboxLimits)."""
        from derivative_animator.render.sandbox import SandboxLimits

        return SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    @classmethod
    def from_config(cls, render: Mapping) -> RenderSettings:
        """From the composed `eval.render` group; a key missing from it or unknown here is an
        error."""
        return cls(**plain(render))


@dataclass(frozen=True)
class EvaluationSettings:
    """What `make eval` evaluates and how (the `eval` group)."""

    model: str | None  # a merged checkpoint dir; latest (or null): the newest under outputs/train
    benchmark: str | None
    functions_file: str | None
    split: str
    limit: int | None  # only the first N functions
    baselines: tuple[str, ...]
    samples_per_function: int  # n > 1: extra samples, reported as pass@k
    ask_styles: bool  # each scene in its sample's style, reported per style; false: the model's
    api: ApiSettings
    workers: int  # parallel sandboxed renders
    generation_threads: int | str | None  # auto (or null): the cores the render workers leave
    allow_prompt_mismatch: bool
    log_to_mlflow: bool
    render: RenderSettings

    def __post_init__(self):
        object.__setattr__(self, "baselines", tuple(self.baselines))
        if self.samples_per_function < 1 or self.workers < 1:
            raise ValueError("eval.samples_per_function and eval.workers must be at least 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"eval.limit must be null or a number of functions, got {self.limit}")
        if self.generation_threads not in (None, "auto") and (
            not str(self.generation_threads).isdigit() or int(self.generation_threads) < 1
        ):
            raise ValueError(
                "eval.generation_threads must be auto or a positive number, "
                f"got {self.generation_threads}"
            )

    @classmethod
    def from_config(cls, evaluation: Mapping) -> EvaluationSettings:
        """From the composed `eval` group (a DictConfig or a plain mapping); a key missing from
        it or unknown to these classes is an error, not a silent default."""
        values = plain(evaluation)
        return cls(
            **{
                **values,
                "api": ApiSettings.from_config(values["api"]),
                "render": RenderSettings.from_config(values["render"]),
            }
        )

    def torch_threads(self) -> int:
        """Torch threads for generation while renders run beside it. `auto`: the cores the
        render workers leave free, at least one. Oversubscribed cores are ruinous: on 2 cores
        next to a busy process, 5 scenes took 289 s with 2 threads and 14 s with 1 (measured)."""
        if self.generation_threads in (None, "auto"):
            return max(1, (os.cpu_count() or 1) - self.workers)
        return int(self.generation_threads)
