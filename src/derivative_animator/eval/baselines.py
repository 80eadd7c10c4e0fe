"""How each model baseline fills its rows: generate (or ask the API, or vote on headers, or
retry until the checks pass) and hand every scene to the evaluator. A sample whose generation
fails unexpectedly is a failed row of its own; the evaluation goes on."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from derivative_animator.errors import one_line
from derivative_animator.eval.engine import Evaluator, Row, Sample, failed_row, resolved, then


def base_generator(model_dir: Path, bracket_guard: bool):
    """The checkpoint's own base model (before fine-tuning), queried with the same prompt."""
    from derivative_animator.data.prompt import PromptFormat
    from derivative_animator.model.finetune import load_base
    from derivative_animator.model.generate import SceneGenerator

    trained = json.loads((model_dir / "derivanim_config.json").read_text())
    tokenizer, model = load_base(OmegaConf.create(trained["model"]))
    return SceneGenerator(model, tokenizer, PromptFormat.load(model_dir), None, model_dir,
                          bracket_guard=bracket_guard)


def generate_and_submit(evaluator: Evaluator, generator, baseline: str, sample: Sample, attempt: int,
                        write, raw: dict | None = None) -> Future:
    """Generate one scene (`write(generator)`) and queue its check; a generation that fails
    unexpectedly is a failed row of its own, and the evaluation goes on."""
    try:
        gen = write(generator)
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return resolved(failed_row(sample, f"generation failed: {one_line(error)}", baseline=baseline,
                                   attempt=attempt))
    future = evaluator.submit(baseline, sample, gen.code, attempt, gen)
    if raw is not None and attempt == 1:
        raw[sample.id] = (gen, future)
    return future


def api_rows(evaluator: Evaluator, samples: list[Sample], api, generation, futures: list,
                  progress) -> str | None:
    """The `api` rows: one chat request per function, `api.concurrency` at a time, each
    reply checked like any scene. Returns why the baseline was skipped, or None."""
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
            return resolved(failed_row(sample, f"api request failed: {one_line(error)}", baseline="api"))
        finally:
            progress.advance(task)
        extra = {"prompt_tokens": reply.prompt_tokens, "latency_s": round(reply.seconds, 3)}
        return then(evaluator.submit("api", sample, reply.code, 1, reply),
                     lambda row: Row(**{**asdict(row), "extra": {**row.extra, **extra}}))

    with ThreadPoolExecutor(max_workers=api.concurrency) as pool:
        futures.extend(future.result() for future in [pool.submit(ask, sample) for sample in samples])
    return None


def self_consistent_and_submit(evaluator: Evaluator, generator, sample: Sample, raw: dict, generation) -> Future:
    """The self-consistency row of a sample: the greedy scene under the voted header."""
    from dataclasses import replace

    from derivative_animator.model.self_consistency import self_consistent_scene

    if sample.id not in raw:
        return resolved(failed_row(sample, "its greedy scene failed", baseline="self_consistency"))
    greedy = raw[sample.id][0]
    try:
        code, vote = self_consistent_scene(generator, sample.function, greedy.code, generation.self_consistency.k,
                                           generation.self_consistency.temperature, generation.top_p,
                                           generation.seed + 1000)
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return resolved(failed_row(sample, f"self-consistency failed: {one_line(error)}", baseline="self_consistency"))
    generation = replace(greedy, code=code, seconds=greedy.seconds + vote.seconds)
    votes = {"chosen_header": vote.chosen, "agreeing": vote.group_size, "voters": vote.voters}
    return then(evaluator.submit("self_consistency", sample, code, 1, generation),
                 lambda row: Row(**{**asdict(row), "extra": {**row.extra, "vote": votes}}))


def verify_safely(evaluator: Evaluator, generator, sample: Sample, first, generation) -> Row:

    try:
        return verify(evaluator, generator, sample, first, generation)
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return failed_row(sample, f"verification failed: {one_line(error)}", baseline="verified")


def verify(evaluator: Evaluator, generator, sample: Sample, first, generation) -> Row:
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
