"""The benchmarks: sourced, parseable, frozen, and never touched by any training data (the
dataset's splits, the shipped base's pretraining corpus, the practice generators)."""

import json

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from derivative_animator import paths
from derivative_animator.data import benchmarks, calculus_corpus, dataset
from derivative_animator.data.dataset_card import CARD_FILE
from derivative_animator.data.dataset_schema import DataConfig
from derivative_animator.math import curriculum, expression_trees, notation, textbook_kinds
from derivative_animator.math.parsing import parse_function
from derivative_animator.model import base_model, base_publish


def keys(functions) -> set[str]:
    return {curriculum.canonical_key(parse_function(f)) for f in functions}


def test_every_textbook_exercise_names_its_book_section_and_number_and_parses():
    items = benchmarks.items("textbook")
    assert len(items) >= 100
    assert {item.source.split(" ")[0] for item in items} >= {"Active", "APEX", "CLP-1"}
    assert not any("OpenStax" in item.source or "Lumen" in item.source for item in items)
    for item in items:
        assert "exercise" in item.source and parse_function(item.text) is not None, item


def test_the_benchmarks_span_every_kind():
    for name, least in (("textbook", 3), ("random", 3)):
        kinds = [
            k
            for item in benchmarks.items(name)
            for k in expression_trees.kinds(parse_function(item.text))
        ]
        for kind in expression_trees.KINDS:
            assert kinds.count(kind) >= least, (name, kind)


def test_no_benchmark_function_is_in_any_dataset_split(default_splits):
    held_out = benchmarks.held_out_keys()
    assert len(held_out) >= 300
    for split, records in default_splits.items():
        assert not keys(r.function for r in records) & held_out, split


def test_the_dataset_builder_passes_over_a_benchmark_function_it_draws(monkeypatch):
    """Make the first test function of a small build a benchmark's: the same build then leaves it
    out."""
    config = DataConfig(sizes={"train": 8, "validation": 4, "test": 4})
    first = dataset.generate_splits(config)["test"]
    taken = keys(r.function for r in first)
    monkeypatch.setattr(dataset.benchmarks, "held_out_keys", lambda: frozenset(taken))
    rebuilt = dataset.generate_splits(config)
    assert not keys(r.function for split in rebuilt.values() for r in split) & taken


@pytest.mark.parametrize(
    "shares", [{}, {"practice_share": 0.5}, {"long_share": 0.5}, {"power_share": 0.5}]
)
def test_the_corpus_writer_never_works_a_benchmark_function(shares):
    """The shipped base's recipe (seed 0), its first 4,000 draws, and ones with make all's
    practice kinds, short or long, or power practice: without the filter they work benchmark
    functions (tan(x), sec(x), arcsin(2x) ...), so the check is not vacuous."""
    held_out = set(benchmarks.held_out_keys())
    worked = lambda docs: keys(f for d in docs for f in _functions(d))  # noqa: E731
    write = lambda held: calculus_corpus.documents(4000, seed=0, held_out=held, **shares)  # noqa: E731
    assert len(worked(write(set())) & held_out) >= 5
    assert not worked(write(held_out)) & held_out


def _functions(document: str) -> list[str]:
    return [line[len("f(x) = ") :] for line in document.splitlines() if line.startswith("f(x) = ")]


def test_the_shipped_base_was_pretrained_without_any_benchmark_or_held_out_function(default_splits):
    """Each stage's build recorded the digest of the canonical forms its corpus left out: they
    are the default dataset's validation and test functions and every benchmark's, as they are
    now."""
    model = compose_config("train", "model=tiny").model
    recipe = base_model.recipe_stages(OmegaConf.to_container(model, resolve=True))
    info = json.loads((paths.resolve(model.build.publish_dir) / base_model.BUILD_INFO).read_text())
    held_out = keys(
        r.function for split in calculus_corpus.HELD_OUT_SPLITS for r in default_splits[split]
    )
    expected = benchmarks.keys_sha256(held_out | benchmarks.held_out_keys())
    stages = base_publish.recorded_stages(info)
    assert len(stages) == len(recipe) > 1
    assert [stage["held_out_sha256"] for stage in stages] == [expected] * len(recipe)


def test_the_random_benchmark_holds_no_textbook_function():
    textbook = keys(item.text for item in benchmarks.items("textbook"))
    random_set = keys(item.text for item in benchmarks.items("random"))
    assert len(random_set) == benchmarks.RANDOM_SIZE and not random_set & textbook


@pytest.mark.slow
def test_the_random_benchmark_is_the_draw_of_its_seed():
    """benchmarks/random.txt is what its seed draws today: the file is the generator's, not
    edited."""
    textbook = frozenset(keys(item.text for item in benchmarks.items("textbook")))
    assert benchmarks.draw_random(exclude=textbook) == [
        item.text for item in benchmarks.items("random")
    ]


@pytest.mark.slow
def test_the_oracle_animates_every_benchmark_function_but_two():
    """Left out of the evaluation (with a note): the constant pi, and a 27th power whose values
    pass 1e4 wherever it is real and not flat. Every other function gets a scene."""
    not_animated = [
        item.id
        for name in benchmarks.names()
        for item in benchmarks.items(name)
        if curriculum.analyse(parse_function(item.text), wider=True) is None
    ]
    assert not_animated == ["textbook-001", "textbook-051"]


