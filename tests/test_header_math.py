"""eval/header_math.py: greedy headers judged without rendering."""

from __future__ import annotations

import re

import pytest

from derivative_animator.data import oracle
from derivative_animator.eval import header_math
from derivative_animator.math.header import MATH_HEADER_END
from derivative_animator.model.checkpoint_files import TRAINED_CONFIG
from derivative_animator.model.generate import Generation

TYPED = ["x^3 - 2x", "sin(2x) e^x", "ln(x^2 + 1)", "sqrt(x) cos(x)"]
UNSPLIT = {"by_length": {}, "by_transcendental": {}}  # a faked report's empty breakdowns


def judge_nothing_really(monkeypatch) -> list:
    """header_math.main with no data and a faked judging: the generators it would judge, listed."""
    judged: list = []
    monkeypatch.setattr(
        header_math,
        "header_math",
        lambda generator, sets, limit=None, max_new_tokens=None: (
            judged.append(generator)
            or {"test": {"n": 1, "math_pct": 100.0, "right": TYPED[:1], **UNSPLIT}}
        ),
    )
    monkeypatch.setattr(header_math, "function_sets", lambda data: {})
    return judged


def fake_checkpoint(directory):
    """A directory that passes for a fine-tuned checkpoint: a model config and a run config."""
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / TRAINED_CONFIG).write_text("{}")
    return directory


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
    pct = round(100 * len(expected) / 4, 1)
    assert report["a"] == {
        "n": 4,
        "math_pct": pct,
        "right": expected,
        "by_length": {"chars_1_20": {"n": 4, "math_pct": pct}},
        "by_transcendental": {
            bucket: {"n": n, "math_pct": round(100 * sum(f not in wrong for f in fs) / n, 1)}
            for bucket, fs in {
                "transcendental_0": TYPED[:1],
                "transcendental_1": TYPED[2:],
                "transcendental_2_up": TYPED[1:2],
            }.items()
            for n in [len(fs)]
        },
    }
    assert report["b"]["right"] == [f for f in TYPED[:2] if f not in wrong]


def test_counts_by_length_as_typed():
    long = "x^3 sin(x) + ln(x^2 + 1) - 2x"  # 29 characters
    report = header_math.header_math(HeaderWriter([long, TYPED[0]]), {"a": [*TYPED, long]})
    assert report["a"]["by_length"] == {
        "chars_1_20": {"n": 4, "math_pct": 75.0},
        "chars_21_40": {"n": 1, "math_pct": 0.0},
    }


def test_counts_by_how_many_transcendental_functions_a_function_applies():
    several = "(sin(x) + cos(x))/(cos(x) - sin(x))"
    report = header_math.header_math(HeaderWriter([several]), {"a": [*TYPED, "sqrt(x^2 + 1)"]})
    assert report["a"]["by_transcendental"] == {
        "transcendental_0": {"n": 2, "math_pct": 100.0},  # x^3 - 2x; sqrt is algebraic
        "transcendental_1": {"n": 2, "math_pct": 100.0},
        "transcendental_2_up": {"n": 1, "math_pct": 100.0},  # sin(2x) e^x
    }
    report = header_math.header_math(HeaderWriter([several]), {"a": [several, "2^x x^3"]})
    assert report["a"]["by_transcendental"] == {
        "transcendental_1": {"n": 1, "math_pct": 100.0},  # a^x is transcendental, x^3 is not
        "transcendental_2_up": {"n": 1, "math_pct": 0.0},
    }


def test_the_train_sample_takes_up_to_n_train_functions_of_each_length(micro_data):
    from derivative_animator.data import dataset
    from derivative_animator.math.expression_trees import length_bucket

    train = {r.function for r in dataset.read_split(micro_data, "train")}
    sample = header_math.train_sample(micro_data, 2)
    assert sample == header_math.train_sample(micro_data, 2) and set(sample) <= train
    lengths = [length_bucket(f) for f in sample]
    assert len(set(lengths[:2])) == min(2, len(set(lengths)))  # lengths take turns (--limit)
    for bucket in {length_bucket(f) for f in train}:
        have = sum(length_bucket(f) == bucket for f in train)
        assert lengths.count(bucket) == min(2, have), bucket


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


