"""The generation service: how a checkpoint's scene for a function is written, checked and, when
asked, repaired. The one home of that rule, below `derivanim generate`, the page
(`derivanim serve`) and the evaluator's self-consistency and verified baselines.

It owns
- the settings (`model.settings.GenerationSettings`, from conf/generate), and with them the one
  seed and temperature policy every scene, header and completion is sampled by;
- the warm render sandbox of the CLI and the page: started on first use (or early,
  `start_sandbox`, so Manim imports while a model loads), closed with the service;
- self-consistency (`self_consistent`): the first scene under the header most of k sampled
  math headers agree on;
- verified generation (`verify`): the first scene; if it fails a check, the same k headers
  (sampled once, in one batch, shared with the vote), and of those the ones whose derivative
  the math judge accepts, completed into scenes and checked in order, at most `attempts - 1`,
  keeping the first that passes every check (`verify.first_passing`). Whenever a sampled
  header is right, verification completes one: it is never below self-consistency, whose
  vote can only be right when some header is;
- the repair (`write`, `correct`; on by default, `--no-repair`): when no try passes, the true f'
  swapped into a try wrong only in its f', checked again, shown labelled as corrected with the
  model's own try kept beside it. The evaluator never repairs: it measures the model.
What a person is told while `write` works (the page's steps, the CLI's lines, the summary) is
worded in `eval/wording.py`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from derivative_animator.eval import wording
from derivative_animator.eval.verify import Try, Verified, first_passing
from derivative_animator.eval.wording import Say, Steps, quiet
from derivative_animator.math.header import derivative_line, math_header_length
from derivative_animator.math.judge import header_judge, states_wrong_derivative
from derivative_animator.model.settings import GenerationSettings, Sampling

# functions whose sampled headers are kept (a few KB each): the vote and verification share them
KEPT_HEADER_SETS = 256

MODEL, CORRECTED = (
    "model",
    "corrected",
)  # Written.shown: the model's own try, or its scene with the true f'


@dataclass
class Written:
    """What `write` gives a user: the scene shown as the answer (`code`, checked: `result`) and,
    always, the model's own kept try (`model_code`, `model_result`; the same scene unless
    `shown` is CORRECTED), with one sentence saying what happened (`summary`)."""

    code: str
    result: object  # the shown scene's CheckResult
    verified: Verified
    # MODEL: the model's own try; CORRECTED: that scene with the true derivative swapped in
    shown: str = MODEL
    model_code: str | None = None  # the model's own kept try (None: the same as `code`)
    model_result: object = None
    summary: str = ""

    def __post_init__(self):
        if self.model_code is None:
            self.model_code, self.model_result = self.code, self.result

    @property
    def corrected(self) -> bool:
        return self.shown == CORRECTED


def _repairable(result, code: str, function: str) -> bool:
    """A scene the repair may correct: it parses and holds a scene, and its derivative is wrong."""
    return (
        result is not None
        and bool(result.syntax)
        and bool(result.structure)
        and result.math is False
        and states_wrong_derivative(code, function)
    )


class GenerationService:
    """Write, check, verify and repair scenes of one checkpoint (`generator`: a SceneGenerator,
    or anything with its `generate` and `generate_batch`) under one set of settings.
    Not thread-safe for generation: one caller writes at a time (the page's model worker)."""

    def __init__(
        self, settings: GenerationSettings, generator=None, allow_unsandboxed: bool = False
    ):
        self.settings, self.generator, self.allow_unsandboxed = (
            settings,
            generator,
            allow_unsandboxed,
        )
        self._sandbox = None
        self._lock = threading.Lock()
        self._headers: OrderedDict[str, tuple[list[str], float]] = OrderedDict()

    def load_model(self, directory: str | Path, allow_prompt_mismatch: bool = False):
        from derivative_animator.model.generate import SceneGenerator

        self.generator = SceneGenerator.load(
            directory,
            allow_prompt_mismatch=allow_prompt_mismatch,
            bracket_guard=self.settings.bracket_guard,
            shared_code=self.settings.shared_code,
            copy_function=self.settings.copy_function,
            choose_interval=self.settings.choose_interval,
        )
        return self.generator

    # --- the warm sandbox ----------------------------------------------------------------

    def start_sandbox(self):
        """The warm render sandbox, started now if it is not yet: verification's checks, --render
        and the page render in it without importing Manim each time."""
        with self._lock:
            if self._sandbox is None:
                from derivative_animator.render import checks

                self._sandbox = checks.PythonSandbox(
                    checks.RenderOptions().limits,
                    preload=checks.RENDER_PRELOAD,
                    allow_unsandboxed=self.allow_unsandboxed,
                )
            return self._sandbox

    def close(self) -> None:
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()

    def __enter__(self) -> GenerationService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, code: str, function: str, render: bool = False, output_dir: Path | None = None):
        """The checks of one scene, in the warm sandbox: a quick render, or (`render`) a real one
        at the settings' video quality whose video and last frame go to `output_dir`."""
        from derivative_animator.render import checks

        options = checks.RenderOptions(quick=not render, save_frame=render)
        if render:  # a user's video; a check's quick render keeps the default quality
            options = replace(options, quality=self.settings.video_quality)
        return checks.check_code(
            code, function, render=options, output_dir=output_dir, sandbox=self.start_sandbox()
        )

    # --- writing -------------------------------------------------------------------------

    def scene(self, function: str, index: int = 0, style: str | None = None):
        """Scene `index` of a function (0: the first, greedy by default; later ones the
        evaluator's pass@k samples), sampled as the settings' policy says, in `style` (None: the
        model's choice)."""
        return self._generate(function, self.settings.scene_sampling(index), style=style)

    def header_samples(self, function: str) -> tuple[list[str], float]:
        """The k math headers of a function and the seconds their batch took: sampled once, then
        kept, so the vote and verification share them (the same seed gives the same batch)."""
        from derivative_animator.model.self_consistency import sample_headers

        with self._lock:
            if function in self._headers:
                return self._headers[function]
        start, sampling = time.perf_counter(), self.settings.header_sampling()
        headers = sample_headers(
            self.generator,
            function,
            self.settings.self_consistency.k,
            sampling.temperature,
            self.settings.top_p,
            sampling.seed,
        )
        with self._lock:
            self._headers[function] = (headers, time.perf_counter() - start)
            while len(self._headers) > KEPT_HEADER_SETS:
                self._headers.popitem(last=False)
            return self._headers[function]

    def self_consistent(self, function: str, first):
        """The first scene under the math header the k samples (and its own) agree on most; the
        vote (`self_consistency.Vote`), its seconds counting the header batch."""
        from derivative_animator.model.self_consistency import self_consistent_scene

        headers, seconds = self.header_samples(function)
        sampling = self.settings.header_sampling()
        code, vote = self_consistent_scene(
            self.generator,
            function,
            first.code,
            self.settings.self_consistency.k,
            sampling.temperature,
            self.settings.top_p,
            sampling.seed,
            sampled=headers,
        )
        vote.seconds += seconds
        return replace(first, code=code, seconds=first.seconds + vote.seconds), vote

    def first_scene(
        self, function: str, say: Say = quiet, steps: Steps | None = None, style: str | None = None
    ):
        """The first scene; under the voted header when the settings ask for the vote. What the
        vote did is said in full: who agreed out of every header read, and why the others could
        not vote ("7 of 9 headers agree (greedy's and 8 sampled); 1 had no readable derivative")."""
        steps = steps or Steps()
        first = self.scene(function, style=style)
        if not self.settings.self_consistency.vote:
            return first
        steps.doing(wording.sampling_step(self.settings.self_consistency.k, to_vote=True))
        first, vote = self.self_consistent(function, first)
        said = wording.vote_line(vote)
        say(said)
        steps.done(said)
        return first

    def complete(self, function: str, header: str, n: int, style: str | None = None):
        """The n-th right header (from 1) completed into a scene: the model goes on from it."""
        sampling = self.settings.completion_sampling(n)
        return self._generate(function, sampling, prefix=header, style=style)

    def _generate(
        self, function: str, sampling: Sampling, prefix: str = "", style: str | None = None
    ):
        """One scene sampled as `sampling` says, going on from `prefix` (a header) when given, in
        `style` when given (`decoding.StyleChoice`; a generator without styles is never asked)."""
        s = self.settings
        return self.generator.generate(
            function,
            s.max_new_tokens,
            sampling.temperature,
            s.top_p,
            sampling.seed,
            syntax_rollbacks=s.syntax_rollbacks,
            prefix=prefix,
            **({"style": style} if style is not None else {}),
        )

    def verify(
        self,
        function: str,
        first,
        check: Callable,
        report: Callable[[Try], None] = lambda t: None,
        steps: Steps | None = None,
        style: str | None = None,
    ) -> Verified:
        """Verified generation from the first scene (`first`, already written): check(attempt,
        generation) judges a try (a sandboxed check, or an evaluation row), report(try) hears of
        each, `steps` of the headers sampled and each completion begun. Headers are sampled only
        once the first scene has failed."""
        verified, steps, attempts = Verified(), steps or Steps(), self.settings.attempts

        def tries():
            yield first
            if attempts <= 1:
                return
            steps.doing(wording.sampling_step(self.settings.self_consistency.k, to_vote=False))
            headers, verified.header_seconds = self.header_samples(function)
            accept = header_judge(function)
            right = [header for header in headers if accept(header)]
            verified.sampled, verified.right = len(headers), len(right)
            end = math_header_length(first.code)
            tried = (
                {first.code[:end]} if end is not None else set()
            )  # the first scene's header already failed
            distinct = [h for h in dict.fromkeys(right) if h not in tried][: attempts - 1]
            steps.done(wording.sampled_step(verified, len(distinct)))
            for n, header in enumerate(distinct, 1):
                verified.completed = n
                steps.doing(wording.writing_step(n + 1, attempts, header))
                yield self.complete(function, header, n, style)

        verified.verification = first_passing(tries(), check, report)
        return verified

    def write(
        self,
        function: str,
        say: Say = quiet,
        repair: bool | None = None,
        steps: Steps | None = None,
        style: str | None = None,
    ) -> Written:
        """A scene as `derivanim generate` and the page write one: the first scene, verified in
        the warm sandbox, each try reported through `say` (the CLI's lines) and `steps` (in
        words, each with its time: the page's progress). When no try passes and the repair is
        on (`repair`, else the settings'), the model's scenes wrong only in their derivative get
        the true f' (`correct`), and the first corrected scene that passes its own checks is
        shown, labelled CORRECTED, the model's try kept beside it. Every scene the model writes
        is in `style` (tangent, secant, graphs; None: the model's choice). Never swaps code
        silently: `summary` (also said last) says what is shown and why. The evaluator never
        calls this: it measures the model (`verify`)."""
        steps, attempts, checking = steps or Steps(), self.settings.attempts, {}
        steps.doing(wording.writing_step(1, attempts))
        first = self.first_scene(function, say, steps, style)

        def check(attempt, generation):
            steps.doing(wording.checking_step(attempt, attempts))
            start = time.perf_counter()
            result = self.check(generation.code, function)
            checking[attempt] = time.perf_counter() - start
            return result

        def report(tried: Try) -> None:
            say(wording.attempt_line(tried))
            steps.done(wording.tried_step(tried, attempts, function, checking.get(tried.attempt)))

        verified = self.verify(function, first, check, report, steps, style)
        if verified.sampled:
            say(
                wording.story(verified, "greedy" if self.settings.temperature == 0 else "the first")
            )
        kept = verified.kept
        code, result = kept.generation.code, kept.result
        if result.passed:
            return Written(code, result, verified, summary=wording.PASSED)
        if self.settings.attempts > 1:
            say(wording.no_pass_line(kept))
            steps.done(wording.no_pass_step(kept))
        if self.settings.repair if repair is None else repair:
            written = self.correct(function, verified, say, steps)
            if written is not None:
                say(written.summary)
                return written
        summary = wording.failed_summary(
            result, code, function, wrong_derivative=_repairable(result, code, function)
        )
        say(summary)
        return Written(code, result, verified, summary=summary)

    def correct(
        self, function: str, verified: Verified, say: Say = quiet, steps: Steps | None = None
    ) -> Written | None:
        """The repair: each of the model's tries wrong only in its derivative (the kept one first),
        with the true f' swapped in (`oracle.with_true_derivative`), checked as any scene is (a
        render and every check) until one passes; that one, labelled CORRECTED, with the model's
        try it came from. When none passes: a Written of the model's kept try, labelled as
        failing, saying the correction failed too; None when no try could be corrected."""
        from derivative_animator.data.oracle import with_true_derivative

        kept, steps = verified.kept, steps or Steps()
        candidates = [kept] + [t for t in verified.verification.tries if t is not kept]
        tried, failed = set(), None
        for attempt in candidates:
            if not _repairable(attempt.result, attempt.generation.code, function):
                continue
            repaired = with_true_derivative(attempt.generation.code, function)
            if repaired is None or repaired in tried:
                continue
            tried.add(repaired)
            wrote, true = derivative_line(attempt.generation.code), derivative_line(repaired)
            steps.doing(wording.correcting_step(attempt, true))
            start = time.perf_counter()
            result = self.check(repaired, function)
            why = wording.verdict(result, repaired, function)
            say(wording.corrected_line(attempt, true, result))
            steps.done(wording.corrected_step(attempt, true, why, time.perf_counter() - start))
            if result.passed:
                return Written(
                    repaired,
                    result,
                    verified,
                    shown=CORRECTED,
                    model_code=attempt.generation.code,
                    model_result=attempt.result,
                    summary=wording.corrected_summary(wrote, true, result),
                )
            failed = failed or (wrote, true, why)
        if failed is None:
            return None
        summary = wording.correction_failed_summary(*failed)
        return Written(kept.generation.code, kept.result, verified, summary=summary)
