"""Self-consistency: sampled headers vote on f'; the largest group of equal derivatives wins."""

import sympy as sp

from derivative_animator import scenes, self_consistency
from derivative_animator.parsing import X


def header(f: str, df: str) -> str:
    return f'"""\nf(x) = {f}\nf\'(x) = {df}\n"""\nfrom manim import *\n'


BODY = scenes.MATH_HEADER_END + "\nclass S(Scene):\n    pass\n"


class HeaderSampler:
    """Stands in for SceneGenerator: sample i (seed - first seed) writes headers[i]."""

    def __init__(self, headers: list[str], first_seed: int):
        self.headers, self.first_seed, self.calls = headers, first_seed, []

    def generate(self, function, max_new_tokens, temperature, top_p, seed=None, accept_header=None):
        self.calls.append((temperature, seed))
        accepted = accept_header(self.headers[seed - self.first_seed])
        assert accepted is False  # a vote only needs the header: the sample stops there


def test_the_largest_group_of_equal_derivatives_wins_over_greedy():
    derivatives = [sp.Integer(3), 2 * X, X * 2, sp.sympify("2*x + 0"), 3 * X]
    assert self_consistency.vote(derivatives, (-3, 3)) == self_consistency.Vote(1, 3, 5)


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
    sampled = [header("x sin(x)", "sin(x) + x*cos(x)"), header("x sin(x)", "x cos(x) + sin(x)"),
               header("x sin(x)", "x cos(x)"), header("x cos(x)", "nonsense")]
    sampler = HeaderSampler(sampled, first_seed=7)
    code, vote = self_consistency.self_consistent_scene(sampler, "x sin x", greedy, k=4, temperature=0.7,
                                                        top_p=0.95, seed=7)
    assert (vote.chosen, vote.group_size, vote.voters) == (1, 2, 4)
    assert code == sampled[0] + BODY
    assert sampler.calls == [(0.7, 7), (0.7, 8), (0.7, 9), (0.7, 10)]


def test_without_a_header_in_the_greedy_scene_the_scene_is_kept():
    sampler = HeaderSampler([header("x^2", "2x")], first_seed=0)
    code, vote = self_consistency.self_consistent_scene(sampler, "x^2", "print('no header')", 1, 0.7, 0.95, 0)
    assert code == "print('no header')" and vote.chosen == 1
