"""Importing the original project's dataset (data/dataset_import.py)."""

import json

import pytest

from derivative_animator.data import dataset
from derivative_animator.data.dataset_import import import_original
from derivative_animator.data.dataset_schema import DataConfig


def test_import_original_dataset(tmp_path):
    items = [
        {
            "instruction": "Generate Manim animation code for the derivative of: f(x) = x^2",
            "input": "",
            "output": "from manim import *\nclass A(Scene):\n    def construct(self): pass\n",
        },
        {"instruction": "Generate Manim code", "input": "sin(x)cos(x)", "output": "code 2"},
        {"instruction": "x", "input": "e^{-x^2}", "output": "code 3"},
        {"instruction": "x", "input": "x^3 - x", "output": "code 4"},
        {"instruction": "x", "input": "x^2", "output": "duplicate of record 0"},
    ]
    source = tmp_path / "instruction_dataset.json"
    source.write_text(json.dumps(items))
    config = DataConfig(dir=str(tmp_path / "imported"), import_path=str(source))
    _target, splits = dataset.build(config)
    records = [r for s in splits.values() for r in s]
    assert sorted(r.function for r in records) == sorted(
        ["x^2", "sin(x) cos(x)", "e^(-x^2)", "x^3 - x"]
    )
    assert {r.source for r in records} == {"instruction_dataset.json"}
    assert {r.level for r in records} == {1, 3, 4}
    assert dataset.cross_split_duplicates(splits) == set()


@pytest.mark.parametrize(
    "item, message",
    [
        ({"instruction": "no function here", "input": "", "output": "x"}, "record 1: has no input"),
        ({"instruction": "x", "input": "foo(x)", "output": "x"}, "record 1: unknown name 'foo'"),
        ({"instruction": "x", "input": "x^2"}, "record 1: needs an object"),
        ({"instruction": "x", "input": "7", "output": "x"}, "record 1: function '7' is constant"),
    ],
)
def test_malformed_original_record_is_named(tmp_path, item, message):
    source = tmp_path / "bad.json"
    source.write_text(json.dumps([{"instruction": "x", "input": "x^2", "output": "ok"}, item]))
    with pytest.raises(ValueError, match=message):
        import_original(source, DataConfig())
