"""Header math: a checkpoint's greedy math headers on the test split and every benchmark, judged
by the math judge without rendering. Where decoding writes the code (decision 0014) a scene's
mathematics is its header, so this is raw math as the evaluator counts it, in a minute or two
instead of half an hour of renders: what quick ablations (a reinforcement run, a seed) read.

    python -m derivative_animator.eval.header_math --model outputs/train/<run>/checkpoint/merged
    python -m derivative_animator.eval.header_math --model DIR --out header_math.json --limit 20
    python -m derivative_animator.eval.header_math --model SEED42 SEED43 SEED44   # and the median
    python -m derivative_animator.eval.header_math --model DIR --train 100   # train functions too
    python -m derivative_animator.eval.header_math --model DIR --base   # its base, not fine-tuned
    python -m derivative_animator.eval.header_math --model outputs/base/<stage> --base  # a stage
    python -m derivative_animator.eval.header_math --model DIR --against OLD.json  # gained, lost
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
from pathlib import Path

from derivative_animator import paths
from derivative_animator.data import benchmarks, dataset
from derivative_animator.math import judge

HEADER_TOKENS = 400  # a header's budget: the longest benchmark headers are about 250 tokens


def function_sets(data_dir: str | Path) -> dict[str, list[str]]:
    """{"test": the split's functions, <benchmark>: its functions, for every benchmark}."""
    sets = {"test": [record.function for record in dataset.read_split(data_dir, "test")]}
    sets.update(
        {name: [item.text for item in benchmarks.items(name)] for name in benchmarks.names()}
    )
    return sets


def train_sample(data_dir: str | Path, per_length: int) -> list[str]:
    """Up to `per_length` of the train split's distinct functions of each length as typed
    (expression_trees.LENGTH_BUCKETS), drawn with a fixed seed: set beside the benchmarks, they
    tell a model that cannot fit long functions from one that fits them and does not carry
    that to new ones."""
    from derivative_animator.math.expression_trees import length_bucket

    by_length: dict[str, list[str]] = {}
    for function in sorted({r.function for r in dataset.read_split(data_dir, "train")}):
        by_length.setdefault(length_bucket(function), []).append(function)
    rng = random.Random("header-math-train-sample")
    drawn = [
        rng.sample(by_length[b], min(per_length, len(by_length[b]))) for b in sorted(by_length)
    ]
    # one of each length in turn, so --limit keeps every length in the set
    return [f for turn in itertools.zip_longest(*drawn) for f in turn if f is not None]


def header_math(
    generator,
    sets: dict[str, list[str]],
    batch: int = 64,
    limit: int | None = None,
    max_new_tokens: int = HEADER_TOKENS,
) -> dict[str, dict]:
    """{set: {"n", "math_pct", "right": [functions]}}: greedy headers, `batch` rows at once
    (`SceneGenerator.generate_batch`, as self-consistency samples them), the first `limit`
    functions of each set (None: all)."""
    from rich.progress import Progress

    from derivative_animator.math import expression_trees as trees

    report = {}
    with Progress(transient=True) as progress:
        for name, functions in sets.items():
            functions = functions[:limit]
            task = progress.add_task(f"headers: {name}", total=len(functions))
            right = []
            for start in range(0, len(functions), batch):
                chunk = functions[start : start + batch]
                written = generator.generate_batch(chunk, max_new_tokens, headers_only=True)
                for function, generation in zip(chunk, written, strict=True):
                    # the row's text is cut where its header ends (one never ended does not parse)
                    if judge.header_judge(function)(generation.code):
                        right.append(function)
                progress.advance(task, len(chunk))
            report[name] = {
                "n": len(functions),
                "math_pct": percent(len(right), len(functions)),
                "right": right,
                "by_length": breakdown(
                    functions, right, trees.length_bucket, [b for _, b in trees.LENGTH_BUCKETS]
                ),
                "by_transcendental": breakdown(
                    functions, right, trees.transcendental_bucket, trees.TRANSCENDENTAL_BUCKETS
                ),
            }
    return report


def breakdown(functions: list[str], right: list[str], bucket_of, buckets) -> dict[str, dict]:
    """{bucket: {"n", "math_pct"}} for the buckets (in their order) that hold a function."""
    right, hits, counts = set(right), {}, {}
    for function in functions:
        bucket = bucket_of(function)
        counts[bucket] = counts.get(bucket, 0) + 1
        hits[bucket] = hits.get(bucket, 0) + (function in right)
    return {
        b: {"n": counts[b], "math_pct": percent(hits[b], counts[b])} for b in buckets if b in counts
    }


def percent(part: int, whole: int) -> float:
    return round(100 * part / max(whole, 1), 1)


def _buckets(scores: dict[str, dict], prefix: str) -> str:
    """Its buckets as "21-40 53.2% (47), ...": a breakdown's figures on one line."""
    return ", ".join(
        f"{bucket.removeprefix(prefix).replace('_up', '+').replace('_', '-')} "
        f"{v['math_pct']:.1f}% ({v['n']})"
        for bucket, v in scores.items()
    )


def trained_on(model: Path) -> str:
    """The dataset a checkpoint was fine-tuned on: its run's data.dir (<run>/checkpoint/merged
    beside <run>/.hydra/config.yaml), else make all's."""
    from omegaconf import OmegaConf

    saved = model.parent.parent / ".hydra" / "config.yaml"
    if saved.is_file():
        data_dir = OmegaConf.select(OmegaConf.load(saved), "data.dir")
        if data_dir:
            return str(data_dir)
    return "data/derivatives"


def median_row(reports: list[dict[str, dict]]) -> dict[str, float]:
    """{set: the median of the reports' math_pct} (several fine-tuning seeds of one recipe)."""
    return {name: statistics.median(r[name]["math_pct"] for r in reports) for name in reports[0]}


def changes(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, list[str]]]:
    """{set: {"gained": [...], "lost": [...]}} for the sets both reports judged (the same --limit
    for both): what an ablation changed, beyond its percentages."""

    def judged(report: dict, name: str) -> bool:  # a set, not "model", "base" or "against"
        return isinstance(report.get(name), dict) and "right" in report[name]

    found = {}
    for name in after:
        if not (judged(before, name) and judged(after, name)):
            continue
        was, now = set(before[name]["right"]), set(after[name]["right"])
        found[name] = {
            "gained": sorted(now - was),
            "lost": sorted(was - now),
        }
    return found


