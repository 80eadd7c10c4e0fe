"""Self-consistency: sampled headers vote on f'; the largest group of equal derivatives wins."""

import sympy as sp

from derivative_animator.math.header import MATH_HEADER_END, math_header_length
from derivative_animator.math.parsing import X
from derivative_animator.model import self_consistency
from derivative_animator.model.generate import Generation


def header(f: str, df: str) -> str:
    return f'"""\nf(x) = {f}\nf\'(x) = {df}\n"""\nfrom manim import *\n'


BODY = MATH_HEADER_END + "\nclass S(Scene):\n    pass\n"


class HeaderSampler:
    """Stands in for SceneGenerator: its batch of header samples writes `headers` in order."""

    def __init__(self, headers: list[str]):
        self.headers, self.calls = headers, []

    def generate_batch(
        self, functions, max_new_tokens, temperature, top_p, seed=None, headers_only=False
    ):
        self.calls.append((len(functions), temperature, seed, headers_only))
        return [Generation(f, h, 0.01, 50, 0) for f, h in zip(functions, self.headers, strict=True)]


def test_the_largest_group_of_equal_derivatives_wins_over_greedy():
    derivatives = [sp.Integer(3), 2 * X, X * 2, sp.sympify("2*x + 0"), 3 * X]
    assert self_consistency.vote(derivatives, (-3, 3)) == self_consistency.Vote(1, 3, 5)


def test_derivatives_equal_by_sympy_vote_together_however_they_are_written():
    """sin(2x) = 2 sin(x) cos(x) = 4 sin(x/2) cos(x/2) cos(x): one group of three beats the greedy
    pair (grouping by printed string would make three groups of one, and the greedy pair would
    win)."""
    derivatives = [
        X**2,
        X**2,
        sp.sin(2 * X),
        2 * sp.sin(X) * sp.cos(X),
        4 * sp.sin(X / 2) * sp.cos(X / 2) * sp.cos(X),
    ]
    assert len({str(d) for d in derivatives[2:]}) == 3
    assert self_consistency.vote(derivatives, (-3, 3)) == self_consistency.Vote(2, 3, 5)
    expanded = [(X + 1) ** 2, X**2 + 2 * X + 1, 2 * X]
    assert self_consistency.vote(expanded, (-3, 3)) == self_consistency.Vote(0, 2, 3)


def test_a_tie_goes_to_the_greedy_headers_group_and_non_voters_are_skipped():
    derivatives = [2 * X, None, X**2, 2 * X, X**2]
    assert self_consistency.vote(derivatives, (-3, 3)) == self_consistency.Vote(0, 2, 4)
    assert self_consistency.vote([None, None], (-3, 3)).chosen is None


def test_a_header_votes_only_when_its_f_is_the_prompts_function():
    f = X**2
    assert self_consistency.header_derivative(header("x^2", "2x"), f, (-3, 3)) == 2 * X
    assert self_consistency.header_derivative(header("x^3", "2x"), f, (-3, 3)) is None
    assert self_consistency.header_derivative(header("x^2", "2x +"), f, (-3, 3)) is None
    assert self_consistency.header_derivative("no docstring here", f, (-3, 3)) is None


def test_the_greedy_scene_gets_the_agreed_header_and_keeps_its_body():
    greedy = header("x sin(x)", "cos(x)") + BODY
    sampled = [
        header("x sin(x)", "sin(x) + x*cos(x)"),
        header("x sin(x)", "x cos(x) + sin(x)"),
        header("x sin(x)", "x cos(x)"),
        header("x cos(x)", "nonsense"),
    ]
    sampler = HeaderSampler(sampled)
    code, vote = self_consistency.self_consistent_scene(
        sampler, "x sin x", greedy, k=4, temperature=0.7, top_p=0.95, seed=7
    )
    assert (vote.chosen, vote.group_size, vote.voters) == (1, 2, 4)
    assert code == sampled[0] + BODY
    assert sampler.calls == [(4, 0.7, 7, True)]  # one batch of header-only samples


def test_without_a_header_in_the_greedy_scene_the_scene_is_kept():
    sampler = HeaderSampler([header("x^2", "2x")])
    code, vote = self_consistency.self_consistent_scene(
        sampler, "x^2", "print('no header')", 1, 0.7, 0.95, 0
    )
    assert code == "print('no header')" and vote.chosen == 1


def test_a_batch_row_is_done_once_its_math_header_is_written(micro_checkpoint):
    import torch
    from transformers import AutoTokenizer

    from derivative_animator.data import oracle
    from derivative_animator.model.decoding import HEADER_WRITTEN, RowStops, stops_for

    tokenizer = AutoTokenizer.from_pretrained(micro_checkpoint)
    scene = oracle.template_scene("x^2", "tangent")
    cut = math_header_length(scene) + len(MATH_HEADER_END)
    written, unfinished = (
        tokenizer("PROMPT" + text, add_special_tokens=False)["input_ids"]
        for text in (scene[:cut], scene[: cut - 3])
    )
    width = len(tokenizer("PROMPT", add_special_tokens=False)["input_ids"])
    rows = max(len(written), len(unfinished))
    pad = lambda ids: ids + [tokenizer.pad_token_id] * (rows - len(ids))  # noqa: E731
    stops = RowStops([stops_for(headers_only=True), stops_for(headers_only=True)], tokenizer, width)
    done = stops(torch.tensor([pad(written), pad(unfinished)]), None)
    assert done.tolist() == [True, False] and stops.reasons == {0: HEADER_WRITTEN}
    # A row whose opening decoding wrote (fed with its prompt): its text starts with the opening.
    opening = scene[: scene.index("f'(x)")]
    width = len(tokenizer("PROMPT" + opening, add_special_tokens=False)["input_ids"])
    stops = RowStops([stops_for(headers_only=True)], tokenizer, width, [opening])
    assert stops(torch.tensor([written]), None).tolist() == [True]
    assert stops.texts(torch.tensor([written]), 0) == scene[:cut]


def test_the_winning_group_is_drawn_by_a_header_whose_interval_is_defined():
    assert self_consistency.vote([2 * X, 2 * X, 2 * X], (-3, 3), [False, False, True]).chosen == 2
    assert (
        self_consistency.vote([2 * X, 2 * X], (-3, 3), [False, False]).chosen == 0
    )  # none: the first
    f = sp.sqrt(sp.sin(X))
    right = sp.cos(X) / (2 * sp.sqrt(sp.sin(X)))
    assert self_consistency.drawable(
        header("sqrt(sin(x))", "x") + "X_MIN, X_MAX = 0.1, 3\n", f, right
    )
    assert not self_consistency.drawable(
        header("sqrt(sin(x))", "x") + "X_MIN, X_MAX = 0.1, 4\n", f, right
    )
