"""Shared fixtures: a small dataset built once per session, and the template oracle."""

from __future__ import annotations

import pytest

from derivative_animator import dataset


@pytest.fixture(scope="session")
def default_splits():
    """The default 418/50/57 dataset, generated in memory (a few seconds)."""
    return dataset.generate_splits(dataset.DataConfig())


@pytest.fixture(scope="session")
def all_records(default_splits):
    return [record for split in dataset.SPLITS for record in default_splits[split]]
