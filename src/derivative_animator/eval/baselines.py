"""The evaluation's baselines, each one class here and one entry of `BASELINES`, keyed by the names
conf/eval lists (`eval.baselines=[...]`): its label in the reports, what it needs (a checkpoint;
the fine-tuned model's first scenes), whether its renders go before the oracle's spare ones, and
how it fills its rows: generate (or ask the API, or vote on headers, or complete sampled headers
until the checks pass: `service.GenerationService`, as the CLI and the page do) and hand every
scene to the evaluator. The evaluator runs the requested ones and nothing else, in the order of
`BASELINES`. A sample whose generation fails unexpectedly is a failed row of its own; the
evaluation goes on. Adding a baseline: a class here, its entry in `BASELINES`, and conf/eval."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from derivative_animator.errors import one_line
from derivative_animator.eval.engine import Evaluator, Row, Sample, failed_row, resolved, then
from derivative_animator.eval.service import GenerationService
from derivative_animator.eval.settings import EvaluationSettings
from derivative_animator.model.settings import GenerationSettings


class Run:
    """One evaluation as its baselines share it: the evaluator (renders and checks), the settings,
    the checkpoint, the progress bars, timings and notes; and the fine-tuned model and its first
    scenes, loaded and written once, for whichever baseline asks first."""

    def __init__(
        self,
        evaluator: Evaluator,
        settings: EvaluationSettings,
        generation: GenerationSettings,
        model_dir: Path | None,
        progress,
        started: float,
    ):
        self.evaluator, self.settings, self.generation = evaluator, settings, generation
        self.model_dir, self.progress, self.started = model_dir, progress, started
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self._service: GenerationService | None = None
        self._scenes: list[Future] = []
        self._scenes_per_sample = 0
        self.first: dict[str, tuple] = {}  # sample id -> (its first Generation, its row's future)

    @property
    def service(self) -> GenerationService:
        """The fine-tuned checkpoint under the evaluation's generation settings, loaded on first
        use; its checks run on the evaluator's own sandboxes."""
        if self._service is None:
            from derivative_animator.model.generate import SceneGenerator

            generator = SceneGenerator.load(
                self.model_dir,
                allow_prompt_mismatch=self.settings.allow_prompt_mismatch,
                bracket_guard=self.generation.bracket_guard,
                shared_code=self.generation.shared_code,
                copy_function=self.generation.copy_function,
                choose_interval=self.generation.choose_interval,
            )
            self._service = GenerationService(self.generation, generator)
        return self._service

    def style_of(self, sample: Sample) -> str | None:
        """The style the model is asked for (eval.ask_styles), None: its own choice."""
        return sample.style if self.settings.ask_styles else None

    def scenes(self, samples: list[Sample], count: int = 1) -> list[Future]:
        """The fine-tuned model's `count` scenes of each sample, each checked as a `finetuned` row:
        the first (greedy) one, which self-consistency votes over and verification starts from
        (kept in `first`), then samples for pass@k. Written once, by the first baseline to ask
        (in `BASELINES`' order, `finetuned` asks for the most)."""
        if self._scenes_per_sample:
            if count > self._scenes_per_sample:
                raise RuntimeError(
                    f"{count} fine-tuned scenes a function asked after "
                    f"{self._scenes_per_sample} were written"
                )
            return self._scenes
        start, self._scenes_per_sample = time.perf_counter(), count
        service = self.service  # loaded here: a checkpoint that cannot load stops the evaluation
        task = self.progress.add_task("fine-tuned model", total=len(samples) * count)
        for sample in samples:
            for k in range(count):

                def sample_scene(s=sample, k=k):
                    return service.scene(s.function, k, self.style_of(s))

                generation, future = FINETUNED.generate_and_submit(
                    self, sample, k + 1, sample_scene
                )
                self._scenes.append(future)
                if k == 0 and generation is not None:
                    self.first[sample.id] = (generation, future)
                self.progress.advance(task)
        self.timings["finetuned_generation_s"] = round(time.perf_counter() - start, 1)
        return self._scenes


class Baseline:
    """One baseline: `rows(run, samples)` writes its scenes and hands each to the evaluator,
    returning a future row per scene, in order."""

    name: str  # as conf/eval names it, and each row's `baseline`
    label: str  # in the reports' tables and the gallery
    needs_model = True  # a checkpoint: eval.model, or the newest trained one
    urgent = True  # renders before the oracle's (spare) ones: a model's checks are waited on

    def rows(self, run: Run, samples: list[Sample]) -> list[Future]:
        raise NotImplementedError

    def submit(
        self,
        run: Run,
        sample: Sample,
        code: str,
        attempt: int,
        generation,
        render_failing: bool = True,
    ) -> Future:
        """Write a scene of this baseline to disk and queue its check."""
        return run.evaluator.submit(
            self.name, sample, code, attempt, generation, render_failing, urgent=self.urgent
        )

    def generate_and_submit(
        self, run: Run, sample: Sample, attempt: int, write
    ) -> tuple[object, Future]:
        """Generate one scene (`write()`) and queue its check: (the generation, its row's future).
        A generation that fails unexpectedly is a failed row of its own (and None), and the
        evaluation goes on."""
        try:
            generation = write()
        except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
            return None, resolved(
                failed_row(
                    sample,
                    f"generation failed: {one_line(error)}",
                    baseline=self.name,
                    attempt=attempt,
                )
            )
        return generation, self.submit(run, sample, generation.code, attempt, generation)

    def failed(self, sample: Sample, error: str) -> Future:
        return resolved(failed_row(sample, error, baseline=self.name))


