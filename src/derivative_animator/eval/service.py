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
  model's own try kept beside it. The evaluator never repairs: it measures the model;
- what a person is told while `write` works (`Steps`, the page's progress): each step in words
  with its time ("try 1 of 3: the derivative is wrong (it wrote 3x); written in 2.1 s, checked
  in 3.0 s"), beside the lines the CLI prints (`say`).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from derivative_animator.eval.verify import Try, Verification, first_passing
from derivative_animator.model.settings import GenerationSettings

Say = Callable[[str], None]
# functions whose sampled headers are kept (a few KB each): the vote and verification share them
KEPT_HEADER_SETS = 256
_ORDINALS = (
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
)


def _quiet(message: str) -> None:
    pass


@dataclass
class Steps:
    """What `write` tells a person while it works, in words: `doing(text)` when a step starts
    (the page shows it beside a spinner), `done(text)` when one ends, its time in the text (the
    page lists those). Quiet unless given. The CLI's lines (`say`) are for people who read
    check marks; these are for everyone."""

    doing: Say = _quiet
    done: Say = _quiet


def _why(result, check: str, limit: int = 160) -> str:
    """The part of a result's error that its failing `check` wrote (errors read "syntax: ...;
    executes: ..."), without that name, in brackets and cut to `limit`; "" when it wrote none."""
    if not result.error:
        return ""
    parts = result.error.split("; ")
    said = next(
        (part[len(check) + 2 :] for part in parts if part.startswith(f"{check}: ")), result.error
    )
    return f" ({said if len(said) <= limit else said[: limit - 3] + '...'})"


def verdict(result, code: str, function: str) -> str:
    """A checked scene in words, first failure first: "passed every check", "the derivative is
    wrong (it wrote 3x)", "the scene did not render (...)"."""
    if result is None:
        return "abandoned after its math header: the derivative is wrong"
    if result.passed:
        if result.layout is False:
            return "right and renders, but the layout check failed" + (
                f": {result.layout_problems[0]}" if result.layout_problems else ""
            )
        return "passed every check"
    if result.syntax is False:
        return "the code does not parse" + _why(result, "syntax")
    if result.structure is False:
        return "the code holds no Manim scene"
    if result.math is False:
        if _wrong_derivative(code, function):
            return f"the derivative is wrong (it wrote {derivative_line(code)})"
        return "the math check failed" + _why(result, "math")
    if result.executes is False:
        return "the scene did not render" + _why(result, "executes")
    return "could not be checked" + (
        ": this machine cannot render"
        if getattr(result, "environment_error", False)
        else _why(result, "executes")
    )


def marks(result) -> str:
    """A check result in one line: `syntax:ok structure:ok executes:FAIL math:- layout:-`."""
    from derivative_animator.render.checks import REPORTED

    return " ".join(
        f"{k}:{'ok' if getattr(result, k) else ('-' if getattr(result, k) is None else 'FAIL')}"
        for k in REPORTED
    )


def _ordinal(n: int) -> str:
    return _ORDINALS[n - 1] if n <= len(_ORDINALS) else f"{n}th"


def _failure(result) -> str:
    """What a failed scene got wrong first, in words."""
    if result is None:
        return "was never checked"
    for name, words in (
        ("syntax", "did not parse"),
        ("structure", "held no Manim scene"),
        ("math", "had a wrong derivative"),
        ("executes", "did not render"),
    ):
        if getattr(result, name) is False:
            return words
    return "could not be checked" + (
        " (this machine cannot render)" if getattr(result, "environment_error", False) else ""
    )


@dataclass
class Verified:
    """What verified generation did: its tries (`verification`) and what the headers gave."""

    verification: Verification = field(default_factory=Verification)
    sampled: int = 0  # math headers sampled (0: the first scene passed, or one attempt only)
    right: int = 0  # of them, those whose derivative the math judge accepts
    completed: int = 0  # of the distinct right ones, completed into scenes and checked
    header_seconds: float = 0.0  # the batch that sampled them

    @property
    def kept(self) -> Try | None:
        return self.verification.kept

    @property
    def seconds(self) -> float:
        return self.verification.seconds + self.header_seconds

    def story(self, first_name: str = "greedy") -> str:
        """In words, e.g. "greedy's scene had a wrong derivative; 3 of 8 sampled derivatives
        were right; the first passed every check"."""
        first = self.verification.tries[0].result
        if first is not None and first.passed:
            return f"{first_name}'s scene passed every check"
        said = [f"{first_name}'s scene {_failure(first)}"]
        if self.sampled:
            said.append(f"{self.right} of {self.sampled} sampled derivatives were right")
        kept = self.kept
        if self.completed and kept is not None and kept.result.passed:
            said.append(f"the {_ordinal(kept.attempt - 1)} passed every check")
        elif self.completed:
            said.append(
                "the one completed failed a check"
                if self.completed == 1
                else f"none of the {self.completed} completed passed every check"
            )
        return "; ".join(said)


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


def derivative_line(code: str) -> str | None:
    """What a scene states as f'(x) (its header's `f'(x) = ...` line), or None."""
    found = re.search(r"^f'\(x\) = (.*)$", code, flags=re.MULTILINE)
    return found.group(1).strip() if found else None


def _wrong_derivative(code: str, function: str) -> bool:
    """Does the scene's math header state a derivative the math judge rejects? (A scene may fail
    the math check for another reason, e.g. a plotting interval where f' is undefined: then its
    derivative is not what is wrong, and swapping in the true one cannot help.)"""
    from derivative_animator.math.header import math_header_length
    from derivative_animator.math.judge import header_judge

    end = math_header_length(code)
    return (
        end is not None
        and derivative_line(code) is not None
        and not header_judge(function)(code[:end])
    )


def _repairable(result, code: str, function: str) -> bool:
    """A scene the repair may correct: it parses and holds a scene, and its derivative is wrong."""
    return (
        result is not None
        and bool(result.syntax)
        and bool(result.structure)
        and result.math is False
        and _wrong_derivative(code, function)
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
        whose video and last frame go to `output_dir`."""
        from derivative_animator.render import checks

        options = checks.RenderOptions(quick=not render, save_frame=render)
        return checks.check_code(
            code, function, render=options, output_dir=output_dir, sandbox=self.start_sandbox()
        )

    # --- writing -------------------------------------------------------------------------

    def scene(self, function: str, index: int = 0):
        """Scene `index` of a function (0: the first, greedy by default; later ones the
        evaluator's pass@k samples), sampled as the settings' policy says."""
        s, sampling = self.settings, self.settings.scene_sampling(index)
        return self.generator.generate(
            function,
            s.max_new_tokens,
            sampling.temperature,
            s.top_p,
            sampling.seed,
            syntax_rollbacks=s.syntax_rollbacks,
        )

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

    def first_scene(self, function: str, say: Say = _quiet, steps: Steps | None = None):
        """The first scene; under the voted header when the settings ask for the vote. What the
        vote did is said in full: who agreed out of every header read, and why the others could
        not vote ("7 of 9 headers agree (greedy's and 8 sampled); 1 had no readable derivative")."""
        steps = steps or Steps()
        first = self.scene(function)
        if not self.settings.self_consistency.vote:
            return first
        steps.doing(f"sampling {self.settings.self_consistency.k} derivatives to vote on")
        first, vote = self.self_consistent(function, first)
        if vote.chosen is None:
            said = (
                f"self-consistency: {vote.said()} ({vote.seconds:.1f} s); keeping the greedy scene"
            )
        else:
            which = "the greedy header" if vote.chosen == 0 else f"sampled header {vote.chosen}"
            said = f"self-consistency: {which} wins: {vote.said()} ({vote.seconds:.1f} s)"
        say(said)
        steps.done(said)
        return first

    def complete(self, function: str, header: str, n: int):
        """The n-th right header (from 1) completed into a scene: the model goes on from it."""
        s, sampling = self.settings, self.settings.completion_sampling(n)
        return self.generator.generate(
            function,
            s.max_new_tokens,
            sampling.temperature,
            s.top_p,
            sampling.seed,
            syntax_rollbacks=s.syntax_rollbacks,
            prefix=header,
        )

    def verify(
        self,
        function: str,
        first,
        check: Callable,
        report: Callable[[Try], None] = lambda t: None,
        steps: Steps | None = None,
    ) -> Verified:
        """Verified generation from the first scene (`first`, already written): check(attempt,
        generation) judges a try (a sandboxed check, or an evaluation row), report(try) hears of
        each, `steps` of the headers sampled and each completion begun. Headers are sampled only
        once the first scene has failed."""
        from derivative_animator.math.header import math_header_length
        from derivative_animator.math.judge import header_judge

        verified, steps, attempts = Verified(), steps or Steps(), self.settings.attempts

        def tries():
            yield first
            if attempts <= 1:
                return
            steps.doing(f"sampling {self.settings.self_consistency.k} other derivatives")
            headers, verified.header_seconds = self.header_samples(function)
            accept = header_judge(function)
            right = [header for header in headers if accept(header)]
            verified.sampled, verified.right = len(headers), len(right)
            end = math_header_length(first.code)
            tried = (
                {first.code[:end]} if end is not None else set()
            )  # the first scene's header already failed
            distinct = [h for h in dict.fromkeys(right) if h not in tried][: attempts - 1]
            steps.done(_sampled_words(verified, len(distinct)))
            for n, header in enumerate(distinct, 1):
                verified.completed = n
                steps.doing(
                    f"try {n + 1} of {attempts}: writing the scene from a right sampled "
                    "derivative, "
                    f"f'(x) = {derivative_line(header)}"
                )
                yield self.complete(function, header, n)

        verified.verification = first_passing(tries(), check, report)
        return verified

    def write(
        self,
        function: str,
        say: Say = _quiet,
        repair: bool | None = None,
        steps: Steps | None = None,
    ) -> Written:
        """A scene as `derivanim generate` and the page write one: the first scene, verified in
        the warm sandbox, each try reported through `say` (the CLI's lines) and `steps` (in
        words, each with its time: the page's progress). When no try passes and the repair is
        on (`repair`, else the settings'), the model's scenes wrong only in their derivative get
        the true f' (`correct`), and the first corrected scene that passes its own checks is
        shown, labelled CORRECTED, the model's try kept beside it. Never swaps code silently:
        `summary` (also said last) says what is shown and why. The evaluator never calls this:
        it measures the model (`verify`)."""
        steps, attempts, checking = steps or Steps(), self.settings.attempts, {}
        steps.doing(f"try 1 of {attempts}: writing the scene")
        first = self.first_scene(function, say, steps)

        def check(attempt, generation):
            steps.doing(
                f"try {attempt} of {attempts}: checking the scene (a quick render in the sandbox)"
            )
            start = time.perf_counter()
            result = self.check(generation.code, function)
            checking[attempt] = time.perf_counter() - start
            return result

        def report(tried: Try) -> None:
            say(_attempt_line(tried))
            steps.done(
                f"try {tried.attempt} of {attempts}: "
                f"{verdict(tried.result, tried.generation.code, function)}; written in "
                f"{tried.generation.seconds:.1f} s"
                + (
                    f", checked in {checking[tried.attempt]:.1f} s"
                    if tried.attempt in checking
                    else ""
                )
            )

        verified = self.verify(function, first, check, report, steps)
        if verified.sampled:
            say(verified.story("greedy" if self.settings.temperature == 0 else "the first"))
        kept = verified.kept
        code, result = kept.generation.code, kept.result
        if result.passed:
            return Written(
                code, result, verified, summary="shown: the model's scene, which passed every check"
            )
        if self.settings.attempts > 1:
            say(f"no attempt passed every check; keeping attempt {kept.attempt} ({marks(result)})")
            steps.done(f"no try passed every check; keeping try {kept.attempt}")
        if self.settings.repair if repair is None else repair:
            written = self.correct(function, verified, say, steps)
            if written is not None:
                say(written.summary)
                return written
        summary = "shown: the model's scene, which did not pass every check"
        if _repairable(result, code, function):
            summary = (
                f"the model's derivative was wrong (it wrote {derivative_line(code)}); " + summary
            )
        else:
            summary += f": {verdict(result, code, function)}"
        say(summary)
        return Written(code, result, verified, summary=summary)

    def correct(
        self, function: str, verified: Verified, say: Say = _quiet, steps: Steps | None = None
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
            steps.doing(
                f"correcting try {attempt.attempt}: its scene with the true f'(x) = {true}, "
                "checked again"
            )
            start = time.perf_counter()
            result = self.check(repaired, function)
            say(
                f"the corrected scene of attempt {attempt.attempt} (the true f'(x) = {true}): "
                f"{marks(result)}" + (f"  {result.error}" if result.error else "")
            )
            steps.done(
                f"the corrected scene of try {attempt.attempt} (f'(x) = {true}): "
                f"{verdict(result, repaired, function)}; "
                f"checked in {time.perf_counter() - start:.1f} s"
            )
            if result.passed:
                layout = "" if result.layout is not False else "; its layout check failed"
                summary = (
                    f"the model's derivative was wrong (it wrote {wrote}); shown: the corrected "
                    f"scene with f'(x) = {true}, which passed every check{layout}; the model's "
                    "own scene is kept"
                )
                return Written(
                    repaired,
                    result,
                    verified,
                    shown=CORRECTED,
                    model_code=attempt.generation.code,
                    model_result=attempt.result,
                    summary=summary,
                )
            failed = failed or (wrote, true, verdict(result, repaired, function))
        if failed is None:
            return None
        wrote, true, why = failed
        summary = (
            f"the model's derivative was wrong (it wrote {wrote}), and the corrected scene with "
            f"f'(x) = {true} failed a check too ({why}); shown: the model's scene, which did not "
            "pass every check"
        )
        return Written(kept.generation.code, kept.result, verified, summary=summary)


def _sampled_words(verified: Verified, completing: int) -> str:
    """The header batch in words: how many of the sampled derivatives are right, what comes next."""
    said = (
        f"sampled {verified.sampled} other derivatives in {verified.header_seconds:.1f} s: "
        f"{verified.right} {'is' if verified.right == 1 else 'are'} right"
    )
    if completing == 1:
        return said + "; writing a scene from " + ("it" if verified.right == 1 else "the first")
    if completing:
        return said + f"; writing scenes from up to {completing} of them, until one passes"
    return said + (
        "; no other try"
        if not verified.right
        else "; the first try already had that header, no other try"
    )


def _attempt_line(tried: Try) -> str:
    gen, result = tried.generation, tried.result
    if result is None:
        return (
            f"attempt {tried.attempt}: abandoned after its math header, the derivative is wrong "
            f"({gen.seconds:.2f} s)"
        )
    return (
        f"attempt {tried.attempt}: {marks(result)} "
        f"({gen.seconds:.2f} s, {gen.tokens_per_second:.0f} tokens/s"
        + (f", {gen.rollbacks} lines sampled again" if gen.rollbacks else "")
        + (f", bracket guard overrode {gen.guarded} tokens" if gen.guarded else "")
        + ")"
        + (f"  {result.error}" if result.error else "")
    )
