"""Evaluation: generate a scene per function, render every one in the sandbox, check the
mathematics, and report per baseline and per curriculum level.

    python -m derivative_animator.evaluate                        # make eval (test split)
    python -m derivative_animator.evaluate eval.model=outputs/train/<run>/checkpoint/merged
    python -m derivative_animator.evaluate eval.functions_file=my_functions.txt

Baselines: `template` (the oracle: the dataset's template with the true derivative; it
must score 100%, the evaluator's own sanity check), `base` (the model before fine-tuning,
same prompt), `finetuned` (greedy, raw), `verified` (the fine-tuned model sampled again
until its scene passes every check, up to generate.attempts; reports which attempt),
`self_consistency` (the greedy scene under the math header most of generate.self_consistency.k
sampled headers agree on: `self_consistency.py`; it never consults the true derivative),
`api` (a model behind any OpenAI-compatible endpoint, eval.api: `hosted.py`; skipped with a
one-line reason where there is none).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import queue
import statistics
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from derivative_animator import paths
from derivative_animator.errors import one_line
from derivative_animator.render.checks import CHECKS, LAYOUT

BASELINES = ("template", "base", "finetuned", "self_consistency", "verified", "api")


@dataclass
class Sample:
    id: str
    function: str
    level: int
    style: str = "tangent"
    problem: str | None = None  # why this line cannot be evaluated at all (it does not parse)


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
    fields = dict(sample_id=sample.id, function=sample.function, level=sample.level, attempt=1, syntax=False, structure=None, executes=None, math=None, passed=False,
                  generation_s=0.0, new_tokens=0, tokens_per_s=0.0, render_s=None, code_path="")
    extra = {"failed": True, **known.pop("extra", {})}
    return Row(**{**fields, **known, "error": error, "extra": extra})


def _resolved(row: Row) -> Future:
    future: Future = Future()
    future.set_result(row)
    return future


def load_samples(cfg: DictConfig) -> list[Sample]:
    from derivative_animator.data import dataset, oracle
    from derivative_animator.math.parsing import ParseError, function_lines

    if cfg.eval.functions_file:
        path = paths.resolve(cfg.eval.functions_file)
        if not path.is_file():
            raise FileNotFoundError(f"eval.functions_file {path} not found")
        samples = []
        for number, text in function_lines(path):
            try:
                info = oracle.describe(text)
            except ParseError as err:  # one bad line never stops the others: it becomes a failed row
                samples.append(Sample(f"line{number:04d}", text, 0, problem=f"{path.name}:{number}: {err}"))
                continue
            samples.append(Sample(f"line{number:04d}", info["function"], info["level"]))
    else:
        samples = [Sample(r.id, r.function, r.level, r.style)
                   for r in dataset.read_split(cfg.data.dir, cfg.eval.split)]
    return samples[: cfg.eval.limit] if cfg.eval.limit else samples


def latest_checkpoint() -> Path:
    runs = sorted(paths.resolve("outputs/train").glob("*/checkpoint/merged"), key=lambda p: p.stat().st_mtime)
    runs += sorted(paths.resolve("outputs/train-multirun").glob("*/*/checkpoint/merged"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError("no trained checkpoint under outputs/train: run `make train` first, or set eval.model")
    return max(runs, key=lambda p: p.stat().st_mtime)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


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

    def __init__(self, cfg: DictConfig, run_dir: Path):
        from derivative_animator.render import checks
        from derivative_animator.render.sandbox import SandboxLimits, SandboxPool

        self.cfg, self.run_dir = cfg, run_dir
        limits = SandboxLimits(timeout_s=cfg.eval.render.timeout_s, memory_mb=cfg.eval.render.memory_mb)
        self.render = checks.RenderOptions(quality=cfg.eval.render.quality, fps=cfg.eval.render.fps,
                                           limits=limits)
        # One warm sandbox a render worker: Manim is imported once each, not once a scene.
        self.sandboxes = SandboxPool(cfg.eval.workers, limits, checks.RENDER_PRELOAD, warm=cfg.eval.render.warm,
                                     allow_unsandboxed=cfg.eval.render.unsafe_no_sandbox)
        self.queue = RenderQueue(cfg.eval.workers)
        self._checked: dict[tuple, _Job] = {}  # (function, code, render_failing) -> its check
        self._lock = threading.Lock()

    def submit(self, baseline: str, sample: Sample, code: str, attempt: int, generation,
               render_failing: bool = True) -> Future:
        stem = f"{sample.id}" + (f"-a{attempt}" if attempt > 1 else "")
        code_path = self.run_dir / "code" / baseline / f"{stem}.py"
        code_path.parent.mkdir(parents=True, exist_ok=True)
        code_path.write_text(code)
        own = {"baseline": baseline, "sample_id": sample.id, "function": sample.function, "level": sample.level,
               "attempt": attempt, "code_path": str(code_path.relative_to(self.run_dir)),
               "generation_s": round(generation.seconds, 3) if generation else 0.0,
               "new_tokens": generation.new_tokens if generation else 0,
               "tokens_per_s": round(generation.tokens_per_second, 1) if generation else 0.0}
        urgent = baseline != "template"
        with self._lock:
            key = (sample.function, code, render_failing)
            earlier = self._checked.get(key)
            if earlier is not None:
                if urgent:
                    self.queue.hurry(earlier)
                return _then(earlier.future, lambda row: Row(**{
                    **asdict(row), **own, "extra": {**row.extra, **_generation_extra(generation),
                                                    "render_shared_with": row.code_path}}))
            job = self._checked[key] = self.queue.submit(
                self._check(sample, code, stem, own, generation, render_failing),
                RenderQueue.URGENT if urgent else RenderQueue.SPARE)
        return job.future

    def _check(self, sample: Sample, code: str, stem: str, own: dict, generation, render_failing: bool):
        from derivative_animator.render import checks

        frames = self.run_dir / "frames" / own["baseline"] / stem

        def work() -> Row:
            try:
                with self.sandboxes.take() as sandbox:
                    result = checks.check_code(code, sample.function, render=self.render, output_dir=frames,
                                               render_failing=render_failing, sandbox=sandbox)
            except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
                return failed_row(sample, f"check failed: {one_line(error)}",
                                  **{**own, "extra": _generation_extra(generation)})
            frame = frames / f"{result.scene}.png" if result.scene else None
            return Row(
                **own, syntax=result.syntax, structure=result.structure, executes=result.executes,
                math=result.math, passed=result.passed, error=result.error, render_s=result.render_seconds,
                frame_path=str(frame.relative_to(self.run_dir)) if frame and frame.is_file() else None,
                layout=result.layout,
                extra={"environment_error": result.environment_error, "isolation": result.isolation,
                       "layout_problems": result.layout_problems, **_generation_extra(generation)},
            )

        return work

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, error_type, *exc) -> None:
        self.queue.shutdown(cancel_pending=error_type is not None)
        self.sandboxes.close()


def _generation_extra(generation) -> dict:
    """How a generation ended, for a row's `extra` (the oracle has no generation)."""
    return {"stop": generation.stop if generation else None,
            "rollbacks": generation.rollbacks if generation else 0,
            "guarded": generation.guarded if generation else 0}


