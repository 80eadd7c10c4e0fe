"""The dataset's schema (data/dataset_schema.py): the config refuses what it cannot build, and a
record is consistent with the prompt format and its scene."""

import pytest

from derivative_animator.data.dataset_schema import DataConfig
from derivative_animator.data.prompt import DEFAULT_FORMAT


def test_records_are_consistent(all_records):
    for record in all_records:
        assert record.prompt == DEFAULT_FORMAT.format(record.function)
        assert "\nf'(x) = " in record.completion and "from manim import *" in record.completion
        assert 4000 < len(record.completion) < 10_000
        assert record.steps and record.x_range[0] < record.x_range[1]


@pytest.mark.parametrize("sizes", [{"train": -1, "validation": 1, "test": 1}, {"train": 1}])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(ValueError, match="data.sizes"):
        DataConfig(sizes=sizes)