def test_several_seeds_are_reported_each_and_by_their_median(tmp_path, monkeypatch, capsys):
    import json

    from derivative_animator.model import generate

    models = []
    for seed in (42, 43, 44):
        models.append(tmp_path / f"seed{seed}")
        fake_checkpoint(models[-1])
    right = {"seed42": 4, "seed43": 1, "seed44": 2}  # of 4 test functions (mean 58.3); random: none
    monkeypatch.setattr(generate.SceneGenerator, "load", staticmethod(lambda path: path.name))
    monkeypatch.setattr(
        header_math,
        "header_math",
        lambda name, sets, limit=None, max_new_tokens=None: (
            budgets.append(max_new_tokens)
            or {
                "test": {
                    "n": 4,
                    "math_pct": 25.0 * right[name],
                    "right": TYPED[: right[name]],
                    **UNSPLIT,
                },
                "random": {"n": 4, "math_pct": 0.0, "right": [], **UNSPLIT},
            }
        ),
    )
    read: list[str] = []
    budgets: list[int] = []
    monkeypatch.setattr(header_math, "function_sets", lambda data: read.append(data) or {})
    out = tmp_path / "seeds.json"
    argv = ["--model", *map(str, models), "--out", str(out), "--max-new-tokens", "800"]
    assert header_math.main(argv) == 0
    assert budgets == [800] * 3
    printed = capsys.readouterr().out
    assert "median of 3" in printed and "test        50.0%" in printed.split("median of 3")[1]
    written = json.loads(out.read_text())
    assert [m["test"]["math_pct"] for m in written["models"]] == [100.0, 25.0, 50.0]
    assert written["median"] == {"test": 50.0, "random": 0.0}
    assert read == ["data/derivatives"] * 3  # no run config beside these: make all's dataset


