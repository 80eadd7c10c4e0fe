"""The pretraining corpus's worked derivatives: right, in the scenes' notation, held-out
functions never worked."""

import re

import pytest
import sympy as sp

from derivative_animator.data import benchmarks, calculus_corpus, dataset
from derivative_animator.data.dataset_schema import DataConfig
from derivative_animator.math import curriculum, expression_trees
from derivative_animator.math.judge import _interval, same_values
from derivative_animator.math.parsing import X, parse_function

WORKED = re.compile(
    r"^(?:f\(x\) = (?P<f>.+)"
    r"|#   (?P<part>.+?): [a-z ]+ rule -> .+"
    r"|# d/dx (?P<whole>.+), rule by rule:)$"
)


def worked_functions(documents: list[str]) -> list[str]:
    """Every function a document works: header f lines, step parts, steps documents' subjects."""
    found = []
    for document in documents:
        for line in document.splitlines():
            match = WORKED.match(line)
            if match:
                found.append(next(v for v in match.groupdict().values() if v is not None))
    return found


def keys(functions) -> set[str]:
    return {curriculum.canonical_key(parse_function(f)) for f in functions}


@pytest.fixture(scope="module")
def held_out(default_splits):
    return keys(
        r.function for split in calculus_corpus.HELD_OUT_SPLITS for r in default_splits[split]
    )


def test_the_default_recipe_never_works_a_validation_or_test_function(held_out):
    """The shipped base's first stage (seed 0) for its first 4,000 draws; without the filter
    the same draw works test functions (tan(x), 1/x, ...), so the check is not vacuous."""
    kept = worked_functions(calculus_corpus.documents(4000, seed=0, held_out=held_out))
    assert len(kept) > 6000
    assert not keys(kept) & held_out
    unfiltered = worked_functions(calculus_corpus.documents(4000, seed=0, held_out=set()))
    assert len(keys(unfiltered) & held_out) >= 5


def test_held_out_keys_are_the_built_datasets_validation_and_test_functions(
    tmp_path, default_splits, held_out
):
    directory = tmp_path / "data"
    dataset.write_dataset(default_splits, DataConfig(dir=str(directory)))
    assert calculus_corpus.held_out_keys(directory) == held_out | benchmarks.held_out_keys()
    with pytest.raises(FileNotFoundError, match="make data"):
        calculus_corpus.held_out_keys(tmp_path / "nowhere")


def test_every_worked_derivative_is_right_and_in_the_prompts_notation():
    documents = calculus_corpus.documents(400, seed=5, held_out=set())
    pairs = re.findall(r"^f\(x\) = (.+)\nf'\(x\) = (.+)$", "\n".join(documents), flags=re.MULTILINE)
    assert len(pairs) >= 300
    for function, derivative in pairs:
        expr = parse_function(function)
        true = sp.diff(expr, X)
        assert same_values(parse_function(derivative), true, _interval(expr, true)), function
        assert (
            "**" not in function + derivative and "log(" not in function
        )  # typed, as people write


def test_the_corpus_holds_the_kinds_textbooks_ask_about():
    text = "\n".join(calculus_corpus.documents(2000, seed=0, held_out=set()))
    for kind in (
        "sec(",
        "csc(",
        "cot(",
        "arccos(",
        "arcsin(",
        "tanh(",
        "cosh(",
        "pi",
        "5^",
        "10^",
        "ln(x^2",
        "sqrt(",
        "^(-1/2)",
        "^(2/3)",
        "/(x^2",
        "rule by rule",
        "Differentiate",
    ):
        assert kind in text, kind


def test_practice_share_works_the_practice_kinds_and_leaves_the_default_draws_alone():
    """practice_share draws from make all's practice generators (functions with several
    transcendental factors come up far more often); 0 keeps the shipped recipe's documents."""

    def several(docs: list[str]) -> float:  # share of header functions with 2+ of them
        found = [
            expression_trees.transcendental_count(parse_function(line[len("f(x) = ") :])) >= 2
            for d in docs
            for line in d.splitlines()
            if line.startswith("f(x) = ")
        ]
        return sum(found) / len(found)

    default = calculus_corpus.documents(600, seed=2, held_out=set())
    assert calculus_corpus.documents(600, seed=2, held_out=set(), practice_share=0.0) == default
    practised = calculus_corpus.documents(600, seed=2, held_out=set(), practice_share=1.0)
    assert several(practised) > 2 * several(default) and several(practised) > 0.3


def test_long_share_works_practice_kinds_of_41_characters_and_more():
    """long_share draws practice kinds as long as the benchmarks' longest buckets; 0 keeps the
    shipped recipe's documents."""
    headers = lambda docs: [f for d in docs for f in _header_functions(d)]  # noqa: E731
    default = calculus_corpus.documents(300, seed=2, held_out=set(), practice_share=0.5)
    assert default == calculus_corpus.documents(
        300, seed=2, held_out=set(), practice_share=0.5, long_share=0.0
    )
    assert sum(len(f) >= calculus_corpus.LONG_CHARS for f in headers(default)) < 0.3 * len(
        headers(default)
    )
    long = headers(
        calculus_corpus.documents(300, seed=2, held_out=set(), textbook_share=0.0, long_share=1.0)
    )
    assert len(long) > 200
    assert all(calculus_corpus.LONG_CHARS <= len(f) <= 120 for f in long)


def test_power_share_works_power_practice():
    """power_share draws textbook_kinds.power_candidate (exponents past the curriculum's 2-7,
    other bases, symbolic constants); 0 keeps the shipped recipe's documents."""
    headers = lambda docs: [f for d in docs for f in _header_functions(d)]  # noqa: E731
    wide = re.compile(r"\^\(?-?(?:[89]|[1-9]\d)|\^pi|\bpi\b|\b[4-9]\^")  # x^17, x^(-9), 7^x, pi
    default = calculus_corpus.documents(300, seed=2, held_out=set(), practice_share=0.5)
    assert default == calculus_corpus.documents(
        300, seed=2, held_out=set(), practice_share=0.5, power_share=0.0
    )
    powers = headers(
        calculus_corpus.documents(300, seed=2, held_out=set(), textbook_share=0.0, power_share=1.0)
    )
    share = lambda functions: sum(bool(wide.search(f)) for f in functions) / len(functions)  # noqa: E731
    assert len(powers) > 150
    assert share(powers) > 0.6 and share(headers(default)) < 0.3


def test_the_same_arguments_give_the_same_documents():
    assert calculus_corpus.documents(200, 3, set()) == calculus_corpus.documents(200, 3, set())
    assert calculus_corpus.documents(200, 3, set()) != calculus_corpus.documents(200, 4, set())


def _header_functions(document: str) -> list[str]:
    return [line[len("f(x) = ") :] for line in document.splitlines() if line.startswith("f(x) = ")]