def _then(future: Future, transform) -> Future:
    """A future for transform(future's result), without tying up a worker to wait for it."""
    chained: Future = Future()

    def done(finished: Future) -> None:
        try:
            chained.set_result(transform(finished.result()))
        except BaseException as error:  # noqa: BLE001 - handed on to whoever waits
            chained.set_exception(error)

    future.add_done_callback(done)
    return chained


def run_evaluation(cfg: DictConfig, run_dir: Path) -> dict:
    from rich.progress import Progress

    from derivative_animator.data import oracle
    from derivative_animator.model.generate import Generation, SceneGenerator

    samples = load_samples(cfg)
    baselines = list(cfg.eval.baselines)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown eval.baselines {sorted(unknown)}; choose from {list(BASELINES)}")
    model_dir = None
    if {"base", "finetuned", "self_consistency", "verified"} & set(baselines):
        model_dir = latest_checkpoint() if cfg.eval.model in (None, "latest") else paths.resolve(cfg.eval.model)
    futures: dict[str, list[Future]] = {b: [] for b in baselines}
    e, generation = cfg.eval, cfg.generate
    started = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    with Evaluator(cfg, run_dir) as evaluator, \
            _torch_threads(generation_threads(e.generation_threads, e.workers)), Progress() as progress:
        for sample in samples:  # lines that do not parse: a failed row in every baseline
            if sample.problem is not None:
                for baseline in baselines:
                    futures[baseline].append(_resolved(failed_row(sample, sample.problem, baseline=baseline)))
        usable = [sample for sample in samples if sample.problem is None]
        if "template" in baselines:
            # Spare work for the render workers until the models' scenes come (RenderQueue).
            for sample in usable:
                try:
                    code = oracle.template_scene(sample.function, sample.style)
                except oracle.CannotAnimate as error:
                    futures["template"].append(_resolved(failed_row(sample, str(error), baseline="template")))
                    continue
                futures["template"].append(evaluator.submit("template", sample, code, 1, None))
        if "base" in baselines:
            base_generator = _base_generator(model_dir, generation.bracket_guard)
            task = progress.add_task("base model (no fine-tuning)", total=len(usable))
            # One at a time with speculation: an untrained model repeats itself, so drafts from
            # its own context are accepted (8 functions: 9 s vs 42 s as one batch of 8, same text).
            for sample in usable:
                futures["base"].append(_generate_and_submit(evaluator, base_generator, "base", sample, 1,
                                                            lambda g, s=sample: g.generate(s.function, generation.max_new_tokens)))
                progress.advance(task)
            del base_generator
            timings["base_generation_s"] = round(time.perf_counter() - started, 1)
        generator = SceneGenerator.load(model_dir, allow_prompt_mismatch=e.allow_prompt_mismatch,
                                        bracket_guard=generation.bracket_guard) if model_dir else None
        raw: dict[str, tuple[Generation, Future]] = {}
        if {"finetuned", "self_consistency", "verified"} & set(baselines):
            finetuned_start = time.perf_counter()
            task = progress.add_task("fine-tuned model", total=len(usable) * e.samples_per_function)
            for sample in usable:
                for k in range(e.samples_per_function):
                    temperature = generation.temperature if k == 0 else generation.sample_temperature

                    def sample_scene(g, s=sample, t=temperature, k=k):
                        return g.generate(s.function, generation.max_new_tokens, t, generation.top_p, seed=generation.seed + k)

                    future = _generate_and_submit(evaluator, generator, "finetuned", sample, k + 1, sample_scene, raw)
                    futures.setdefault("finetuned", []).append(future)
                    progress.advance(task)
            timings["finetuned_generation_s"] = round(time.perf_counter() - finetuned_start, 1)
        if "self_consistency" in baselines:
            task = progress.add_task("self-consistency votes", total=len(usable))
            for sample in usable:
                futures["self_consistency"].append(_self_consistent_and_submit(evaluator, generator, sample, raw, generation))
                progress.advance(task)
        # Retries wait on renders, so they run on their own thread, not the render pool's; one,
        # like generation: more would take the render workers' cores.
        retry_pool = ThreadPoolExecutor(max_workers=1)
        if "verified" in baselines:
            for sample in usable:
                if sample.id in raw:
                    futures["verified"].append(retry_pool.submit(_verify_safely, evaluator, generator, sample,
                                                                 raw[sample.id], generation))
                else:
                    futures["verified"].append(_resolved(failed_row(sample, "its first try failed", baseline="verified")))
        if "api" in baselines:
            skipped = _api_baseline(evaluator, usable, e.api, generation, futures["api"], progress)
            if skipped:
                notes.append(f"api baseline skipped: {skipped}")
                print(f"warning: {notes[-1]}", file=sys.stderr)
        task = progress.add_task("rendering and checking", total=sum(len(v) for v in futures.values()))
        rows: list[Row] = []
        for baseline in baselines:
            for future in futures[baseline]:
                rows.append(future.result())
                progress.advance(task)
        retry_pool.shutdown()
    # Renders overlap generation: only the total is the wall time a user waits.
    timings["total_s"] = round(time.perf_counter() - started, 1)
    if "finetuned" not in baselines:
        rows = [r for r in rows if r.baseline != "finetuned"]
    source = paths.resolve(cfg.eval.functions_file) if cfg.eval.functions_file else paths.resolve(cfg.data.dir) / f"{cfg.eval.split}.jsonl"
    return {"model": str(model_dir) if model_dir else None, "samples": len(samples), "functions_source": str(source),
            "notes": notes,
            "rows": [asdict(r) for r in rows], "summary": summarize(rows, e.samples_per_function),
            "timings": timings}


