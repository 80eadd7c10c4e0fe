"""Importing the original project's dataset (`instruction_dataset.json`: records with
instruction/input/output) into our schema and splits, as `make data` does with
`data=original data.import_path=...`. Each record's function is parsed and analysed (level,
rule steps, plotting interval); the record keeps the original's scene as its completion and the
file's name as its source. A function seen before, or a benchmark's, is passed over."""

from __future__ import annotations

import json
import random
from pathlib import Path

from derivative_animator.data import benchmarks
from derivative_animator.data.dataset_schema import SPLITS, DataConfig, Record, make_record
from derivative_animator.math import curriculum
from derivative_animator.math.differentiate import UnsupportedFunction
from derivative_animator.math.parsing import ParseError, parse_function


class ImportError_(ValueError):
    """A record of the original dataset cannot be imported."""


def _function_text(item: dict) -> str:
    text = (item.get("input") or "").strip()
    if not text:
        instruction = item.get("instruction", "")
        marker = "f(x) ="
        if marker not in instruction:
            raise ImportError_("has no input and its instruction names no 'f(x) = ...'")
        text = instruction.split(marker, 1)[1].strip().splitlines()[0]
    return text


def import_original(path: Path, config: DataConfig) -> dict[str, list[Record]]:
    """Read instruction_dataset.json (records with instruction/input/output) into our schema
    and splits. A malformed record stops the import with a message naming it."""
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ImportError_(f"{path}: cannot read JSON ({err})") from None
    if not isinstance(items, list):
        raise ImportError_(f"{path}: expected a JSON list of records")
    seen: set[str] = set(
        benchmarks.held_out_keys()
    )  # a benchmark's function is passed over, as in a build
    by_level: dict[int, list[Record]] = {level: [] for level in curriculum.LEVELS}
    for index, item in enumerate(items):
        where = f"{path.name} record {index}"
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("output"), str)
            or not item["output"].strip()
        ):
            raise ImportError_(f"{where}: needs an object with a non-empty 'output' string")
        try:
            expr = parse_function(_function_text(item))
            analysed = curriculum.analyse(expr)
        except (ParseError, UnsupportedFunction, ImportError_) as err:
            raise ImportError_(f"{where}: {err}") from None
        if analysed is None:
            raise ImportError_(
                f"{where}: function {item.get('input')!r} is constant or cannot be plotted"
            )
        key = curriculum.canonical_key(expr)
        if key in seen:
            continue  # the same function twice would leak across splits; a benchmark's never enters
        seen.add(key)
        by_level[analysed.level].append(
            make_record(analysed, "imported", path.name, item["output"])
        )
    return _deal(by_level, config)


def _deal(by_level: dict[int, list[Record]], config: DataConfig) -> dict[str, list[Record]]:
    """Stratified split of imported records in the proportions of config.sizes."""
    total = sum(config.sizes.values()) or 1
    splits: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for level, records in sorted(by_level.items()):
        records = sorted(records, key=lambda r: r.id)
        random.Random(f"{config.seed}-import-{level}").shuffle(records)
        n_test = round(len(records) * config.sizes["test"] / total)
        n_validation = round(len(records) * config.sizes["validation"] / total)
        splits["test"].extend(records[:n_test])
        splits["validation"].extend(records[n_test : n_test + n_validation])
        splits["train"].extend(records[n_test + n_validation :])
    return splits
