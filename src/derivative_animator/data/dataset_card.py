"""The dataset card, written beside the splits: `card.json` (the config and its hash, the prompt
format, each split's levels, styles and code lengths, every file's hash, the benchmarks it leaves
out) and `README.md`, the same for people. Reading a split checks the card's benchmarks hash.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from derivative_animator.data import benchmarks
from derivative_animator.data.dataset_schema import DataConfig, Record
from derivative_animator.data.prompt import DEFAULT_FORMAT
from derivative_animator.math import curriculum

CARD_FILE = "card.json"


def write_card(
    directory: Path,
    splits: dict[str, list[Record]],
    config: DataConfig,
    file_hashes: dict[str, str],
) -> None:
    info = card(splits, config, file_hashes)
    (directory / CARD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (directory / "README.md").write_text(card_markdown(info))


def require_current_benchmarks(directory: Path, as_given: str | Path) -> None:
    """Refuse a dataset whose card says it was built before the benchmarks it must leave out
    changed (it may hold one of them now). `as_given`: the directory as the user named it."""
    card_path = directory / CARD_FILE
    if (
        card_path.is_file()
        and json.loads(card_path.read_text()).get("benchmarks_sha256") != benchmarks.digest()
    ):
        raise ValueError(
            f"{directory} was built before the benchmarks it must leave out (benchmarks/) "
            "changed: rebuild it with `make data` "
            f"(python -m derivative_animator.dataset data.dir={as_given})"
        )


def card(splits: dict[str, list[Record]], config: DataConfig, file_hashes: dict[str, str]) -> dict:
    def stats(records):
        lengths = [len(r.completion) for r in records] or [0]
        return {
            "count": len(records),
            "levels": {
                str(level): sum(r.level == level for r in records) for level in curriculum.LEVELS
            },
            "styles": {
                style: n
                for style in sorted({r.style for r in records})
                if (n := sum(r.style == style for r in records))
            },
            "code_chars": {
                "mean": round(statistics.mean(lengths), 1),
                "median": statistics.median(lengths),
                "min": min(lengths),
                "max": max(lengths),
            },
        }

    return {
        "name": Path(config.dir).name,
        "config": config.to_dict(),
        "config_sha256": config.sha256,
        "prompt_format": DEFAULT_FORMAT.to_dict(),
        "splits": {split: stats(records) for split, records in splits.items()},
        "files_sha256": file_hashes,
        # what it leaves out; read_split refuses it once they change (require_current_benchmarks)
        "benchmarks_sha256": benchmarks.digest(),
        "levels": {str(k): v for k, v in curriculum.LEVEL_NAMES.items()},
    }


def card_markdown(info: dict) -> str:
    lines = [
        f"# Dataset card: {info['name']}",
        "",
        (
            "Pairs of (function, Manim scene animating its derivative), generated and checked by "
            "`python -m derivative_animator.dataset`. Regenerate with `make data`; the same config "
            "gives byte-identical files."
        ),
        "",
        f"- config sha256: `{info['config_sha256']}`",
        f"- prompt format: `{info['prompt_format']['name']}` "
        f"(sha256 `{info['prompt_format']['sha256']}`)",
        "",
        "| split | samples | "
        + " | ".join(f"L{k}" for k in info["levels"])
        + " | styles | code chars mean (min-max) |",
        "|---|---|" + "---|" * len(info["levels"]) + "---|---|",
    ]
    for split, s in info["splits"].items():
        styles = ", ".join(f"{k} {v}" for k, v in s["styles"].items())
        c = s["code_chars"]
        lines.append(
            f"| {split} | {s['count']} | "
            + " | ".join(str(v) for v in s["levels"].values())
            + f" | {styles} | {c['mean']} ({c['min']}-{c['max']}) |"
        )
    lines += [
        "",
        "Levels: " + "; ".join(f"{k} {v}" for k, v in info["levels"].items()),
        "",
        "Config:",
        "",
        "```json",
        json.dumps(info["config"], indent=2),
        "```",
        "",
        "Prompt template:",
        "",
        "```",
        info["prompt_format"]["template"],
        "```",
        "",
    ]
    return "\n".join(lines)
