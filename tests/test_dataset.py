import hashlib
import warnings

import numpy as np
import pytest
import sympy as sp

from derivative_animator.data import dataset
from derivative_animator.data.dataset_schema import DataConfig
from derivative_animator.math import curriculum, notation
from derivative_animator.math.parsing import X, parse_function


def test_default_sizes_levels_and_styles(default_splits):
    # train: the 418 asked for, 1.5 times as many again from expression trees (the fixture's
    # tree_practice), half as many of textbook kinds (its textbook_practice) and a tenth with
    # several transcendental factors (its combination_practice)
    assert {s: len(r) for s, r in default_splits.items()} == {
        "train": 418 + 627 + 209 + 42,
        "validation": 50,
        "test": 57,
    }
    assert sum(r.source == "expression-trees" for r in default_splits["train"]) == 627
    assert sum(r.source == "textbook-kinds" for r in default_splits["train"]) == 209
    assert sum(r.source == "combinations" for r in default_splits["train"]) == 42
    for split, records in default_splits.items():
        assert {r.level for r in records} == set(curriculum.LEVELS), split
        assert {r.style for r in records} == {"tangent", "secant", "graphs"}, split


def test_no_function_in_two_splits(default_splits):
    assert dataset.cross_split_duplicates(default_splits) == set()
    keys = [
        curriculum.canonical_key(parse_function(r.function))
        for records in default_splits.values()
        for r in records
    ]
    assert len(keys) == len(set(keys))


def test_every_scene_opens_with_the_prompt_s_function_as_decoding_writes_it(default_splits):
    """Decoding writes a scene's docstring opening with the prompt's function (decision 0016):
    every training scene must hold that very text, or training and inference part ways."""
    from derivative_animator.data.prompt import build_prompt
    from derivative_animator.data.scenes import docstring_opening

    for records in default_splits.values():
        for record in records:
            opening = docstring_opening(parse_function(record.function))
            assert record.completion.startswith(opening), record.function
            assert build_prompt(record.function) == record.prompt


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_config_gives_byte_identical_files(tmp_path):
    small = {"train": 40, "validation": 8, "test": 8}
    config = DataConfig(dir=str(tmp_path / "a"), sizes=small)
    first = _digest(dataset.build(config)[0])
    assert _digest(dataset.build(config)[0]) == first  # make data twice: same bytes, every file
    elsewhere = _digest(dataset.build(DataConfig(dir=str(tmp_path / "b"), sizes=small))[0])
    assert all(elsewhere[f] == first[f] for f in ("train.jsonl", "validation.jsonl", "test.jsonl"))
    other, _ = dataset.build(DataConfig(dir=str(tmp_path / "c"), sizes=small, seed=7))
    assert _digest(other)["train.jsonl"] != first["train.jsonl"]


def test_test_and_validation_functions_do_not_depend_on_the_train_size():
    small = dataset.generate_splits(DataConfig(sizes={"train": 8, "validation": 8, "test": 8}))
    large = dataset.generate_splits(DataConfig(sizes={"train": 40, "validation": 8, "test": 8}))
    for split in ("validation", "test"):
        assert [r.id for r in small[split]] == [r.id for r in large[split]]
    assert {r.id for r in small["train"]} < {r.id for r in large["train"]}  # train only grew