@contextmanager
def _torch_threads(count: int):
    """torch's thread count is process-wide: set it for the evaluation, then give it back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generation_threads(setting, render_workers: int) -> int:
    """Torch threads for generation while renders run beside it. `auto`: the cores the
    render workers leave free, at least one. Oversubscribed cores are ruinous: on 2 cores
    next to a busy process, 5 scenes took 289 s with 2 threads and 14 s with 1 (measured)."""
    if setting in (None, "auto"):
        return max(1, (os.cpu_count() or 1) - int(render_workers))
    if int(setting) < 1:
        raise ValueError(f"eval.generation_threads must be auto or a positive number, got {setting}")
    return int(setting)


def _base_generator(model_dir: Path, bracket_guard: bool):
    """The checkpoint's own base model (before fine-tuning), queried with the same prompt."""
    from derivative_animator.data.prompt import PromptFormat
    from derivative_animator.model.finetune import load_base
    from derivative_animator.model.generate import SceneGenerator

    trained = json.loads((model_dir / "derivanim_config.json").read_text())
    tokenizer, model = load_base(OmegaConf.create(trained["model"]))
    return SceneGenerator(model, tokenizer, PromptFormat.load(model_dir), None, model_dir,
                          bracket_guard=bracket_guard)


def _generate_and_submit(evaluator: Evaluator, generator, baseline: str, sample: Sample, attempt: int,
                         write, raw: dict | None = None) -> Future:
    """Generate one scene (`write(generator)`) and queue its check; a generation that fails
    unexpectedly is a failed row of its own, and the evaluation goes on."""
    from derivative_animator.errors import one_line

    try:
        gen = write(generator)
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return _resolved(failed_row(sample, f"generation failed: {one_line(error)}", baseline=baseline,
                                    attempt=attempt))
    future = evaluator.submit(baseline, sample, gen.code, attempt, gen)
    if raw is not None and attempt == 1:
        raw[sample.id] = (gen, future)
    return future


