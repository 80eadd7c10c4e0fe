"""Inference: a merged checkpoint writes a Manim scene for a function.

`SceneGenerator.load(dir)` refuses a checkpoint whose stored prompt format is missing
or differs from the prompt module's (unless told otherwise), then formats every prompt
with the checkpoint's own format and `prompt.encode_prompt`: exactly what training saw.

Decoding is speculative and lossless (`speculative.py`): drafts from the training scenes
or the text so far, checked by one forward pass; the output distribution is exactly the
model's.

Its parts are in `decoding.py`, shared with batched generation (`generate_batch`).
Generation stops as soon as its text holds a syntax error that no continuation
could fix (`dead_error`): the syntax check fails the same way, and a model
writing prose or a broken loop stops spending its token budget. When sampling, a caller
may instead allow a few rollbacks (`syntax_rollbacks`): the text goes back to the start
of the line holding the error and that line is sampled again. That is rejection sampling
line by line, conditioned on the text staying parseable; verified generation uses it,
raw (greedy) evaluation never does.

While the math header is written (the docstring with f and f', the interval), a bracket guard
(`BracketGuard`, on by default) forbids the tokens that would close a bracket never
opened, or end a line or the scene with one still open: a constraint on decoding, like a
grammar, that never looks at the mathematics. Greedy decoding takes the best allowed
token; sampling draws from the allowed ones. `Generation.guarded` counts the steps where
the model's first choice was forbidden.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from derivative_animator import paths
from derivative_animator.data.prompt import (
    DEFAULT_FORMAT,
    PromptFormat,
    encode_prompt,
    require_same,
)
from derivative_animator.data.scenes import docstring_opening, interval_values
from derivative_animator.math.header import MATH_HEADER_END
from derivative_animator.math.judge import interval_for
from derivative_animator.math.parsing import parse_function
from derivative_animator.model.checkpoint_files import DRAFT_CORPUS
from derivative_animator.model.decoding import (
    SYNTAX_ERROR,
    BracketGuard,
    BracketGuardProcessor,
    IntervalWritten,
    RowStops,
    SharedCode,
    StyleChoice,
    docstring_written_to,
    first_stop,
    header_as_decoding_writes,
    stops_for,
)
from derivative_animator.model.speculative import ContextLookup, NgramDrafter, accept_draft, pick


@dataclass
class Generation:
    function: str
    code: str
    seconds: float
    new_tokens: int
    forward_passes: int
    stop: str = "eos"  # eos, max_new_tokens, or a stop's reason (decoding.py)
    rollbacks: int = 0  # lines sampled again after an unfixable syntax error
    guarded: int = 0  # steps where the bracket guard forbade the model's first choice
    forced: int = 0  # tokens decoding wrote, not the model (the shared code, an asked style)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


class SceneGenerator:
    def __init__(
        self,
        model,
        tokenizer,
        prompt_format: PromptFormat,
        drafter: NgramDrafter | None,
        checkpoint: Path,
        speculative: bool = True,
        bracket_guard: bool = True,
        shared_code: bool = True,
        copy_function: bool = True,
        choose_interval: bool = True,
    ):
        self.model, self.tokenizer, self.prompt_format = model.eval(), tokenizer, prompt_format
        self.drafter, self.checkpoint, self.speculative = drafter, checkpoint, speculative
        self.guard = BracketGuard(tokenizer) if bracket_guard else None
        self.shared_code, self.copy_function = shared_code, copy_function
        self.choose_interval = choose_interval

    @classmethod
    def load(
        cls,
        directory: str | Path,
        allow_prompt_mismatch: bool = False,
        device: str | None = None,
        speculative: bool = True,
        bracket_guard: bool = True,
        shared_code: bool = True,
        copy_function: bool = True,
        choose_interval: bool = True,
    ) -> SceneGenerator:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        checkpoint = paths.resolve(directory)
        if not (checkpoint / "config.json").is_file():
            raise FileNotFoundError(
                f"{checkpoint} is not a model checkpoint (no config.json); pass the merged dir "
                "of a training run, e.g. outputs/train/<run>/checkpoint/merged"
            )
        stored = PromptFormat.load(checkpoint)  # raises when the checkpoint carries none
        if not allow_prompt_mismatch:
            require_same(stored, DEFAULT_FORMAT)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device)
        drafter = None
        if speculative and (checkpoint / DRAFT_CORPUS).is_file():
            scenes = json.loads((checkpoint / DRAFT_CORPUS).read_text())
            drafter = NgramDrafter(
                [tokenizer(s, add_special_tokens=False)["input_ids"] for s in scenes]
            )
        return cls(
            model,
            tokenizer,
            stored,
            drafter,
            checkpoint,
            speculative,
            bracket_guard,
            shared_code,
            copy_function,
            choose_interval,
        )

    def prompt_ids(self, function: str) -> list[int]:
        return encode_prompt(self.tokenizer, self.prompt_format.format(function))

    def opening(self, function: str) -> str:
        """What decoding writes before the model's first token: the docstring's opening with the
        prompt's function (`scenes.docstring_opening`, decision 0016); "" without
        `copy_function`."""
        return docstring_opening(parse_function(function)) if self.copy_function else ""

    def interval_writer(self, function: str) -> Callable[[str], str | None] | None:
        """With `choose_interval`, what `SharedCode` asks for the interval's values once the
        docstring is written: the interval `judge.interval_for` finds with the f' the model wrote
        (decision 0016); None: the model writes its own."""
        if not self.choose_interval:
            return None
        target = parse_function(function)

        def values(docstring: str) -> str | None:
            found = interval_for(docstring, target)
            return interval_values(found) if found is not None else None

        return values

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @torch.inference_mode()
    def generate(
        self,
        function: str,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        draft_length: int = 16,
        syntax_rollbacks: int = 0,
        accept_header: Callable[[str], bool] | None = None,
        prompt: str | None = None,
        prefix: str = "",
        style: str | None = None,
    ) -> Generation:
        """One scene (or, given `prompt`, the continuation of that raw prompt text: the
        OpenAI completions API; `function` then only labels the result). temperature 0 is
        greedy (with speculation); above 0 samples, and may sample a line again up to
        `syntax_rollbacks` times when it breaks the syntax.
        `accept_header`, given the math header once it is written, may stop the scene there
        (stop HEADER_REJECTED): verification abandons a try whose derivative is wrong.
        `prefix`: the scene's start, already written (a sampled math header): the model goes on
        from it, within the same token budget; the code returned starts with it.
        `style`: the scene style to write (`decoding.StyleChoice`); None: the model's choice.
        With `shared_code` (the generator's), decoding writes the scene's code around the model's
        docstring and interval (`decoding.SharedCode`), and with `choose_interval` the interval's
        values too where the model's f' allows (`interval_writer`); with `copy_function`, the
        docstring's opening with f (`opening`) when no `prefix` is given; none for a raw `prompt`.
        `max_new_tokens` bounds the tokens the model writes: forced text costs one pass."""
        from transformers import DynamicCache

        start = time.perf_counter()
        ids = (
            encode_prompt(self.tokenizer, prompt)
            if prompt is not None
            else self.prompt_ids(function)
        )
        if prefix:
            prefix_ids = self._ids(prefix)
            ids, max_new_tokens = ids + prefix_ids, max_new_tokens - len(prefix_ids)
        opened = self._ids(self.opening(function)) if prompt is None and not prefix else []
        device = self.model.device
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        cache, cache_argument = DynamicCache(), _cache_argument(self.model)

        def forward(tokens: list[int]) -> torch.Tensor:
            """Logits after each of `tokens`, fed after what the cache holds (then holding them
            too)."""
            return self.model(
                input_ids=torch.tensor([tokens], device=device),
                use_cache=True,
                **{cache_argument: cache},
            ).logits[0]

        logits = forward(ids + opened)[-1]
        passes, new, eos = 1, list(opened), self.tokenizer.eos_token_id
        lookup = ContextLookup() if self.speculative else None
        stop = "max_new_tokens"
        length = (
            draft_length  # shrinks after rejections: a long rejected draft still costs its pass
        )
        rollbacks = guarded = 0
        forced_tokens = len(opened)
        stops = stops_for(accept_header)
        choice = StyleChoice(style) if style is not None else None
        shared = (
            SharedCode(style, self.interval_writer(function))
            if self.shared_code and prompt is None
            else None
        )
        while len(new) - forced_tokens < max_new_tokens:  # the model's tokens; forced ones are free
            text = prefix + self.tokenizer.decode(new)
            reason = first_stop(stops, text)
            if reason is not None:
                keep = None
                if reason == SYNTAX_ERROR and temperature > 0 and rollbacks < syntax_rollbacks:
                    error = stops[-1].error  # the syntax stop's: its line goes
                    keep = self._tokens_before_line(new, text, error.lineno, len(prefix))
                if keep is None:
                    stop = reason
                    break
                # Back to the start of the broken line; re-read the logits there.
                rollbacks += 1
                new = new[:keep]
                cache.crop(
                    len(ids) + len(new) - 1 - cache.get_seq_length()
                )  # negative: drop from the end
                logits = forward([(ids + new)[-1]])[-1]
                passes += 1
                lookup = (
                    ContextLookup() if self.speculative else None
                )  # it indexed the dropped tokens
                continue
            forcing = self._shared_code_forcing(shared, text, new, len(prefix))
            scene_written = forcing is not None and shared.done  # a style's code, whole
            if forcing is None:
                forcing = self._style_forcing(choice, text, new, len(prefix))
            if forcing is not None:
                # Back to `keep` tokens; decoding writes the text after them in the model's place.
                keep, forced_text = forcing
                forced = self._ids(forced_text)
                new = new[:keep] + forced
                forced_tokens += len(forced)
                if scene_written:  # nothing follows a style's code in any scene
                    stop = "eos"
                    break
                cache.crop(len(ids) + keep - 1 - cache.get_seq_length())
                logits = forward([(ids + new)[len(ids) + keep - 1], *forced])[-1]
                passes += 1
                lookup = ContextLookup() if self.speculative else None
                continue
            header_open = self.guard is not None and MATH_HEADER_END not in text
            if header_open:
                logits, changed = self.guard.apply(logits, text)
                guarded += changed
            token = pick(logits, temperature, top_p, generator)
            new.append(token)
            if token == eos:
                break
            room = min(length, max_new_tokens - len(new) + forced_tokens)
            draft = self.drafter.propose(ids + new, room) if self.drafter is not None else []
            if not draft and lookup is not None:
                draft = lookup.propose(ids + new, room)
            out = forward([token] + draft)
            passes += 1
            accepted, replacement = 0, None
            for i, proposed in enumerate(draft):
                step_logits, changed = out[i], False
                if header_open:
                    step_logits, changed = self.guard.apply(
                        out[i], prefix + self.tokenizer.decode(new)
                    )
                keep, replacement = accept_draft(
                    step_logits, proposed, temperature, top_p, generator
                )
                guarded += changed and (
                    keep or replacement is not None
                )  # else the next step counts it
                if not keep:
                    break
                new.append(proposed)
                accepted += 1
                if proposed == eos:
                    break
            if draft:
                length = min(draft_length, 2 * length) if accepted == len(draft) else accepted + 1
            excess = cache.get_seq_length() - (len(ids) + len(new))
            if excess > 0:  # drop the rejected draft tokens from the cache
                cache.crop(-excess)
            if new[-1] == eos:
                break
            if replacement is not None:
                # A rejected draft token is resampled from what remains of the model's
                # distribution: that keeps sampling exact (speculative sampling).
                new.append(replacement)
                if replacement == eos:
                    break
                logits = forward([replacement])[-1]
                passes += 1
                continue
            logits = out[accepted]
        else:  # out of budget, maybe on the header's last token: the header is judged
            if accept_header is not None:
                stop = stops[0](prefix + self.tokenizer.decode(new)) or stop  # the HeaderJudge
        if new and new[-1] == eos:
            new, stop = new[:-1], "eos"
        code = prefix + self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(
            function,
            code,
            time.perf_counter() - start,
            len(new),
            passes,
            stop,
            rollbacks,
            guarded,
            forced_tokens,
        )

    def _shared_code_forcing(
        self, shared: SharedCode | None, text: str, tokens: list[int], written: int
    ) -> tuple[int, str] | None:
        """(tokens kept, text decoding writes after them) where the code after the header is
        decoding's to write (`SharedCode`): kept where the model began it right, else written
        from the header's end."""
        forcing = shared.forcing(text) if shared is not None else None
        if forcing is None or forcing[0] < written:
            return None
        start_at, code = forcing
        after = text[start_at:]
        if code.startswith(after):
            return (len(tokens), code[len(after) :]) if code != after else None
        keep = self._tokens_before(tokens, start_at - written)
        kept = text[:written] + self.tokenizer.decode(tokens[:keep])
        return keep, text[len(kept) : start_at] + code

    def _style_forcing(
        self, choice: StyleChoice | None, text: str, tokens: list[int], written: int
    ) -> tuple[int, str] | None:
        """(tokens kept, text decoding writes after them) where the model opened another style
        than the asked one: back to that line's start, the asked opening instead."""
        lineno = choice.line_to_replace(text) if choice is not None else None
        keep = self._tokens_before_line(tokens, text, lineno, written) if lineno else None
        if keep is None:
            return None
        line_start = sum(len(line) + 1 for line in text.split("\n")[: lineno - 1])
        kept = text[:written] + self.tokenizer.decode(tokens[:keep])
        return keep, text[len(kept) : line_start] + choice.opening  # the line's rest is the model's

    def _tokens_before_line(
        self, tokens: list[int], text: str, lineno: int, written: int = 0
    ) -> int | None:
        """How many of the tokens (which decode to `text` after its first `written` characters,
        the prefix) decode to text that ends at or before line `lineno` starts; None when that
        line starts inside the prefix (no rollback can reach it)."""
        line_start = sum(len(line) + 1 for line in text.split("\n")[: lineno - 1]) - written
        return self._tokens_before(tokens, line_start) if line_start >= 0 else None

    def _tokens_before(self, tokens: list[int], offset: int) -> int:
        """How many of the tokens decode to text that ends at or before character `offset`."""
        low, high = 0, len(tokens)  # decoded length grows with the token count: bisect
        while low < high:
            middle = (low + high + 1) // 2
            if len(self.tokenizer.decode(tokens[:middle])) <= offset:
                low = middle
            else:
                high = middle - 1
        return low

    @torch.inference_mode()
    def generate_batch(
        self,
        functions: list[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        headers_only: bool = False,
    ) -> list[Generation]:
        """Many scenes at once (left-padded, HF generate), with the stops and bracket guard of
        `generate` (no speculation, no rollbacks). Each gets the batch time / n.
        `headers_only`: a row stops once its math header is written (the text is cut there, its
        imports and interval as `generate` writes them: `header_as_decoding_writes`), the batch
        once every row's is: self-consistency's votes need no more. Where decoding writes the
        interval, a row's header is written once its docstring is (`IntervalWritten`)."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        if not functions:
            return []
        start = time.perf_counter()
        openings = [self.opening(f) for f in functions]  # decoding writes them (`opening`)
        opened = [self._ids(opening) for opening in openings]
        prompts = [self.prompt_ids(f) + ids for f, ids in zip(functions, opened, strict=True)]
        width = max(map(len, prompts))
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        input_ids = torch.tensor(
            [[pad] * (width - len(p)) + p for p in prompts], device=self.model.device
        )
        attention = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device
        )
        if seed is not None:
            torch.manual_seed(seed)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False}
        )
        # where decoding writes the code and the interval after the docstring, so does the batch
        writers = [self.interval_writer(f) if self.shared_code else None for f in functions]
        intervals = [IntervalWritten(w) if headers_only and w else None for w in writers]
        stops = RowStops(
            [stops_for(None, headers_only, interval) for interval in intervals],
            self.tokenizer,
            width,
            openings,
        )
        guard = BracketGuardProcessor(self.guard, stops.texts) if self.guard is not None else None
        if guard is not None:
            sampling["logits_processor"] = LogitsProcessorList([guard])
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([stops]),
            **sampling,
        )
        each = (time.perf_counter() - start) / len(functions)
        results = []
        for index, (function, row) in enumerate(
            zip(functions, output[:, width:].tolist(), strict=True)
        ):
            stop = stops.reasons.get(index) or (
                "eos" if self.tokenizer.eos_token_id in row else "max_new_tokens"
            )
            if (
                self.tokenizer.eos_token_id in row
            ):  # its end, or the padding after a stop (pad may be eos)
                row = row[: row.index(self.tokenizer.eos_token_id)]
            row = [t for t in row if t != pad]
            text = openings[index] + self.tokenizer.decode(row, skip_special_tokens=True)
            if headers_only and MATH_HEADER_END in text:
                text = text[: text.index(MATH_HEADER_END)]
                if self.shared_code:  # what `generate` would have written around its math
                    text = header_as_decoding_writes(text, self.interval_writer(function))
            elif intervals[index] is not None and intervals[index].values is not None:
                text = header_as_decoding_writes(  # what `generate` writes after the docstring
                    text[: docstring_written_to(text)], intervals[index].found
                )
            results.append(
                Generation(
                    function,
                    text,
                    each,
                    len(opened[index]) + len(row),  # as `generate` counts: forced tokens too
                    0,
                    stop,
                    guarded=guard.guarded.get(index, 0) if guard is not None else 0,
                    forced=len(opened[index]),
                )
            )
        return results


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` from transformers 5.24 on (`past_key_values`
    stays an alias until 5.40), `past_key_values` before. A name the forward does not take is
    swallowed by its **kwargs: no cache, and each pass sees only the tokens fed to it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
