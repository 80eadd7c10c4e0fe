"""Decoding's parts (model/decoding.py): the dead-syntax test, the bracket guard, the stops,
and that a batch row ends where generating it alone ends."""

from __future__ import annotations

import ast

import pytest
import torch
from transformers import AutoTokenizer

from derivative_animator.data import oracle
from derivative_animator.math.header import MATH_HEADER_END, math_header_length
from derivative_animator.model.decoding import (
    HEADER_REJECTED,
    SYNTAX_ERROR,
    RowStops,
    dead_prefix,
    open_brackets,
    stops_for,
)
from derivative_animator.model.generate import SceneGenerator

HEADER_START = '"""\n'


@pytest.fixture(scope="module")
def checkpoint(micro_checkpoint):
    return micro_checkpoint


@pytest.mark.parametrize(
    "code",
    [
        "steps = [\n    (1, 2),\n",  # an open bracket: more lines may close it
        'doc = """\n ) ]\n',  # an open string
        "class A:\n",  # a block still to come
        "def f():\n    return 1\nx = f(\n",
        "ys = ys[np.isfinite(ys)] if np.isfinite(ys).any()",  # its `else` may still come
    ],
)
def test_unfinished_code_is_not_dead(code):
    assert dead_prefix(code) is None


@pytest.mark.parametrize(
    "code",
    [
        "steps = [\n    (1, 2)),\n]\n",  # ')' closes nothing open
        "x = (1, 2]\ny = 3\n",
        "Below is an instruction that describes a task.\n\n",  # prose, as an untrained model writes
        "def f():\nreturn 1\nx = 2\n",  # a body that is not indented
    ],
)
def test_code_no_continuation_can_parse_is_dead(code):
    assert dead_prefix(code)
    with pytest.raises(SyntaxError):
        ast.parse(code + "\nz = 1\n")


def test_no_prefix_of_a_template_scene_is_dead():
    """Mid-line too: generation stops at a dead prefix, so a false one cuts a right scene."""
    from derivative_animator.data import oracle

    for style in ("tangent", "secant", "graphs"):
        scene = oracle.template_scene("x^2 sin(x)", style)
        dead = [k for k in range(1, len(scene) + 1) if dead_prefix(scene[:k]) is not None]
        assert dead == [], (style, scene[: dead[0]][-60:] if dead else "")


def test_a_one_line_loop_is_dead_mid_line():
    # what an untrained model writes: prose repeated on one line, no newline ever
    assert dead_prefix("Generate Manim animation code for f(x) = sin(x) = sin(x)")
    assert dead_prefix("Generate Manim") is None  # too close to the end: the token may still grow
    assert dead_prefix('label = Text("h = {h:.3f}: secant slope') is None  # an open string


def test_bracket_guard_forbids_unopened_closers_and_open_line_ends(checkpoint):
    generator = SceneGenerator.load(checkpoint)
    guard, tokenizer = generator.guard, generator.tokenizer
    [close], [newline], [square] = (
        tokenizer(t, add_special_tokens=False)["input_ids"] for t in (")", "\n", "]")
    )
    eos = tokenizer.eos_token_id
    open_line, closing = guard.forbidden(HEADER_START + "f(x) = sin(x")
    closed_line, nothing_open = guard.forbidden(HEADER_START + "f(x) = sin(x)")
    assert open_line[newline] and open_line[eos] and open_line[square] and not open_line[close]
    assert closing[close] and not closing[square] and not nothing_open.any()
    assert closed_line[close] and not closed_line[newline] and not closed_line[eos]
    assert (
        guard.forbidden(HEADER_START + 'f(x) = x\nf\'(x) = 1\n"""\nimport numpy  # a comment (')
        is None
    )
    assert (
        guard.forbidden(
            HEADER_START + 'f(x) = x\nf\'(x) = 1\n"""\nX_MIN, X_MAX = 0, 1\nx = sp.Symbol("x")\nf(x'
        )
        is None
    )


def test_bracket_guard_closes_the_line_the_model_wants_to_end(checkpoint):
    generator = SceneGenerator.load(checkpoint)
    tokenizer = generator.tokenizer
    [close], [newline] = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (")", "\n"))
    logits = torch.zeros(len(tokenizer))
    logits[newline], logits[close] = 5.0, -5.0  # wants the newline, ")" is far down
    guarded, changed = generator.guard.apply(logits, HEADER_START + "f(x) = sin(x")
    assert changed and tokenizer.decode([int(guarded.argmax())]).strip() == ")"
    [times] = tokenizer("*", add_special_tokens=False)["input_ids"]
    logits[times] = 9.0  # wants to go on: left alone
    guarded, changed = generator.guard.apply(logits, HEADER_START + "f(x) = sin(x")
    assert not changed and int(guarded.argmax()) == times


