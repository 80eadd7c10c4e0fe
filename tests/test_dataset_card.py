"""The dataset card (data/dataset_card.py), written beside the splits."""

import hashlib
import json

from derivative_animator.data import dataset
from derivative_animator.data.dataset_card import CARD_FILE
from derivative_animator.data.dataset_schema import DataConfig
from derivative_animator.data.prompt import DEFAULT_FORMAT


def test_card_and_prompt_format_written(tmp_path):
    config = DataConfig(dir=str(tmp_path / "d"), sizes={"train": 12, "validation": 4, "test": 4})
    target, splits = dataset.build(config)
    card = json.loads((target / CARD_FILE).read_text())
    # the curriculum's 12, then the practice shares of it: trees, textbook kinds, combinations
    practice = sum(
        round(12 * share)
        for share in (config.tree_practice, config.textbook_practice, config.combination_practice)
    )
    assert config.tree_practice > 0 and card["splits"]["train"]["count"] == 12 + practice
    assert card["prompt_format"]["sha256"] == DEFAULT_FORMAT.sha256
    assert (
        card["files_sha256"]["train.jsonl"]
        == hashlib.sha256((target / "train.jsonl").read_bytes()).hexdigest()
    )
    assert "Dataset card" in (target / "README.md").read_text()
    assert (
        json.loads((target / "prompt_format.json").read_text())["template"]
        == DEFAULT_FORMAT.template
    )
    assert [r.id for r in dataset.read_split(target, "train")] == [r.id for r in splits["train"]]
