"""The benchmarks the model is judged on beyond its own test split, which no training data touches.

- `textbook`: derivative exercises transcribed from the exercise lists of open calculus
  textbooks (benchmarks/textbook.tsv: function, book, section, exercise; card:
  benchmarks/README.md).
- `random`: functions of the expression-tree generator (`math/expression_trees.py`) drawn with
  a seed of their own (benchmarks/random.txt), frozen in the file so that later changes to the
  generator leave the benchmark as it is:
  `python -m derivative_animator.data.benchmarks --write-random`.

`held_out_keys()` gives every benchmark function's canonical form: the dataset builder, the
pretraining corpus and every practice generator leave these out (tests/test_benchmarks.py
proves it).
OpenStax's Calculus (and its copies) is an independent check kept outside the project: never here.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from derivative_animator import paths

BENCHMARK_DIR = paths.PROJECT_ROOT / "benchmarks"
FILES = {"textbook": "textbook.tsv", "random": "random.txt"}
RANDOM_SEED = "random-benchmark-2026-12-03"
RANDOM_SIZE = 200
RANDOM_MIN_STEPS = 3  # rule applications: x^2 and e^x are the textbook set's, not the random one's


@dataclass(frozen=True)
class Item:
    id: str
    text: str  # as written in the benchmark file
    source: str  # book, section and exercise; or the generator's seed


def names() -> list[str]:
    return list(FILES)


def items(name: str, directory: Path = BENCHMARK_DIR) -> list[Item]:
    """The benchmark's functions as written in its file, in file order."""
    if name not in FILES:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(FILES)}")
    path = directory / FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} is missing")
    if path.suffix == ".tsv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [
            Item(
                f"{name}-{i:03d}",
                row["function"].strip(),
                f"{row['book']} {row['section'].split(' ', 1)[0]}, exercise {row['exercise']}",
            )
            for i, row in enumerate(rows, 1)
        ]
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [
        Item(f"{name}-{i:03d}", text, f"expression trees, seed {RANDOM_SEED}")
        for i, text in enumerate((t for t in lines if t and not t.startswith("#")), 1)
    ]


@lru_cache(maxsize=1)
def held_out_keys(directory: Path = BENCHMARK_DIR) -> frozenset[str]:
    """Canonical forms of every function of every benchmark (those that parse)."""
    from derivative_animator.math import curriculum
    from derivative_animator.math.parsing import ParseError, parse_function

    keys = set()
    for name in FILES:
        for item in items(name, directory):
            try:
                keys.add(curriculum.canonical_key(parse_function(item.text)))
            except ParseError:
                continue
    return frozenset(keys)


def keys_sha256(keys) -> str:
    """One digest of a set of canonical forms: a dataset's card and a base's build record it."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def digest() -> str:
    """The digest of every benchmark's functions: what a dataset built to leave them out records."""
    return keys_sha256(held_out_keys())


def draw_random(
    seed: str = RANDOM_SEED, size: int = RANDOM_SIZE, exclude: frozenset[str] = frozenset()
) -> list[str]:
    """`size` generator functions the oracle animates, with at least RANDOM_MIN_STEPS rule
    applications, none in `exclude` (canonical forms), in the generator's seeded order."""
    from rich.progress import track

    from derivative_animator.math import curriculum, expression_trees
    from derivative_animator.math.differentiate import differentiate

    def keep(typed, expr) -> bool:
        if (
            curriculum.canonical_key(expr) in exclude
            or len(differentiate(expr)[1]) < RANDOM_MIN_STEPS
        ):
            return False
        return curriculum.analyse(expr, wider=True) is not None

    drawn = expression_trees.functions(seed, keep)
    return [next(drawn) for _ in track(range(size), description="drawing the random benchmark")]


def write_random(directory: Path = BENCHMARK_DIR) -> Path:
    """benchmarks/random.txt from the seed, leaving out the textbook benchmark's functions."""
    from derivative_animator.math import curriculum
    from derivative_animator.math.parsing import ParseError, parse_function

    textbook = set()
    for item in items("textbook", directory):
        try:
            textbook.add(curriculum.canonical_key(parse_function(item.text)))
        except ParseError:
            continue
    functions = draw_random(exclude=frozenset(textbook))
    header = (
        f"# The random benchmark: {len(functions)} functions of the expression-tree generator, "
        f"seed {RANDOM_SEED!r},\n# each with at least {RANDOM_MIN_STEPS} rule applications, "
        "none of the "
        "textbook benchmark's.\n# Written by `python -m derivative_animator.data.benchmarks "
        "--write-random`; never trained on.\n"
    )
    path = directory / FILES["random"]
    paths.write_atomic(path, header + "\n".join(functions) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m derivative_animator.data.benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--write-random", action="store_true", help="(re)write benchmarks/random.txt from its seed"
    )
    args = parser.parse_args(argv)
    if args.write_random:
        print(f"wrote {write_random()}")
    for name in FILES:
        print(
            f"{name}: {len(items(name))} functions ({BENCHMARK_DIR / FILES[name]}); "
            f"{composition(name)}"
        )
    return 0


def composition(name: str) -> str:
    """How many functions of each level, kind and length a benchmark holds (its card's figures)."""
    from collections import Counter

    from derivative_animator.math import expression_trees
    from derivative_animator.math.differentiate import differentiate, level_of
    from derivative_animator.math.parsing import parse_function

    levels, kinds, lengths = Counter(), Counter(), Counter()
    for item in items(name):
        expr = parse_function(item.text)
        levels[level_of(differentiate(expr)[1])] += 1
        kinds.update(expression_trees.kinds(expr))
        lengths[expression_trees.length_bucket(item.text)] += 1
    return (
        "levels "
        + " / ".join(f"L{lv} {levels[lv]}" for lv in sorted(levels))
        + "; kinds "
        + ", ".join(f"{kind} {kinds[kind]}" for kind in expression_trees.KINDS)
        + "; lengths "
        + ", ".join(f"{bucket} {lengths[bucket]}" for _, bucket in expression_trees.LENGTH_BUCKETS)
    )


if __name__ == "__main__":
    sys.exit(main())
