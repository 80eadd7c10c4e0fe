"""Decoding's parts, in the transformers style: one set for one-at-a-time and batched generation.

- `SharedCode` writes a scene's code, the same for every function, around the mathematics the
  model writes (decision 0014); `StyleChoice` makes the model write the scene style a user asked
  for when it writes the code itself.
- `BracketGuard` constrains the math header's brackets; `BracketGuardProcessor` is it as a
  transformers logits processor over a batch (rows past their header are left alone).
- Stops read one row's text so far and say why it must end there, or None:
  `SyntaxDeadEnd` (a syntax error no continuation can fix: `dead_error`), `HeaderJudge`
  (the caller's `accept_header` said no to the written header), `header_written` (a caller
  that wants only the header). `RowStops` runs them as a transformers stopping criterion
  and keeps each row's reason; `RowTexts` decodes each row once a step for it and the guard.

`SceneGenerator.generate` (speculative, one scene) asks the same stops after every token it
keeps; `generate_batch` hands them to `model.generate`. Speculative drafting is its own
module (`speculative.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from derivative_animator.data.scenes import (
    DOCSTRING_END,
    HEADER_CODE,
    INTERVAL,
    SHARED_CODE,
    STYLE_CODE,
    STYLE_OPENINGS,
    STYLES,
)
from derivative_animator.math.header import MATH_HEADER_END
from derivative_animator.math.judge import parse_code

SYNTAX_ERROR = "syntax error"
HEADER_REJECTED = "math header rejected"  # Generation.stop when accept_header said no
HEADER_WRITTEN = "math header written"  # a headers-only row is done

# Parser messages for code that is merely unfinished: more text could still complete it.
_UNFINISHED = (
    "never closed",
    "was not closed",
    "unexpected EOF",
    "unterminated",
    "string",
    "expected 'else'",
)  # `a if b` on the last line: its `else c` may come
_LAST_LINE_MARGIN = 16  # characters after an error on the unfinished last line: its token is whole


def dead_prefix(text: str) -> str | None:
    """Why no continuation of this text can parse, or None if one might."""
    error = dead_error(text)
    return f"{error.msg} (line {error.lineno})" if error is not None else None


def dead_error(text: str) -> SyntaxError | None:
    """The syntax error no continuation of this text can fix, or None if one might.

    A syntax error that is not about something left open, and lies before the last line
    (or well before the end of the last, unfinished one), is fixed by what is already
    there: later text cannot change how earlier text tokenizes. The tests check that no
    prefix of a template scene of any style, cut at any character, is flagged."""
    try:
        parse_code(text)
    except SyntaxError as error:
        if error.lineno is None or any(m in error.msg for m in _UNFINISHED):
            return None
        lines = text.split("\n")
        finished = len(lines) - 1
        on_last = error.lineno == finished + 1 and error.offset is not None
        if error.lineno < finished or (
            on_last and len(lines[-1]) - error.offset >= _LAST_LINE_MARGIN
        ):
            return error
    return None


_CLOSER_OF = {"(": ")", "[": "]", "{": "}"}
# A header line this long is a loop, not a derivative: the longest f' line of a training split
# is 440 characters (tree practice included); looping lines ran to the token budget (1,400).
MAX_HEADER_LINE_CHARS = 600


def open_brackets(line: str) -> list[str] | None:
    """The brackets a line leaves open, innermost last; None if it closes one it never
    opened or closes the wrong kind."""
    stack = []
    for character in line:
        if character in _CLOSER_OF:
            stack.append(character)
        elif character in ")]}" and (not stack or _CLOSER_OF[stack.pop()] != character):
            return None
    return stack


class BracketGuard:
    """Which tokens would break the math header's brackets, given the text so far.

    In a header line (not a comment; the header ends at `MATH_HEADER_END`) a
    token is forbidden when it closes a bracket never opened or of the other kind, or
    ends the line (a newline, or the end of the text) with a bracket still open. When the
    model's first choice is such a line end, only tokens that close open brackets remain:
    the line it wanted to end is closed first. The masks depend only on the brackets left
    open, so they are built once per such stack, checking one by one only the few hundred
    vocabulary entries that hold a bracket."""

    def __init__(self, tokenizer):
        self.newline = torch.zeros(len(tokenizer), dtype=torch.bool)
        self.line_end = torch.zeros_like(
            self.newline
        )  # ends a line, adding nothing before: how a wound-up line ends
        self.bracketed: list[
            tuple[int, str, bool]
        ] = []  # (id, its text before a newline, has a newline)
        for token_id in range(len(tokenizer)):
            piece = tokenizer.decode([token_id])
            line = piece.split("\n", 1)[0]
            self.newline[token_id] = "\n" in piece
            self.line_end[token_id] = "\n" in piece and not line.strip()
            if any(c in "()[]{}" for c in line):
                self.bracketed.append((token_id, line, "\n" in piece))
        self.eos = tokenizer.eos_token_id
        self._masks: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def forbidden(self, text: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(forbidden tokens, tokens that only close open brackets) as vocabulary masks, or
        None where the guard does not apply."""
        if MATH_HEADER_END in text:
            return None
        line = text.rsplit("\n", 1)[-1]
        if "#" in line:  # a comment (the typed function) may hold any brackets
            return None
        stack = open_brackets(line)
        if stack is None:  # already broken: dead_prefix stops it
            return None
        if tuple(stack) not in self._masks:  # a header visits few stacks: "", "(", "((", ...
            self._masks[tuple(stack)] = self._masks_for(stack)
        mask, closing = self._masks[tuple(stack)]
        if len(line) >= MAX_HEADER_LINE_CHARS:  # a loop: close what is open, then end the line
            return (~closing if stack else ~self.line_end), closing
        return mask, closing

    def _masks_for(self, stack: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.newline.clone() if stack else torch.zeros_like(self.newline)
        if stack and self.eos is not None:
            mask[self.eos] = True
        closing = torch.zeros_like(self.newline)
        for token_id, piece, has_newline in self.bracketed:
            after = open_brackets("".join(stack) + piece)
            mask[token_id] = after is None or (has_newline and bool(after))
            only_closes = not has_newline and not piece.strip(")]} ")
            closing[token_id] = only_closes and after is not None
        return mask, closing

    def apply(self, logits: torch.Tensor, text: str) -> tuple[torch.Tensor, bool]:
        """(logits with the forbidden tokens at -inf, whether the argmax was forbidden)."""
        masks = self.forbidden(text)
        if masks is None:
            return logits, False
        mask, closing = (m[: logits.shape[-1]].to(logits.device) for m in masks)
        best = int(logits.argmax())
        changed = bool(mask[best])
        ends_line = best == self.eos or (best < len(self.newline) and bool(self.newline[best]))
        if changed and ends_line and bool(closing.any()):
            mask = ~closing  # it wanted to end the line: close what is open first
        return logits.masked_fill(mask, float("-inf")), changed


class RowTexts:
    """Each row's text after the prompt, decoded once a step: the stops read it after a token is
    appended, and the guard reads the very same ids before the next token is chosen. A row's
    opening (text decoding wrote, fed with its prompt) starts its text."""

    def __init__(self, tokenizer, prompt_width: int, openings: list[str] | None = None):
        self.tokenizer, self.prompt_width, self.openings = tokenizer, prompt_width, openings
        self._decoded: dict[int, tuple[int, str]] = {}  # row -> (length decoded, its text)

    def __call__(self, input_ids: torch.Tensor, row: int) -> str:
        length = input_ids.shape[1]
        if self._decoded.get(row, (None,))[0] != length:
            text = self.tokenizer.decode(
                input_ids[row, self.prompt_width :], skip_special_tokens=True
            )
            if self.openings is not None:
                text = self.openings[row] + text
            self._decoded[row] = (length, text)
        return self._decoded[row][1]


class BracketGuardProcessor:
    """BracketGuard as a transformers logits processor; `guarded[row]` counts the steps where
    the row's first choice was forbidden, as `Generation.guarded` does."""

    def __init__(self, guard: BracketGuard, texts: RowTexts):
        self.guard, self.texts = guard, texts
        self.past_header: set[int] = set()  # rows whose header is written: no more decoding
        self.guarded: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for row in range(scores.shape[0]):
            if row in self.past_header:
                continue
            text = self.texts(input_ids, row)
            if MATH_HEADER_END in text:
                self.past_header.add(row)
                continue
            scores[row], changed = self.guard.apply(scores[row], text)
            self.guarded[row] = self.guarded.get(row, 0) + changed
        return scores


Stop = Callable[[str], str | None]  # a row's text so far -> why it ends there, or None


FALLBACK_STYLE = STYLES[0]  # written where the model opens no style after the shared code


class SharedCode:
    """A scene's code is the same for every function (it reads its math from the docstring), so
    decoding writes it and the model writes the mathematics: the docstring (f, f'), the
    interval's values, and the style it picks. Once the docstring is closed, decoding writes the
    imports up to the interval (`scenes.HEADER_CODE`); once the interval's line ends, the asked
    style's code whole (`scenes.STYLE_CODE`), or with no style asked the code all styles share
    (`SHARED_CODE`) and, once the model has written a style's opening (`STYLE_OPENINGS`), the
    rest of that style's code, or the first style's where the model opens none. The text is what
    every training scene holds there."""

    def __init__(self, style: str | None = None, interval: Callable[[str], str | None] = None):
        """`interval`, given the text up to the docstring's end, says the interval's values
        (`1, 5`) decoding writes with the imports, or None: the model writes them."""
        if style is not None and style not in STYLE_CODE:
            raise ValueError(f"unknown scene style {style!r}; choose one of {', '.join(STYLES)}")
        self.style, self.done, self.interval = style, False, interval
        self.code_start: int | None = None  # where HEADER_CODE begins
        self.style_start: int | None = None  # where STYLE_CODE begins

    def forcing(self, text: str) -> tuple[int, str] | None:
        """(where, what): decoding writes `what` from character `where` of the text on (the
        model's text from there stays where it is the start of it); None when there is nothing
        to write now. `done` once a style's code is written whole."""
        if self.done:
            return None
        if self.code_start is None:
            code_start = docstring_written_to(text)
            if code_start is None:
                return None
            self.code_start = code_start
            values = self.interval(text[: self.code_start]) if self.interval is not None else None
            return self.code_start, HEADER_CODE + (f" {values}\n" if values else "")
        if self.style_start is None:
            values = text.find(INTERVAL, self.code_start)  # where HEADER_CODE ended (or a prefix's)
            line_end = text.find("\n", values + len(INTERVAL)) if values >= 0 else -1
            if line_end < 0:
                return None
            self.style_start = line_end + 1
            if self.style is not None:
                self.done = True
                return self.style_start, STYLE_CODE[self.style]
            return self.style_start, SHARED_CODE
        after = text[self.style_start + len(SHARED_CODE) :]
        for style, opening in STYLE_OPENINGS.items():
            if after.startswith(opening):
                self.done = True
                return self.style_start, STYLE_CODE[style]
        if any(opening.startswith(after) for opening in STYLE_OPENINGS.values()):
            return None  # an opening under way
        # The model opened no style: training ends every sample at an opening, so what it would
        # write on is untrained text (a broken body); the first style is written instead.
        self.done = True
        return self.style_start, STYLE_CODE[FALLBACK_STYLE]


def header_as_decoding_writes(header: str, interval: Callable[[str], str | None] = None) -> str:
    """A finished math header (cut at `MATH_HEADER_END`) that a batch's row wrote whole, as one
    scene's decoding writes it (`SharedCode`): the model's docstring, then the imports and, where
    `interval` finds them, the interval's values; else the model's own values after the imports."""
    forced = SharedCode(interval=interval).forcing(header)
    if forced is None:
        return header  # the docstring never closed
    where, code = forced
    if code != HEADER_CODE:
        return header[:where] + code  # the values chosen
    own = header.find(INTERVAL, where)
    return header[:where] + code + header[own + len(INTERVAL) :] if own >= 0 else header


class StyleChoice:
    """The style a user asked for, written by the model without another prompt: the first line
    after the math header that opens a style (`scenes.STYLE_OPENINGS`, `class SecantLimitScene`)
    must open the asked one; when the model opens another, that line is replaced by the asked
    opening and the model goes on from there (`SceneGenerator.generate`)."""

    def __init__(self, style: str):
        if style not in STYLE_OPENINGS:
            raise ValueError(f"unknown scene style {style!r}; choose one of {', '.join(STYLES)}")
        self.style, self.opening, self.settled = style, STYLE_OPENINGS[style], False

    def line_to_replace(self, text: str) -> int | None:
        """The number (from 1) of the line after the math header that opens another style, as
        soon as its opening is written; None before, and for good once the first is seen."""
        end = text.find(MATH_HEADER_END)
        if self.settled or end < 0:
            return None
        lines = text.split("\n")
        for index in range(text.count("\n", 0, end) + 1, len(lines)):
            if lines[index].startswith(tuple(STYLE_OPENINGS.values())):
                self.settled = True
                return None if lines[index].startswith(self.opening) else index + 1
        return None


class SyntaxDeadEnd:
    """A syntax error no continuation can fix; the error stays in `error`, where a rollback
    finds its line."""

    def __init__(self):
        self.error: SyntaxError | None = None

    def __call__(self, text: str) -> str | None:
        self.error = dead_error(text)
        return SYNTAX_ERROR if self.error is not None else None


def docstring_written_to(text: str) -> int | None:
    """Where the code after a scene's docstring starts (after its closing quotes' line), None
    before the docstring is closed."""
    opened = text.find('"""\n')  # the docstring's opening, then its end
    end = text.find(DOCSTRING_END, opened + 3) if opened >= 0 else -1
    return end + len(DOCSTRING_END) if end >= 0 else None


def header_written(text: str) -> str | None:
    return HEADER_WRITTEN if MATH_HEADER_END in text else None


class IntervalWritten:
    """A headers-only row's end where decoding writes the code after the docstring and the
    interval found with the model's f' (`SharedCode` with an interval): once the docstring is
    closed and `interval` gives values for it, the model's part of the header is written. Where
    it gives none, the model writes its own values, so the row goes on to the header's end."""

    def __init__(self, interval: Callable[[str], str | None]):
        self.interval, self.values, self.asked = interval, None, False

    def __call__(self, text: str) -> str | None:
        if not self.asked:
            end = docstring_written_to(text)
            if end is None:
                return header_written(text)
            self.values, self.asked = self.interval(text[:end]), True
        return HEADER_WRITTEN if self.values is not None else header_written(text)

    def found(self, docstring: str) -> str | None:
        """The values found at the docstring's close: what `header_as_decoding_writes` asks
        for, without searching the interval again."""
        return self.values


class HeaderJudge:
    """`accept_header` asked once, as soon as the row's text holds its whole math header."""

    def __init__(self, accept_header: Callable[[str], bool]):
        self.accept_header, self.judged = accept_header, False

    def __call__(self, text: str) -> str | None:
        if self.judged or MATH_HEADER_END not in text:
            return None
        self.judged = True
        return None if self.accept_header(text[: text.index(MATH_HEADER_END)]) else HEADER_REJECTED


def stops_for(
    accept_header: Callable[[str], bool] | None = None,
    headers_only: bool = False,
    interval_written: IntervalWritten | None = None,
) -> list[Stop]:
    """One row's stops, in the order they are asked: the header judge sees a header before
    anything else may end the row there; the syntax stop comes last. A headers-only row ends
    at the header's end line, or with `interval_written` where decoding writes the interval."""
    stops: list[Stop] = [HeaderJudge(accept_header)] if accept_header is not None else []
    if headers_only:
        stops.append(interval_written or header_written)
    return [*stops, SyntaxDeadEnd()]


def first_stop(stops: list[Stop], text: str) -> str | None:
    for stop in stops:
        reason = stop(text)
        if reason is not None:
            return reason
    return None


class RowStops:
    """Each row's stops as a transformers stopping criterion: a row is done from the first
    step one of its stops names a reason (kept in `reasons`), and stays done."""

    def __init__(
        self,
        stops: list[list[Stop]],
        tokenizer,
        prompt_width: int,
        openings: list[str] | None = None,
    ):
        self.stops, self.texts = stops, RowTexts(tokenizer, prompt_width, openings)
        self.reasons: dict[int, str] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        for row, row_stops in enumerate(self.stops):
            if row not in self.reasons:
                reason = first_stop(row_stops, self.texts(input_ids, row))
                if reason is not None:
                    self.reasons[row] = reason
        return torch.tensor(
            [row in self.reasons for row in range(len(self.stops))], device=input_ids.device
        )