def _api_baseline(evaluator: Evaluator, samples: list[Sample], api, generation, futures: list,
                  progress) -> str | None:
    """The `api` rows: one chat request per function, `api.concurrency` at a time, each
    reply checked like any scene. Returns why the baseline was skipped, or None."""
    from derivative_animator.errors import one_line
    from derivative_animator.model import hosted

    try:
        client = hosted.connect(api)
    except hosted.Unavailable as reason:
        return str(reason)
    task = progress.add_task(f"api model {api.model}", total=len(samples))

    def ask(sample: Sample) -> Future:
        try:
            reply = hosted.write_scene(client, api, sample.function, generation.max_new_tokens, generation.temperature,
                                      generation.seed)
        except Exception as error:  # noqa: BLE001 - a failed request is its row; the rest go on
            return _resolved(failed_row(sample, f"api request failed: {one_line(error)}", baseline="api"))
        finally:
            progress.advance(task)
        extra = {"prompt_tokens": reply.prompt_tokens, "latency_s": round(reply.seconds, 3)}
        return _then(evaluator.submit("api", sample, reply.code, 1, reply),
                     lambda row: Row(**{**asdict(row), "extra": {**row.extra, **extra}}))

    with ThreadPoolExecutor(max_workers=api.concurrency) as pool:
        futures.extend(future.result() for future in [pool.submit(ask, sample) for sample in samples])
    return None


