"""A model behind an OpenAI-compatible endpoint as a baseline: Gemini, OpenAI, vLLM, or
`derivanim serve`. The original project compared its fine-tuned model with Gemini.

The instruction goes as a chat message (`prompt.instruction`), after a system message
saying what a scene must hold to be checked (hosted models do not know our conventions;
`derivanim serve` ignores it and applies the checkpoint's own prompt format). The `openai`
client does the timeouts and the retries with exponential backoff; a pool of
`concurrency` threads bounds the requests in flight. Without a configured endpoint, a key,
or a reachable server, the baseline is skipped with a one-line reason.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from derivative_animator.model.settings import ApiSettings

SYSTEM_PROMPT = (
    "You write one complete Manim Community (v0.19+) Python scene that explains the derivative "
    "of the given function. Start the file with a docstring of exactly two lines, "
    "'f(x) = <the function>' and \"f'(x) = <its derivative>\", both in plain typed math "
    "(x^2, sin(x), e^x, ln(x)); plot f and f' with Axes.plot. Reply with the code only."
)
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


class Unavailable(RuntimeError):
    """The endpoint cannot be used here: the baseline is skipped, with this reason."""


@dataclass
class Reply:
    """What one request gave: the scene's code and its cost (the evaluator's Generation fields)."""

    function: str
    code: str
    seconds: float
    new_tokens: int
    prompt_tokens: int
    stop: str
    forward_passes: int = 0
    rollbacks: int = 0
    guarded: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def connect(settings: ApiSettings):
    """An OpenAI client for `settings` (eval.api), after one cheap request that proves the
    endpoint answers; Unavailable otherwise."""
    import openai

    if not settings.base_url or not settings.model:
        raise Unavailable(
            "set eval.api.base_url and eval.api.model (any OpenAI-compatible endpoint)"
        )
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    local = re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", str(settings.base_url))
    if not key and not local:
        raise Unavailable(f"no API key: set the environment variable {settings.api_key_env}")
    client = openai.OpenAI(
        base_url=settings.base_url,
        api_key=key or "none",
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )
    try:
        client.with_options(timeout=min(10.0, settings.timeout_s), max_retries=0).models.list()
    except openai.APIError as err:
        raise Unavailable(
            f"{settings.base_url} does not answer ({type(err).__name__}: {err})"
        ) from None
    return client


def code_in(text: str) -> str:
    """The scene in a reply: the first fenced block when there is one, else the whole text."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def write_scene(
    client,
    settings: ApiSettings,
    function: str,
    max_tokens: int,
    temperature: float,
    seed: int | None,
) -> Reply:
    from derivative_animator.data.prompt import instruction

    start = time.perf_counter()
    response = client.chat.completions.create(
        model=settings.model,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": instruction(function)},
        ],
    )
    choice = response.choices[0]
    usage = response.usage
    return Reply(
        function,
        code_in(choice.message.content or ""),
        time.perf_counter() - start,
        usage.completion_tokens if usage else 0,
        usage.prompt_tokens if usage else 0,
        "max_new_tokens" if choice.finish_reason == "length" else "eos",
    )