class Template(Baseline):
    """The oracle: the dataset's template with the true derivative. It must score 100%: the
    evaluator's own sanity check. Its renders depend on no model: spare work for the render
    workers until the models' scenes come (engine.RenderQueue)."""

    name, label = "template", "Template oracle"
    needs_model = urgent = False

    def rows(self, run: Run, samples: list[Sample]) -> list[Future]:
        from derivative_animator.data import oracle

        futures = []
        for sample in samples:
            try:
                code = oracle.template_scene(sample.function, sample.style)
            except oracle.CannotAnimate as error:
                futures.append(self.failed(sample, str(error)))
                continue
            futures.append(self.submit(run, sample, code, 1, None))
        return futures


class Base(Baseline):
    """The checkpoint's own base model (before fine-tuning), queried with the same prompt."""

    name, label = "base", "Base model (no fine-tuning)"

    def rows(self, run: Run, samples: list[Sample]) -> list[Future]:
        generator = base_generator(run.model_dir, run.generation)
        task = run.progress.add_task("base model (no fine-tuning)", total=len(samples))
        # One at a time with speculation: an untrained model repeats itself, so drafts from
        # its own context are accepted (8 functions: 9 s vs 42 s as one batch of 8, same text).
        futures = []
        for sample in samples:
            futures.append(
                self.generate_and_submit(
                    run,
                    sample,
                    1,
                    lambda s=sample: generator.generate(s.function, run.generation.max_new_tokens),
                )[1]
            )
            run.progress.advance(task)
        run.timings["base_generation_s"] = round(time.perf_counter() - run.started, 1)
        return futures


def base_generator(model_dir: Path, generation: GenerationSettings | None = None):
    """The checkpoint's base model, as its saved config names it, with the checkpoint's prompt
    format and the evaluation's decoding (None: SceneGenerator's defaults, as header math's).
    A directory that is a base itself (a pretraining stage: config.json, no training config) is
    loaded as it is, in its saved dtype, with the prompt format fine-tuning would give it."""
    from derivative_animator.data.prompt import DEFAULT_FORMAT, PromptFormat
    from derivative_animator.model.checkpoint_files import TRAINED_CONFIG, is_bare_base
    from derivative_animator.model.finetune import load_base
    from derivative_animator.model.generate import SceneGenerator
    from derivative_animator.model.settings import ModelSettings

    if is_bare_base(model_dir):
        saved_dtype = json.loads((model_dir / "config.json").read_text()).get("dtype") or "float32"
        settings = ModelSettings(str(model_dir), saved_dtype, gradient_checkpointing=False)
        prompt_format = DEFAULT_FORMAT
    elif (model_dir / TRAINED_CONFIG).is_file():
        trained = json.loads((model_dir / TRAINED_CONFIG).read_text())
        settings = ModelSettings.from_config(trained["model"])
        prompt_format = PromptFormat.load(model_dir)
    else:
        raise ValueError(
            f"{model_dir} carries no {TRAINED_CONFIG}: its base model is unknown; pass a training "
            "run's checkpoint/merged, or a base model's own directory"
        )
    tokenizer, model = load_base(settings)
    decoding = (
        {}
        if generation is None
        else {
            "bracket_guard": generation.bracket_guard,
            "shared_code": generation.shared_code,
            "copy_function": generation.copy_function,
            "choose_interval": generation.choose_interval,
        }
    )
    return SceneGenerator(model, tokenizer, prompt_format, None, model_dir, **decoding)


class FineTuned(Baseline):
    """The fine-tuned model's greedy scene, raw; with eval.samples_per_function > 1, more samples
    at generate.sample_temperature, reported as pass@k."""

    name, label = "finetuned", "Fine-tuned (raw)"

    def rows(self, run: Run, samples: list[Sample]) -> list[Future]:
        return run.scenes(samples, run.settings.samples_per_function)


class SelfConsistency(Baseline):
    """The greedy scene under the math header most of generate.self_consistency.k sampled headers
    agree on (`model/self_consistency.py`); it never consults the true derivative."""

    name, label = "self_consistency", "Fine-tuned + self-consistency (no oracle)"

    def rows(self, run: Run, samples: list[Sample]) -> list[Future]:
        run.scenes(samples)
        task = run.progress.add_task("self-consistency votes", total=len(samples))
        futures = []
        for sample in samples:
            futures.append(self.vote_and_submit(run, sample))
            run.progress.advance(task)
        return futures

    def vote_and_submit(self, run: Run, sample: Sample) -> Future:
        if sample.id not in run.first:
            return self.failed(sample, "its greedy scene failed")
        try:
            generation, vote = run.service.self_consistent(sample.function, run.first[sample.id][0])
        except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
            return self.failed(sample, f"self-consistency failed: {one_line(error)}")
        votes = {"chosen_header": vote.chosen, "agreeing": vote.group_size, "voters": vote.voters}
        return then(
            self.submit(run, sample, generation.code, 1, generation),
            lambda row: Row(**{**asdict(row), "extra": {**row.extra, "vote": votes}}),
        )