def test_rebuild_replaces_whole_directory_atomically(tmp_path):
    config = DataConfig(dir=str(tmp_path / "e"), sizes={"train": 4, "validation": 4, "test": 4})
    target, _ = dataset.build(config)
    (target / "stale.txt").write_text("old")
    dataset.build(config)
    assert not (target / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_exhausted_curriculum_is_a_clear_user_error(monkeypatch):
    monkeypatch.setattr(curriculum, "candidate", lambda level, rng: parse_function("x^2"))
    monkeypatch.setattr(dataset, "MAX_TRIES", 20)
    one = DataConfig(
        sizes={"train": 1, "validation": 0, "test": 0},
        levels=[1],
        tree_practice=0,
        textbook_practice=0,
        combination_practice=0,
    )
    assert [r.function for r in dataset.generate_splits(one)["train"]] == [
        "x^2"
    ]  # the one function there is
    with pytest.raises(ValueError, match="lower data.sizes"):
        dataset.generate_splits(
            DataConfig(
                sizes={"train": 2, "validation": 0, "test": 0},
                levels=[1],
                tree_practice=0,
                textbook_practice=0,
                combination_practice=0,
            )
        )


@pytest.mark.parametrize("level", curriculum.LEVELS)
def test_chunked_sampling_takes_what_drawing_one_at_a_time_takes(level):
    import random

    rng, seen, expected = random.Random(5), set(), []
    while len(expected) < 30:
        typed = notation.typed(curriculum.candidate(level, rng))
        expr = parse_function(typed)
        key = curriculum.canonical_key(expr)
        if key not in seen and curriculum.usable_at(expr, level) is not None:
            seen.add(key)
            expected.append(typed)
    chunked = random.Random(5)
    assert [
        typed for typed, _ in dataset._choose(level, 30, chunked, set(), [dataset._Here()])
    ] == expected
    assert chunked.random() == rng.random()  # rewound to just after the last one taken
    dataset._Here().shutdown()


def test_worker_processes_build_the_same_records_as_one_process():
    config = DataConfig(sizes={"train": 60, "validation": 8, "test": 8})
    assert dataset.generate_splits(config, workers=2) == dataset.generate_splits(config, workers=1)
    assert not dataset._JUDGED  # analyses are dropped once their scenes are written


def test_a_spike_does_not_choose_the_plotting_interval_but_never_refuses_a_function(monkeypatch):
    """ln(x)^3 is readable on (0.2, 3), where ln(0.2)^3 = -4.2 sets the y-range and squashes the
    rest; it gets the next readable interval. With only spiky intervals on offer it still gets
    one."""
    expr = parse_function("ln(x)^3")
    assert curriculum.analyse(expr).x_range == (0.5, 4)
    monkeypatch.setattr(curriculum, "CANDIDATE_INTERVALS", ((0.2, 3),))
    assert curriculum.analyse(expr).x_range == (0.2, 3)
    assert curriculum._spiky(np.array([0.0] * 98 + [1.0, 10.0])) and not curriculum._spiky(
        np.linspace(0, 1, 100)
    )


def test_a_function_numpy_computes_as_complex_is_real_only_where_its_imaginary_part_is_zero():
    """(-1)^(1/3) x is complex at every x but 0: its real part x/2 is no value of it, so no
    interval holds it. numpy computes sec(cosh(x)) through cos(1j*x), in complex numbers whose
    imaginary part is 0: a real function, plotted as before."""
    import sympy as sp

    x = curriculum.X
    complex_line = sp.Pow(-1, sp.Rational(1, 3), evaluate=False) * x
    assert not curriculum.defined_on(complex_line, sp.Integer(1), (1, 3))
    assert curriculum.plot_interval(complex_line, sp.Integer(1), wider=True) is None
    assert curriculum.analyse(complex_line) is None
    with warnings.catch_warnings():  # and no "casting complex values to real" in the output
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        assert curriculum.analyse(parse_function("sec(cosh(x))")).x_range == (-0.5, 0.5)


def test_wider_intervals_keep_tree_functions_the_curriculum_search_cannot_plot():
    """data.tree_wider_intervals: tree practice takes what the random benchmark takes."""
    from derivative_animator.data.dataset import tree_practice
    from derivative_animator.math import curriculum
    from derivative_animator.math.parsing import parse_function

    def narrow_misses(wider: bool) -> int:
        config = DataConfig(
            sizes={"train": 20, "validation": 0, "test": 0},
            tree_practice=1.0,
            tree_wider_intervals=wider,
        )
        records = tree_practice(config, set())
        assert len(records) == 20
        return sum(curriculum.analyse(parse_function(r.function)) is None for r in records)

    assert narrow_misses(False) == 0
    assert narrow_misses(True) > 0


@pytest.mark.parametrize(
    "practice, option, source",
    [
        ("textbook_practice", "textbook_practice", "textbook-kinds"),
        ("combination_practice", "combination_practice", "combinations"),
        ("power_practice", "power_practice", "powers"),
    ],
)
def test_practice_draws_new_functions_of_its_kind_and_no_held_out_one(practice, option, source):
    from derivative_animator.data import benchmarks
    from derivative_animator.math import curriculum
    from derivative_animator.math.parsing import parse_function

    draw = getattr(dataset, practice)
    config = DataConfig(sizes={"train": 60, "validation": 0, "test": 0}, **{option: 1.0})
    first = draw(config, set())
    keys = [curriculum.canonical_key(parse_function(r.function)) for r in first]
    assert len(first) == 60 == len(set(keys)) and {r.source for r in first} == {source}
    # what `seen` holds (the splits, every benchmark) is never drawn again
    held_out = benchmarks.held_out_keys() | set(keys[:30])
    again = draw(config, set(held_out))
    assert not {curriculum.canonical_key(parse_function(r.function)) for r in again} & held_out
    assert [r.function for r in draw(config, set())] == [r.function for r in first]


def test_combination_practice_holds_several_transcendental_factors():
    from derivative_animator.math import expression_trees

    config = DataConfig(sizes={"train": 60, "validation": 0, "test": 0}, combination_practice=1.0)
    records = dataset.combination_practice(config, set())
    several = [
        r.function
        for r in records
        if expression_trees.transcendental_count(parse_function(r.function)) >= 2
    ]
    assert len(several) >= 0.6 * len(records)  # tree practice: about 15% at 21-40 characters
    assert "chars_21_40" in {expression_trees.length_bucket(f) for f in several}


def test_power_practice_writes_the_exponents_and_constants_tree_practice_lacks():
    """make all's fine-tune decrements only the exponents it practised ((...)^9 -> ^4); power
    practice holds integer powers past 7, negative powers past 3, fractions, decimals and
    irrational exponents, and constants such as e^4 and sqrt(53)."""
    config = DataConfig(sizes={"train": 80, "validation": 0, "test": 0}, power_practice=1.0)
    exponents, constants = set(), set()
    for record in dataset.power_practice(config, set()):
        expr = parse_function(record.function)
        exponents |= {p.exp for p in expr.atoms(sp.Pow) if p.base.has(X) and not p.exp.has(X)}
        constants |= {term for term in sp.Add.make_args(expr) if not term.has(X)}
    assert any(e.is_Integer and e >= 8 for e in exponents)
    assert any(e.is_Integer and e <= -4 for e in exponents)
    assert any(e.is_Rational and not e.is_Integer and e.q not in (2, 3, 4) for e in exponents)
    assert any(not e.is_Rational for e in exponents)  # x^pi, x^e, x^sqrt(2)
    assert any(not c.is_Rational for c in constants)  # e^4, pi^2, sqrt(53)
