"""eval/header_math.py: greedy headers judged without rendering."""

from __future__ import annotations

import re

import pytest

from derivative_animator.data import oracle
from derivative_animator.eval import header_math
from derivative_animator.math.header import MATH_HEADER_END
from derivative_animator.model.generate import Generation

TYPED = ["x^3 - 2x", "sin(2x) e^x", "ln(x^2 + 1)", "sqrt(x) cos(x)"]


class HeaderWriter:
    """Rows cut where their header ends, as generate_batch(headers_only=True) returns them: the
    oracle's header, or the same with f' = 0 for the functions in `wrong`."""

    def __init__(self, wrong=()):
        self.wrong, self.batches = set(wrong), []

    def generate_batch(self, functions, max_new_tokens, headers_only):
        assert headers_only and max_new_tokens == header_math.HEADER_TOKENS
        self.batches.append(len(functions))
        return [Generation(f, self.header(f), 0.0, 1, 1) for f in functions]

    def header(self, function):
        scene = oracle.template_scene(function, "tangent")
        cut = scene[: scene.index(MATH_HEADER_END)]
        return re.sub(r"f'\(x\) = .*", "f'(x) = 0", cut) if function in self.wrong else cut


@pytest.mark.parametrize("wrong", [(), tuple(TYPED), ("sin(2x) e^x",)])
def test_counts_the_headers_the_judge_accepts(wrong):
    report = header_math.header_math(HeaderWriter(wrong), {"a": TYPED, "b": TYPED[:2]}, batch=3)
    expected = [f for f in TYPED if f not in wrong]
    assert report["a"] == {
        "n": 4,
        "math_pct": round(100 * len(expected) / 4, 1),
        "right": expected,
    }
    assert report["b"]["right"] == [f for f in TYPED[:2] if f not in wrong]


def test_batches_and_limit():
    writer = HeaderWriter()
    report = header_math.header_math(writer, {"a": TYPED}, batch=3, limit=3)
    assert writer.batches == [3] and report["a"]["n"] == 3


def test_sets_are_the_test_split_and_every_benchmark(micro_data):
    sets = header_math.function_sets(micro_data)
    assert list(sets) == ["test", "textbook", "random"] and all(sets.values())


def test_a_directory_without_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    assert header_math.main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no config.json" in err[0]