def test_a_dataset_built_before_the_benchmarks_changed_is_refused(tmp_path, default_splits):
    directory = tmp_path / "data"
    dataset.write_dataset(default_splits, DataConfig(dir=str(directory)))
    assert len(dataset.read_split(directory, "test")) == 57
    card = json.loads((directory / CARD_FILE).read_text())
    card["benchmarks_sha256"] = "0" * 64  # built when the benchmarks held other functions
    (directory / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="rebuild it with `make data`"):
        dataset.read_split(directory, "test")


def test_a_build_with_practice_has_no_duplicate_and_no_benchmark_function():
    config = DataConfig(
        sizes={"train": 6, "validation": 3, "test": 3},
        tree_practice=2,
        combination_practice=1,
        power_practice=1,
    )
    splits = dataset.generate_splits(config)
    assert sum(r.source == "expression-trees" for r in splits["train"]) == 12
    assert sum(r.source == "combinations" for r in splits["train"]) == 6
    assert sum(r.source == "powers" for r in splits["train"]) == 6
    assert not dataset.cross_split_duplicates(splits)
    assert (
        not keys(r.function for split in splits.values() for r in split)
        & benchmarks.held_out_keys()
    )
    with pytest.raises(ValueError, match="tree_practice is a share of data.sizes.train"):
        DataConfig(tree_practice=-1)
    with pytest.raises(ValueError, match="combination_practice is a share of data.sizes.train"):
        DataConfig(combination_practice=11)
    with pytest.raises(ValueError, match="power_practice is a share of data.sizes.train"):
        DataConfig(power_practice=-0.5)


def test_tree_practice_is_seeded_new_to_the_splits_and_never_a_benchmarks():
    # the curriculum's interval search: its first 25 draws of this seed meet benchmark functions
    config = DataConfig(
        sizes={"train": 4, "validation": 2, "test": 2},
        tree_practice=6.25,
        tree_wider_intervals=False,
    )
    taken = {curriculum.canonical_key(parse_function("x^2"))}
    first = dataset.tree_practice(config, set(benchmarks.held_out_keys()) | taken)
    again = dataset.tree_practice(config, set(benchmarks.held_out_keys()) | taken)
    assert [r.function for r in first] == [r.function for r in again] and len(first) == 25
    assert {r.source for r in first} == {"expression-trees"}
    assert not keys(r.function for r in first) & (benchmarks.held_out_keys() | taken)
    without = dataset.tree_practice(config, set(taken))  # the filter is what keeps them out
    assert keys(r.function for r in without) & benchmarks.held_out_keys()


def test_the_reinforcement_stage_never_draws_a_held_out_function(default_splits):
    """model/reinforce.py's functions (dataset.reinforcement_functions): seeded by step, both
    generators, never a validation, test or benchmark function; the filter is what keeps out the
    ones the same draw gives without it."""
    held_out = set(benchmarks.held_out_keys()) | keys(
        r.function for split in ("validation", "test") for r in default_splits[split]
    )
    draw = [
        dataset.reinforcement_functions("rl-test", s, 8, 0.5, 0.0, False, held_out)
        for s in range(4)
    ]
    assert draw[0] == dataset.reinforcement_functions("rl-test", 0, 8, 0.5, 0.0, False, held_out)
    assert all(len(step) == 8 for step in draw) and draw[0] != draw[1]
    assert not keys(f for step in draw for f in step) & held_out
    unfiltered = dataset.reinforcement_functions("rl-test", 0, 8, 0.5, 0.0, False, set())
    assert unfiltered == [  # the draw before textbook_share and wider_intervals existed
        "x^(1/3)",
        "4x^(3/2)",
        "(8x^2/5 - 8x)/(x (2 - x))",
        "2x^3 + 9x^2 + 7x",
        "x^(3/2)",
        "ln(x)",
        "x^2",
        "3^(1 - 4x) (4x^(3/4) + 2)",
    ]
    taken = keys(unfiltered)
    filtered = dataset.reinforcement_functions("rl-test", 0, 8, 0.5, 0.0, False, taken)
    assert len(filtered) == 8 and not keys(filtered) & taken


def test_reinforcement_practice_of_textbook_kinds_comes_from_their_generator(monkeypatch):
    """reinforce.textbook_share 1: every function is a textbook_kinds candidate, usable on the
    wider search's interval, none held out; shares that do not add up are refused."""
    drawn = set()

    def recorded(rng):
        expr = textbook_kinds.textbook_candidate(rng)
        drawn.add(curriculum.canonical_key(parse_function(notation.typed(expr))))
        return expr

    searches = []

    def analysed(expr, wider=False):
        searches.append(wider)
        return analyse(expr, wider)

    analyse = curriculum.analyse
    monkeypatch.setattr(dataset, "textbook_candidate", recorded)
    monkeypatch.setattr(curriculum, "analyse", analysed)
    held_out = set(benchmarks.held_out_keys())
    chosen = dataset.reinforcement_functions("rl-test", 0, 8, 0.0, 1.0, True, held_out)
    assert len(chosen) == 8 and keys(chosen) <= drawn and not keys(chosen) & held_out
    assert searches and all(searches)  # every function judged on the wider search's intervals
    with pytest.raises(ValueError, match="must be shares"):
        dataset.reinforcement_functions("rl-test", 0, 8, 0.5, 0.6, True, held_out)