def _self_consistent_and_submit(evaluator: Evaluator, generator, sample: Sample, raw: dict, generation) -> Future:
    """The self-consistency row of a sample: the greedy scene under the voted header."""
    from dataclasses import replace

    from derivative_animator.errors import one_line
    from derivative_animator.model.self_consistency import self_consistent_scene

    if sample.id not in raw:
        return _resolved(failed_row(sample, "its greedy scene failed", baseline="self_consistency"))
    greedy = raw[sample.id][0]
    try:
        code, vote = self_consistent_scene(generator, sample.function, greedy.code, generation.self_consistency.k,
                                           generation.self_consistency.temperature, generation.top_p,
                                           generation.seed + 1000)
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return _resolved(failed_row(sample, f"self-consistency failed: {one_line(error)}", baseline="self_consistency"))
    generation = replace(greedy, code=code, seconds=greedy.seconds + vote.seconds)
    votes = {"chosen_header": vote.chosen, "agreeing": vote.group_size, "voters": vote.voters}
    return _then(evaluator.submit("self_consistency", sample, code, 1, generation),
                 lambda row: Row(**{**asdict(row), "extra": {**row.extra, "vote": votes}}))


def _verify_safely(evaluator: Evaluator, generator, sample: Sample, first, generation) -> Row:
    from derivative_animator.errors import one_line

    try:
        return _verify(evaluator, generator, sample, first, generation)
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return failed_row(sample, f"verification failed: {one_line(error)}", baseline="verified")


def _verify(evaluator: Evaluator, generator, sample: Sample, first, generation) -> Row:
    """`verify.best_of_n`: attempt 1 is the raw greedy scene (already written and checked);
    later attempts sample. A retry stops as soon as its math header is written wrong, and
    retries whose math is wrong are not rendered (executes None): they cannot pass."""
    from derivative_animator.eval.verify import best_of_n
    from derivative_animator.math.judge import header_judge

    accept_header = header_judge(sample.function)
    greedy, greedy_row = first

    def write(attempt: int):
        if attempt == 1:
            return greedy
        return generator.generate(sample.function, generation.max_new_tokens, generation.sample_temperature,
                                  generation.top_p, seed=generation.seed + 100 + attempt,
                                  syntax_rollbacks=generation.syntax_rollbacks,
                                  accept_header=accept_header)

    def check(attempt: int, gen) -> Row:
        if attempt == 1:
            return greedy_row.result()
        return evaluator.submit("verified", sample, gen.code, attempt, gen, render_failing=False).result()

    verification = best_of_n(write, check, generation.attempts)
    return Row(**{**asdict(verification.kept.result), "baseline": "verified",
                  "attempts_tried": len(verification.tries), "generation_s": round(verification.seconds, 3)})


def _rate(rows: list[Row], key: str) -> float:
    return round(100 * sum(bool(getattr(r, key)) for r in rows) / len(rows), 1) if rows else 0.0


def summarize(rows: list[Row], n: int) -> dict:
    summary = {}
    for baseline in dict.fromkeys(r.baseline for r in rows):
        mine = [r for r in rows if r.baseline == baseline]
        firsts = [r for r in mine if r.attempt == 1 or baseline == "verified"]
        groups = {"all": firsts, **{f"level{lv}": [r for r in firsts if r.level == lv]
                                    for lv in sorted({r.level for r in firsts})}}
        summary[baseline] = {}
        for name, group in groups.items():
            if not group:
                continue
            times = [r.generation_s for r in group]
            entry = {"n": len(group), **{k: _rate(group, k) for k in (*CHECKS, "passed", LAYOUT)},
                     "generation_s_median": round(statistics.median(times), 3),
                     "generation_s_mean": round(statistics.mean(times), 3),
                     "tokens_per_s_median": round(statistics.median([r.tokens_per_s for r in group]), 1),
                     "environment_errors": sum(r.extra.get("environment_error", False) for r in group)}
            if baseline == "verified":
                entry["attempts_mean"] = round(statistics.mean(r.attempts_tried for r in group), 2)
            summary[baseline][name] = entry
        if baseline == "finetuned" and n > 1:
            per_function: dict[str, list[Row]] = {}
            for r in mine:
                per_function.setdefault(r.sample_id, []).append(r)
            for k in sorted({1, min(5, n), n}):
                values = [pass_at_k(len(v), sum(r.passed for r in v), k) for v in per_function.values()]
                summary[baseline]["all"][f"pass@{k}"] = round(100 * statistics.mean(values), 1)
    return summary


