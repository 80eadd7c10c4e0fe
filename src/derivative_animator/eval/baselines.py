"""How each model baseline fills its rows: generate (or ask the API, or vote on headers, or
complete sampled headers until the checks pass: `service.GenerationService`, as the CLI and
the page do) and hand every scene to the evaluator. A sample whose generation fails
unexpectedly is a failed row of its own; the evaluation goes on."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from derivative_animator.errors import one_line
from derivative_animator.eval.engine import Evaluator, Row, Sample, failed_row, resolved, then
from derivative_animator.eval.service import GenerationService
from derivative_animator.model.settings import GenerationSettings


def base_generator(model_dir: Path, bracket_guard: bool):
    """The checkpoint's own base model (before fine-tuning), queried with the same prompt."""
    from derivative_animator.data.prompt import PromptFormat
    from derivative_animator.model.checkpoint_files import TRAINED_CONFIG
    from derivative_animator.model.finetune import load_base
    from derivative_animator.model.generate import SceneGenerator

    trained = json.loads((model_dir / TRAINED_CONFIG).read_text())
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


def api_rows(evaluator: Evaluator, samples: list[Sample], api, generation: GenerationSettings, futures: list,
             progress) -> str | None:
    """The `api` rows: one chat request per function, `api.concurrency` at a time, each
    reply checked like any scene. Returns why the baseline was skipped, or None."""
    from derivative_animator.model import hosted

    try:
        client = hosted.connect(api)
    except hosted.Unavailable as reason:
        return str(reason)
    task = progress.add_task(f"api model {api.model}", total=len(samples))
    first = generation.scene_sampling(0)

    def ask(sample: Sample) -> Future:
        try:
            reply = hosted.write_scene(client, api, sample.function, generation.max_new_tokens, first.temperature,
                                       first.seed)
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


def self_consistent_and_submit(evaluator: Evaluator, service: GenerationService, sample: Sample, raw: dict) -> Future:
    """The self-consistency row of a sample: the greedy scene under the voted header."""
    if sample.id not in raw:
        return resolved(failed_row(sample, "its greedy scene failed", baseline="self_consistency"))
    try:
        generation, vote = service.self_consistent(sample.function, raw[sample.id][0])
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return resolved(failed_row(sample, f"self-consistency failed: {one_line(error)}", baseline="self_consistency"))
    votes = {"chosen_header": vote.chosen, "agreeing": vote.group_size, "voters": vote.voters}
    return then(evaluator.submit("self_consistency", sample, generation.code, 1, generation),
                lambda row: Row(**{**asdict(row), "extra": {**row.extra, "vote": votes}}))


def verify_safely(evaluator: Evaluator, service: GenerationService, sample: Sample, first) -> Row:
    try:
        return verify(evaluator, service, sample, first)
    except Exception as error:  # noqa: BLE001 - one sample's failure is its own row
        return failed_row(sample, f"verification failed: {one_line(error)}", baseline="verified")


def verify(evaluator: Evaluator, service: GenerationService, sample: Sample, first) -> Row:
    """`GenerationService.verify`, as `derivanim generate` verifies: attempt 1 is the raw greedy
    scene (already written and checked); then the sampled headers the math judge accepts,
    completed. A completion whose math is wrong is not rendered (executes None): it cannot pass."""
    greedy, greedy_row = first

    def check(attempt: int, generation) -> Row:
        if attempt == 1:
            return greedy_row.result()
        return evaluator.submit("verified", sample, generation.code, attempt, generation,
                                render_failing=False).result()

    verified = service.verify(sample.function, greedy, check)
    headers = {"sampled": verified.sampled, "right": verified.right, "completed": verified.completed}
    kept = verified.kept.result
    return Row(**{**asdict(kept), "baseline": "verified", "attempts_tried": len(verified.verification.tries),
                  "generation_s": round(verified.seconds, 3), "extra": {**kept.extra, "headers": headers}})