class Verified(Baseline):
    """When the greedy scene fails, the sampled math headers the math judge accepts, completed into
    scenes until one passes every check, at most generate.attempts - 1 (`eval/service.py`, as
    `derivanim generate`); reports which attempt."""

    name, label = "verified", "Fine-tuned + verification"

    def rows(self, run: Run, samples: list[Sample]) -> list[Future]:
        run.scenes(samples)
        # Verification waits on renders, so it runs on its own thread, not the render pool's; one,
        # like generation: more would take the render workers' cores. Its queued work still runs.
        pool = ThreadPoolExecutor(max_workers=1)
        futures = [
            pool.submit(self.verify_safely, run, sample)
            if sample.id in run.first
            else self.failed(sample, "its first try failed")
            for sample in samples
        ]
        pool.shutdown(wait=False)
        return futures

    def verify_safely(self, run: Run, sample: Sample) -> Row:
        try:
            return self.verify(run, sample)
        except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
            return failed_row(sample, f"verification failed: {one_line(error)}", baseline=self.name)

    def verify(self, run: Run, sample: Sample) -> Row:
        """`GenerationService.verify`, as `derivanim generate` verifies: attempt 1 is the raw
        greedy scene (already written and checked); then the sampled headers the math judge
        accepts, completed. A completion whose math is wrong is not rendered (executes None): it
        cannot pass."""
        greedy, greedy_row = run.first[sample.id]

        def check(attempt: int, generation) -> Row:
            if attempt == 1:
                return greedy_row.result()
            return self.submit(
                run, sample, generation.code, attempt, generation, render_failing=False
            ).result()

        verified = run.service.verify(sample.function, greedy, check, style=run.style_of(sample))
        headers = {
            "sampled": verified.sampled,
            "right": verified.right,
            "completed": verified.completed,
        }
        kept = verified.kept.result
        return Row(
            **{
                **asdict(kept),
                "baseline": self.name,
                "attempts_tried": len(verified.verification.tries),
                "generation_s": round(verified.seconds, 3),
                "extra": {**kept.extra, "headers": headers},
            }
        )


class Api(Baseline):
    """A model behind any OpenAI-compatible endpoint (eval.api: `model/hosted.py`): one chat request
    per function, `api.concurrency` at a time, each reply checked like any scene. Skipped, with a
    one-line note, where there is no endpoint."""

    name = label = "api"
    needs_model = False

    def rows(self, run: Run, samples: list[Sample]) -> list[Future]:
        from derivative_animator.model import hosted

        api = run.settings.api
        try:
            client = hosted.connect(api)
        except hosted.Unavailable as reason:
            run.notes.append(f"api baseline skipped: {reason}")
            print(f"warning: {run.notes[-1]}", file=sys.stderr)
            return []
        task = run.progress.add_task(f"api model {api.model}", total=len(samples))
        first = run.generation.scene_sampling(0)

        def ask(sample: Sample) -> Future:
            try:
                reply = hosted.write_scene(
                    client,
                    api,
                    sample.function,
                    run.generation.max_new_tokens,
                    first.temperature,
                    first.seed,
                )
            except Exception as error:  # noqa: BLE001 - a failed request is its row; the rest go on
                return self.failed(sample, f"api request failed: {one_line(error)}")
            finally:
                run.progress.advance(task)
            extra = {"prompt_tokens": reply.prompt_tokens, "latency_s": round(reply.seconds, 3)}
            return then(
                self.submit(run, sample, reply.code, 1, reply),
                lambda row: Row(**{**asdict(row), "extra": {**row.extra, **extra}}),
            )

        with ThreadPoolExecutor(max_workers=api.concurrency) as pool:
            return [future.result() for future in [pool.submit(ask, sample) for sample in samples]]


FINETUNED = FineTuned()
# The registry, in the order the baselines run: the oracle's renders queued first (spare work),
# the base model before the fine-tuned one is loaded, the fine-tuned scenes before the baselines
# built on them.
BASELINES: dict[str, Baseline] = {
    b.name: b for b in (Template(), Base(), FINETUNED, SelfConsistency(), Verified(), Api())
}


def requested(names: Iterable[str]) -> list[Baseline]:
    """The baselines named (eval.baselines), in the order named; an unknown name is an error."""
    names = list(names)
    unknown = set(names) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown eval.baselines {sorted(unknown)}; choose from {list(BASELINES)}")
    return [BASELINES[name] for name in names]