def log_to_mlflow(results: dict, run_dir: Path) -> str | None:
    """An evaluation is an MLflow run of its own, a child of the evaluated checkpoint's
    training run (`mlflow.parentRunId`): its metrics (eval/<baseline>/<metric>), the
    functions it evaluated as a dataset input, every row as an MLflow table, the reports and
    gallery as artifacts. The headline metrics also go to the training run, where runs are
    compared. Returns the evaluation run's id (None when the checkpoint has no run)."""
    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag, Metric

    from derivative_animator import tracking

    if not results["model"]:
        return None
    info_path = Path(results["model"]) / "run_info.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    client = mlflow.MlflowClient(tracking_uri=info["tracking_uri"])
    run_id = info["mlflow_run_id"]
    metrics = {f"eval/time/{name}": seconds for name, seconds in results.get("timings", {}).items()}
    for baseline, groups in results["summary"].items():
        for group, values in groups.items():
            for metric, value in values.items():
                if isinstance(value, (int, float)):
                    suffix = "" if group == "all" else f"/{group}"
                    metrics[f"eval/{baseline}/{metric.replace('@', '_at_')}{suffix}"] = float(value)
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, 0) for key, value in metrics.items()]
    # One call: each single log_metric is a sqlite transaction (~9 ms; 200 of them here).
    client.log_batch(run_id, metrics=batch)
    training = client.get_run(run_id)
    tracking.mark_experiment(client, training.info.experiment_id)
    evaluation = client.create_run(training.info.experiment_id, run_name=f"eval-{run_dir.name}", tags={
        "mlflow.parentRunId": run_id, "stage": "evaluation", "evaluated_run": run_id,
        "model": training.data.tags.get("model", "")}).info.run_id
    client.log_batch(evaluation, metrics=batch,
                     params=[mlflow.entities.Param("model", str(results["model"]))])
    rows = results.get("rows", [])
    if rows:
        functions = pd.DataFrame([{"sample_id": r["sample_id"], "function": r["function"], "level": r["level"]}
                                  for r in rows]).drop_duplicates("sample_id")
        source = results.get("functions_source") or str(run_dir)
        dataset = mlflow.data.from_pandas(functions, source=source, name=f"eval-{Path(source).stem}")
        client.log_inputs(evaluation, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                             tags=[InputTag("mlflow.data.context", "evaluation")])])
        table = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows])
        client.log_table(evaluation, data=table, artifact_file="rows.json")
    client.log_artifacts(evaluation, str(run_dir / "report"), artifact_path="report")
    client.set_terminated(evaluation, "FINISHED")
    return evaluation


def main(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig
    from rich.console import Console

    from derivative_animator.eval import report

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_evaluation(cfg, run_dir)
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    report_dir = report.write_reports(results, run_dir)
    run_id = log_to_mlflow(results, run_dir) if cfg.eval.log_to_mlflow else None
    console = Console()
    console.print(report.markdown_table(results["summary"]))
    timings = results["timings"]
    phases = ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if k != "total_s")
    console.print(f"\n{results['samples']} functions x {len(cfg.eval.baselines)} baselines in "
                  f"{timings['total_s']:.0f} s" + (f" ({phases})" if phases else ""))
    console.print(f"reports: {report_dir}\ngallery: {report_dir / 'gallery.html'}")
    if run_id:
        console.print(f"MLflow: run {run_id}; browse with `make ui` (http://127.0.0.1:5000)")
    failed = [row for row in results["rows"] if row["extra"].get("failed")]
    if failed:
        print(f"error: {len(failed)} of {len(results['rows'])} rows could not be evaluated (the first: "
              f"{failed[0]['function']!r}: {failed[0]['error']}); each row's error is in results.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "eval"))