def read_report(path: Path) -> dict[str, dict]:
    """A one-model report that --out wrote; ValueError (one line) for anything else."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(report, dict) or "models" in report or "model" not in report:
        raise ValueError(f"{path} is not a one-model header math report (write one with --out)")
    return report


def main(argv: list[str] | None = None) -> int:
    from derivative_animator.eval import baselines
    from derivative_animator.model.checkpoint_files import TRAINED_CONFIG, is_bare_base
    from derivative_animator.model.generate import SceneGenerator

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, nargs="+", required=True, help="merged checkpoint directories"
    )
    parser.add_argument(
        "--data", help="the dataset (its test split); default: the one each model was trained on"
    )
    parser.add_argument("--limit", type=int, help="the first N functions of each set")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=HEADER_TOKENS,
        help=f"a header's budget (default {HEADER_TOKENS}; worked steps need about twice it)",
    )
    parser.add_argument(
        "--train",
        type=int,
        metavar="N",
        help="also judge up to N train functions of each length (poor fit or poor transfer?)",
    )
    parser.add_argument(
        "--base",
        action="store_true",
        help="judge each checkpoint's base model before fine-tuning (its prompt, same decoding);"
        " a directory that is a base itself (outputs/base/<stage>) is judged as it is",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="REPORT",
        help="an earlier one-model report (--out): print the functions each set gained and lost",
    )
    parser.add_argument("--out", type=Path, help="also write the report (JSON) here")
    args = parser.parse_args(argv)
    try:
        earlier = read_report(args.against) if args.against is not None else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    models = [paths.resolve(model) for model in args.model]
    for model in models:
        if not (model / "config.json").is_file():
            print(
                f"error: {model} is not a checkpoint (no config.json); pass --model DIR",
                file=sys.stderr,
            )
            return 2
        if not args.base and is_bare_base(model):
            print(
                f"error: {model} is a base model, not a fine-tuned checkpoint (no "
                f"{TRAINED_CONFIG}, no prompt format); pass --base to judge it as a base",
                file=sys.stderr,
            )
            return 2
        if args.base and not is_bare_base(model) and not (model / TRAINED_CONFIG).is_file():
            print(
                f"error: {model} carries no {TRAINED_CONFIG}, so its base model is unknown; "
                "pass a training run's checkpoint/merged or a base model's own directory",
                file=sys.stderr,
            )
            return 2
    reports, against = [], []  # against: each report's changes since --against's
    for model in models:
        data_dir = args.data or trained_on(model)
        sets = function_sets(data_dir)
        if args.train:
            sets["train"] = train_sample(data_dir, args.train)
        generator = baselines.base_generator(model) if args.base else SceneGenerator.load(model)
        report = header_math(generator, sets, limit=args.limit, max_new_tokens=args.max_new_tokens)
        reports.append(report)
        if len(models) > 1 or args.base:
            print(f"{model}: its base model, not fine-tuned" if args.base else model)
        for name, scores in report.items():
            print(
                f"{name:10s} {scores['math_pct']:5.1f}%  ({len(scores['right'])} of {scores['n']})"
                f"   by length: {_buckets(scores['by_length'], 'chars_')}"
                f"   by transcendental functions: "
                f"{_buckets(scores['by_transcendental'], 'transcendental_')}"
            )
        if earlier is not None:
            against.append(changes(earlier, report))
            print(f"against {earlier['model']}:")
            for name, changed in against[-1].items():
                print(
                    f"{name:10s} +{len(changed['gained'])} -{len(changed['lost'])}"
                    + "".join(f"\n  + {f}" for f in changed["gained"])
                    + "".join(f"\n  - {f}" for f in changed["lost"])
                )
    median = median_row(reports) if len(models) > 1 else None
    if median is not None:
        print(f"median of {len(models)}")
        for name, pct in median.items():
            print(f"{name:10s} {pct:5.1f}%")
    if args.out is not None:
        written = [
            {"model": str(m), "base": args.base, **r} for m, r in zip(models, reports, strict=True)
        ]
        if earlier is not None:  # beside the sets, not among them: a report stays readable here
            for entry, changed in zip(written, against, strict=True):
                entry["against"] = {"model": earlier["model"], "changes": changed}
        report = written[0] if median is None else {"models": written, "median": median}
        paths.write_atomic(args.out, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