def test_a_header_line_caught_in_a_loop_is_wound_up_and_the_scene_parses(checkpoint, monkeypatch):
    """A model that would write `(2*x + ` forever on the f' line: past the line budget only
    closers, then only a line end, remain, and the rest of the scene follows a parsing header."""
    monkeypatch.setattr("derivative_animator.model.decoding.MAX_HEADER_LINE_CHARS", 60)
    generator = SceneGenerator.load(checkpoint, speculative=False, copy_function=False)
    tokenizer = generator.tokenizer
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    start, loop = encode(HEADER_START + "f(x) = x^2\nf'(x) = "), encode("(2*x + ")
    rest = encode('"""\nX_MIN, X_MAX = 0, 1\nx = sp.Symbol("x")\n')
    state = {"written": 0, "rest": None}  # tokens written; where in `rest` once the line ended

    def looping(logits, temperature, top_p, generator_):  # the model's wish, unless forbidden
        n = state["written"]
        if state["rest"] is not None:
            wish = rest[min(state["rest"], len(rest) - 1)]
            state["rest"] += 1
        else:
            wish = start[n] if n < len(start) else loop[(n - len(start)) % len(loop)]
        token = wish if logits[wish] > float("-inf") else int(logits.argmax())
        if state["rest"] is None and n >= len(start) and "\n" in tokenizer.decode([token]):
            state["rest"] = 0  # the guard ended the line: from here the model writes the rest
        state["written"] += 1
        return token

    monkeypatch.setattr("derivative_animator.model.generate.pick", looping)
    gen = generator.generate("x^2", 300)
    header = gen.code[: math_header_length(gen.code)]
    derivative_line = header.split("\n")[2]
    assert derivative_line.startswith("f'(x) = (2*x + ") and 60 <= len(derivative_line) < 80
    assert open_brackets(derivative_line) == [] and gen.guarded
    ast.parse(header)


@pytest.mark.slow
def test_the_line_budget_never_cuts_a_benchmark_functions_true_header():
    """The wound-up budget is a loop's, not a long derivative's: every benchmark function's
    oracle header (the longest functions the project judges) has shorter lines."""
    from derivative_animator.data import benchmarks
    from derivative_animator.model.decoding import MAX_HEADER_LINE_CHARS

    longest = 0
    for item in benchmarks.items("random") + benchmarks.items("textbook"):
        try:
            scene = oracle.template_scene(item.text, "tangent")
        except ValueError:  # pi and one 27th power: left out of the benchmarks' evaluation too
            continue
        longest = max(longest, *map(len, scene[: math_header_length(scene)].split("\n")))
    assert 300 < longest < MAX_HEADER_LINE_CHARS


@pytest.mark.parametrize(
    "line,expected", [("f(x)", []), ("f(g[x", ["(", "["]), ("f(x))", None), ("f(x]", None)]
)
def test_open_brackets(line, expected):
    assert open_brackets(line) == expected


def _rows(tokenizer, texts: list[str]) -> tuple[torch.Tensor, int]:
    """Token rows of PROMPT + each text, right-padded, and the prompt's width."""
    width = len(tokenizer("PROMPT", add_special_tokens=False)["input_ids"])
    ids = [tokenizer("PROMPT" + text, add_special_tokens=False)["input_ids"] for text in texts]
    longest = max(map(len, ids))
    return torch.tensor(
        [row + [tokenizer.pad_token_id] * (longest - len(row)) for row in ids]
    ), width


def test_each_row_stops_for_its_own_reason_and_the_judge_sees_its_header_once(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    scene = oracle.template_scene("x^2", "tangent")
    written = scene[: math_header_length(scene) + len(MATH_HEADER_END)]
    seen, accepted = [], []
    reject = lambda header: seen.append(header) or False  # noqa: E731
    accept = lambda header: accepted.append(header) or True  # noqa: E731
    stops = RowStops(
        [stops_for(reject), stops_for(), stops_for(accept)], tokenizer, _rows(tokenizer, ["x"])[1]
    )
    ids, _ = _rows(tokenizer, [written, "steps = [\n    (1, 2)),\n]\n", written])
    assert stops(ids, None).tolist() == [True, True, False]
    assert stops.reasons == {0: HEADER_REJECTED, 1: SYNTAX_ERROR}
    assert stops(ids, None).tolist() == [True, True, False]  # done rows stay done
    assert seen == accepted == [written[: math_header_length(written)]]  # each header judged once


def test_a_batch_row_ends_where_generating_it_alone_ends(checkpoint):
    """The untrained micro model writes text that soon breaks the syntax for good: greedy,
    alone or in a batch, each row stops at the same token for the same reason; with the
    docstring's opening written by decoding, its text stays inside the docstring."""
    functions = ["x^2", "x^3", "x^4"]  # prompts of one length: no padding to tell the rows apart
    for copy_function, stop in ((False, SYNTAX_ERROR), (True, "max_new_tokens")):
        generator = SceneGenerator.load(checkpoint, speculative=False, copy_function=copy_function)
        alone = [generator.generate(f, 60) for f in functions]
        batch = generator.generate_batch(functions, 60)
        assert [g.stop for g in alone] == [stop] * 3
        assert [(g.code, g.stop, g.new_tokens, g.forced) for g in batch] == [
            (g.code, g.stop, g.new_tokens, g.forced) for g in alone
        ]