def test_a_checkpoint_is_judged_on_the_test_split_its_run_was_trained_with(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 43\ndata:\n  dir: /work/data-B\n")
    assert header_math.trained_on(run / "checkpoint" / "merged") == "/work/data-B"
    assert header_math.trained_on(tmp_path / "elsewhere" / "merged") == "data/derivatives"


def test_one_model_that_is_no_checkpoint_refuses_the_whole_run(tmp_path, capsys):
    good = tmp_path / "good"
    fake_checkpoint(good)
    assert header_math.main(["--model", str(good), str(tmp_path / "missing")]) == 2
    assert "missing is not a checkpoint" in capsys.readouterr().err


def test_base_judges_each_checkpoints_base_model_not_the_fine_tuned_one(
    tmp_path, monkeypatch, capsys
):
    import json

    from derivative_animator.eval import baselines
    from derivative_animator.model import generate

    model = tmp_path / "merged"
    fake_checkpoint(model)
    monkeypatch.setattr(generate.SceneGenerator, "load", staticmethod(lambda path: "fine-tuned"))
    monkeypatch.setattr(baselines, "base_generator", lambda path: f"base of {path.name}")
    judged = judge_nothing_really(monkeypatch)
    out = tmp_path / "base.json"
    assert header_math.main(["--model", str(model), "--base", "--out", str(out)]) == 0
    assert header_math.main(["--model", str(model)]) == 0
    assert judged == ["base of merged", "fine-tuned"]
    assert "its base model, not fine-tuned" in capsys.readouterr().out
    assert json.loads(out.read_text())["base"] is True


def test_a_bare_base_is_refused_in_one_line_unless_judged_as_a_base(tmp_path, monkeypatch, capsys):
    from derivative_animator.eval import baselines

    stage = tmp_path / "tiny-practised-5P"  # as pretraining leaves it: no run config, no prompt
    stage.mkdir()
    (stage / "config.json").write_text("{}")
    assert header_math.main(["--model", str(stage)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a base model" in err[0] and "--base" in err[0]
    monkeypatch.setattr(baselines, "base_generator", lambda path: f"base {path.name}")
    judged = judge_nothing_really(monkeypatch)
    assert header_math.main(["--model", str(stage), "--base"]) == 0
    assert judged == ["base tiny-practised-5P"]


def test_a_hand_made_checkpoint_is_judged_but_its_unknown_base_is_refused(
    tmp_path, monkeypatch, capsys
):
    from derivative_animator.data.prompt import DEFAULT_FORMAT
    from derivative_animator.model import generate

    model = tmp_path / "hand-made"  # a model and its prompt format, no training run's config
    model.mkdir()
    (model / "config.json").write_text("{}")
    DEFAULT_FORMAT.save(model)
    monkeypatch.setattr(generate.SceneGenerator, "load", staticmethod(lambda path: path.name))
    judge_nothing_really(monkeypatch)
    assert header_math.main(["--model", str(model)]) == 0
    assert header_math.main(["--model", str(model), "--base"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "base model is unknown" in err[0]


def test_a_bare_base_loads_as_it_is_with_the_prompt_format_fine_tuning_gives_it(
    micro_checkpoint, tmp_path
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from derivative_animator.data.prompt import DEFAULT_FORMAT
    from derivative_animator.eval import baselines

    stage = tmp_path / "stage"  # a pretraining stage's files, saved in bf16: no prompt format
    saved = AutoModelForCausalLM.from_pretrained(micro_checkpoint, dtype=torch.bfloat16)
    saved.save_pretrained(stage)
    AutoTokenizer.from_pretrained(micro_checkpoint).save_pretrained(stage)
    generator = baselines.base_generator(stage)
    assert generator.prompt_format == DEFAULT_FORMAT and generator.checkpoint == stage
    assert generator.model.dtype == torch.bfloat16  # the dtype it was saved in
    loaded = generator.model.state_dict()
    assert all(torch.equal(loaded[name], weight) for name, weight in saved.state_dict().items())
    # a checkpoint with a prompt format but no run config is no base, and names none
    with pytest.raises(ValueError, match="base model is unknown"):
        baselines.base_generator(micro_checkpoint)


def test_against_an_earlier_report_prints_what_each_set_gained_and_lost(
    tmp_path, monkeypatch, capsys
):
    import json

    from derivative_animator.model import generate

    model = tmp_path / "merged"
    fake_checkpoint(model)
    earlier = tmp_path / "earlier.json"
    earlier.write_text(
        json.dumps(
            {
                "model": "first-fit",
                "base": False,
                "test": {"n": 4, "math_pct": 50.0, "right": TYPED[:2], **UNSPLIT},
                "train": {"n": 4, "math_pct": 0.0, "right": [], **UNSPLIT},
            }
        )
    )
    monkeypatch.setattr(generate.SceneGenerator, "load", staticmethod(lambda path: path))
    monkeypatch.setattr(
        header_math,
        "header_math",
        lambda generator, sets, limit=None, max_new_tokens=None: {
            "test": {"n": 4, "math_pct": 50.0, "right": TYPED[1:3], **UNSPLIT},
            "random": {"n": 1, "math_pct": 100.0, "right": ["x^2"], **UNSPLIT},
        },
    )
    monkeypatch.setattr(header_math, "function_sets", lambda data: {})
    out = tmp_path / "now.json"
    argv = ["--model", str(model), "--against", str(earlier), "--out", str(out)]
    assert header_math.main(argv) == 0
    printed = capsys.readouterr().out.split("against first-fit:\n")[1]
    # the same percentage, one function gained and one lost; a set only one report has: none
    assert printed == f"test       +1 -1\n  + {TYPED[2]}\n  - {TYPED[0]}\n"
    written = json.loads(out.read_text())
    assert written["against"] == {
        "model": "first-fit",
        "changes": {"test": {"gained": [TYPED[2]], "lost": [TYPED[0]]}},
    }
    # the report it wrote is one a later run can be judged against
    assert header_math.changes(header_math.read_report(out), written)["test"]["lost"] == []


def test_against_a_report_that_is_not_one_models_is_refused_in_one_line(tmp_path, capsys):
    import json

    model = tmp_path / "merged"
    fake_checkpoint(model)
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps({"models": [], "median": {}}))
    for report in (seeds, tmp_path / "missing.json"):
        assert header_math.main(["--model", str(model), "--against", str(report)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and str(report) in err[0]
