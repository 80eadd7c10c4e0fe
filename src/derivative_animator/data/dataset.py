"""Building the dataset: fresh functions per curriculum level, judged and written as scenes (on
worker processes), dealt into splits, then the files written all at once.

    python -m derivative_animator.dataset                       # make data
    python -m derivative_animator.dataset validate=true         # ... and render every scene
    python -m derivative_animator.dataset data.sizes.train=10000
    python -m derivative_animator.dataset data=original data.import_path=instruction_dataset.json

Writes `{dir}/{train,validation,test}.jsonl`, `card.json` and `README.md` (the dataset
card, `data/dataset_card.py`). The same config gives byte-identical files. No function (by
canonical sympy form) appears in two splits or in a benchmark (`data/benchmarks.py`), and every
split holds every curriculum level in the same proportions. The schema (a record, the config)
is `data/dataset_schema.py`; importing the original project's dataset, `data/dataset_import.py`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path

from derivative_animator import paths
from derivative_animator.data import benchmarks, dataset_card
from derivative_animator.data.dataset_import import import_original
from derivative_animator.data.dataset_schema import SPLITS, DataConfig, Record, make_record
from derivative_animator.data.prompt import DEFAULT_FORMAT
from derivative_animator.math import curriculum, notation
from derivative_animator.math.parsing import parse_function
from derivative_animator.math.textbook_kinds import (
    combination_candidate,
    power_candidate,
    textbook_candidate,
)

# --- generating records ------------------------------------------------------------------


def _level_counts(total: int, levels: tuple[int, ...]) -> dict[int, int]:
    """Split `total` over levels as evenly as possible (earlier levels take the remainder)."""
    base, remainder = divmod(total, len(levels))
    return {level: base + (1 if i < remainder else 0) for i, level in enumerate(levels)}


def generate_splits(config: DataConfig, workers: int = 1) -> dict[str, list[Record]]:
    """Fresh functions per level, deduplicated across all splits, then dealt into splits.

    Drawing is sequential (one seeded generator per level; every function must differ from
    all before it), but judging a candidate (parse, differentiate, pick an interval) and
    writing its scene take nearly all the time, and run on `workers` processes: the same
    files for any number of workers."""
    from rich.progress import Progress

    per_split = {split: _level_counts(config.sizes[split], config.levels) for split in SPLITS}
    total = sum(config.sizes.values())
    seen: set[str] = set(benchmarks.held_out_keys())  # no benchmark function in any split
    plan: dict[str, list[tuple[str, str, int]]] = {
        split: [] for split in SPLITS
    }  # (typed, style, worker)
    pool = (
        [_Here()]
        if workers <= 1
        else [
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(workers)
        ]
    )
    try:
        with Progress() as progress:
            task = progress.add_task("choosing functions", total=2 * total)
            for level in config.levels:
                rng = random.Random(f"{config.seed}-level-{level}")
                needed = sum(per_split[split][level] for split in SPLITS)
                chosen = _choose(level, needed, rng, seen, pool)
                progress.advance(task, needed)
                start = 0
                # Test first, then validation: their functions do not depend on the train size, so
                # models trained on more or fewer samples are scored on the same test set.
                for split in reversed(SPLITS):
                    count = per_split[split][level]
                    # Styles cycle within each (split, level) so every split sees every style
                    # evenly.
                    styles = [config.styles[(i + level) % len(config.styles)] for i in range(count)]
                    rng.shuffle(styles)
                    plan[split] += [
                        (typed, style, worker)
                        for (typed, worker), style in zip(
                            chosen[start : start + count], styles, strict=True
                        )
                    ]
                    start += count
            progress.update(task, description="writing scenes")
            # Each worker writes the scenes of the functions it judged, in chunks (for the bar).
            jobs = [
                [
                    (typed, style)
                    for split in SPLITS
                    for typed, style, w in plan[split]
                    if w == index
                ]
                for index in range(len(pool))
            ]
            chunks = {
                worker.submit(_write_scenes, job[i : i + 250], config.worked_steps): job[
                    i : i + 250
                ]
                for worker, job in zip(pool, jobs, strict=True)
                for i in range(0, len(job), 250)
            }
            written: dict[str, Record] = {}
            for future in as_completed(chunks):
                written.update(
                    zip((typed for typed, _ in chunks[future]), future.result(), strict=True)
                )
                progress.advance(task, len(chunks[future]))
        splits = {split: [written[typed] for typed, _, _ in plan[split]] for split in SPLITS}
        splits["train"] += tree_practice(config, seen, pool)
        splits["train"] += textbook_practice(config, seen, pool)
        splits["train"] += combination_practice(config, seen, pool)
        splits["train"] += power_practice(config, seen, pool)
    finally:
        for worker in pool:
            worker.shutdown()
    for split in SPLITS:
        random.Random(f"{config.seed}-order-{split}").shuffle(splits[split])
    return splits


def tree_practice(config: DataConfig, seen: set[str], pool=None) -> list[Record]:
    """`data.tree_practice` (a share of sizes.train) more train functions, drawn from expression
    trees rather than the curriculum's shapes (every primitive, long sums and polynomials, depth
    three: math/expression_trees), each one the dataset rule animates and none in `seen` (the
    splits so far and every benchmark). `config.tree_wider_intervals`: keep those whose plotting
    interval only the wider search finds, as the random benchmark does; the curriculum's search
    alone keeps 32% of drawn sec/csc/cot functions and 85% of polynomials."""
    from derivative_animator.math import expression_trees

    drawn = expression_trees.functions(f"{config.seed}-practice")
    return _practice(drawn, "tree_practice", seen, config, "expression-trees", pool)


def textbook_practice(config: DataConfig, seen: set[str], pool=None) -> list[Record]:
    """`data.textbook_practice` more train functions of the kinds textbooks ask about
    (math/textbook_kinds.textbook_candidate, the pretraining corpus's own), kept as tree
    practice keeps its own."""
    drawn = _drawn(textbook_candidate, f"{config.seed}-textbook-practice", "textbook_practice")
    return _practice(drawn, "textbook_practice", seen, config, "textbook-kinds", pool)


def combination_practice(config: DataConfig, seen: set[str], pool=None) -> list[Record]:
    """`data.combination_practice` more train functions with several transcendental factors in
    sums, products, quotients and compositions (math/textbook_kinds.combination_candidate),
    kept as tree practice keeps its own."""
    seed = f"{config.seed}-combination-practice"
    drawn = _drawn(combination_candidate, seed, "combination_practice")
    return _practice(drawn, "combination_practice", seen, config, "combinations", pool)


def power_practice(config: DataConfig, seen: set[str], pool=None) -> list[Record]:
    """`data.power_practice` more train functions with powers and constants as textbooks write
    them (math/textbook_kinds.power_candidate: (...)^17, 1/x^6, x^(5/3), x^pi, 7^x, e^4),
    kept as tree practice keeps its own."""
    drawn = _drawn(power_candidate, f"{config.seed}-power-practice", "power_practice")
    return _practice(drawn, "power_practice", seen, config, "powers", pool)


def _drawn(candidate, seed: str, option: str):
    """Distinct typed functions from `candidate(rng)`, forever, in a seeded order."""
    from derivative_animator.math.expression_trees import typed_function

    rng, typed_so_far, misses = random.Random(seed), set(), 0
    while misses < 10_000:  # a generator's space may be finite: say so rather than loop
        found = typed_function(candidate(rng))
        if found is None or found[0] in typed_so_far:
            misses += 1
            continue
        misses = 0
        typed_so_far.add(found[0])
        yield found[0]
    raise ValueError(f"{option} ran out of new functions; lower data.{option}")


PRACTICE_CHUNK = 32  # functions per worker per round


def _practice(
    typed_functions, option: str, seen: set[str], config, source: str, pool
) -> list[Record]:
    """The first functions of `typed_functions` (in its order), as many as the practice option
    asks, that the dataset rule animates and `seen` lacks, as records. Judging and writing run
    on the pool's workers in chunks; the same records for any number of workers (a style is
    drawn per function)."""
    from rich.progress import Progress

    count = config.practice_functions(option)
    if not count:
        return []
    pool = pool or [_Here()]
    records: list[Record] = []
    options = (config.tree_wider_intervals, config.styles, config.seed, source, config.worked_steps)
    with Progress() as progress:
        task = progress.add_task(source.replace("-", " "), total=count)
        while len(records) < count:
            batch = [next(typed_functions) for _ in range(PRACTICE_CHUNK * len(pool))]
            futures = [
                worker.submit(_practice_records, batch[i :: len(pool)], *options)
                for i, worker in enumerate(pool)
            ]
            written = [future.result() for future in futures]
            for position in range(len(batch)):
                key, record = written[position % len(pool)][position // len(pool)]
                if record is None or key in seen:
                    continue
                seen.add(key)
                records.append(record)
                progress.advance(task)
                if len(records) == count:
                    break
    return records


def _practice_records(
    texts: list[str], wider: bool, styles: tuple, seed: int, source: str, worked_steps: bool
) -> list[tuple[str, Record | None]]:
    """(canonical key, record or None if the dataset rule cannot animate it) per function."""
    written = []
    for typed in texts:
        expr = parse_function(typed)
        analysed = None if expr.is_Symbol else curriculum.analyse(expr, wider)
        style = random.Random(f"{seed}-{source}-style-{typed}").choice(styles)
        record = (
            None
            if analysed is None
            else make_record(analysed, style, source, worked_steps=worked_steps)
        )
        written.append((curriculum.canonical_key(expr), record))
    return written


def reinforcement_functions(
    seed: str,
    step: int,
    count: int,
    curriculum_share: float,
    textbook_share: float,
    wider_intervals: bool,
    held_out: set[str],
) -> list[str]:
    """The reinforcement stage's functions for one step (model/reinforce.py): `count` generator
    functions, each from the curriculum's shapes with probability `curriculum_share`, of the
    kinds textbooks ask about (textbook_kinds) with `textbook_share`, else an expression tree,
    each one the dataset rule animates (`wider_intervals`: on an interval the wider search finds,
    as tree practice with data.tree_wider_intervals) and none in `held_out` (validation, test
    and every benchmark: calculus_corpus.held_out_keys). Seeded by step: a resumed run draws
    what it would have drawn."""
    from derivative_animator.math import expression_trees

    if not (
        0 <= curriculum_share and 0 <= textbook_share and curriculum_share + textbook_share <= 1
    ):
        raise ValueError(
            f"reinforce.curriculum_share ({curriculum_share}) and reinforce.textbook_share "
            f"({textbook_share}) must be shares: each >= 0, together <= 1"
        )
    rng = random.Random(f"{seed}-reinforce-{step}")
    taken = set(held_out)

    def new_and_usable(expr, level: int | None = None) -> bool:
        key = curriculum.canonical_key(expr)
        if key in taken or expr.is_Symbol:
            return False
        if level is None:
            found = curriculum.analyse(expr, wider_intervals)
        else:
            found = curriculum.usable_at(expr, level)
        if found is not None:
            taken.add(key)
        return found is not None

    trees = expression_trees.functions(f"{seed}-reinforce-{step}", lambda t, e: new_and_usable(e))
    chosen: list[str] = []
    textbook_misses = 0
    while len(chosen) < count:
        draw = rng.random()
        if draw >= curriculum_share + textbook_share:
            chosen.append(next(trees))
        elif draw >= curriculum_share:
            found = expression_trees.typed_function(textbook_candidate(rng))
            if found is not None and new_and_usable(found[1]):
                chosen.append(found[0])
                textbook_misses = 0
            elif (textbook_misses := textbook_misses + 1) >= 10_000:  # a finite space: say so
                raise ValueError(
                    "reinforcement practice ran out of new functions of textbook kinds; "
                    "lower reinforce.textbook_share"
                )
        else:
            level = rng.choice(curriculum.LEVELS)
            typed = notation.typed(curriculum.candidate(level, rng))
            if new_and_usable(parse_function(typed), level):
                chosen.append(typed)
    return chosen


MAX_TRIES = 2000  # candidates failing in a row before a level counts as exhausted
# In a worker: the usable candidates it judged, by typed text. They stay in the process that
# judged them, which also writes their scenes: sympy objects sent between processes come back
# in another form now and then (2 of 4,520 functions did), and the files must not change.
_JUDGED: dict[str, curriculum.CurriculumFunction] = {}


def _choose(
    level: int, needed: int, rng: random.Random, seen: set[str], pool: list
) -> list[tuple[str, int]]:
    """The first `needed` usable candidates of the level's generator not in `seen`, as (typed
    text, index of the worker that judged it): what drawing and judging one at a time gives.
    Candidates are drawn in chunks and judged in parallel, then taken in order; the generator
    is rewound to just after the last one taken, as it would be had it drawn no further."""
    taken: list[tuple[str, int]] = []
    failures = drawn = 0
    while len(taken) < needed:
        texts, states = [], []
        # Enough for what is missing at the share of candidates taken so far: few left over.
        rate = max(len(taken), 1) / drawn if drawn else 0.8
        for _ in range(max(16, int((needed - len(taken)) / max(rate, 0.05) * 1.05))):
            texts.append(notation.typed(curriculum.candidate(level, rng)))
            states.append(rng.getstate())
        drawn += len(texts)
        # Dealt like cards (candidate i to worker i mod n): each gets its share of costly ones.
        futures = [
            worker.submit(_judge, texts[i :: len(pool)], level, seen)
            for i, worker in enumerate(pool)
        ]
        judged = [future.result() for future in futures]
        for position, typed in enumerate(texts):
            worker = position % len(pool)
            key, usable = judged[worker][position // len(pool)]
            if not usable or key in seen:
                failures += 1
                if failures >= MAX_TRIES:
                    raise ValueError(
                        f"could not find a new level-{level} function after {MAX_TRIES} tries: the "
                        "requested dataset is larger than the curriculum's variety; "
                        "lower data.sizes"
                    )
                continue
            seen.add(key)
            taken.append((typed, worker))
            failures = 0
            if len(taken) == needed:
                rng.setstate(states[position])
                break
    return taken


def _judge(texts: list[str], level: int, seen: set[str]) -> list[tuple[str, bool]]:
    """(canonical key, usable) per candidate; keeps the usable ones' analyses for `_write_scenes`.
    A key already taken, or usable earlier in `texts`, cannot be taken: not analysed."""
    taken = set(seen)
    verdicts = []
    for typed in texts:
        expr = parse_function(typed)
        key = curriculum.canonical_key(expr)
        analysed = None if key in taken else curriculum.usable_at(expr, level)
        if analysed is not None:
            _JUDGED[typed] = analysed
            taken.add(key)
        verdicts.append((key, analysed is not None))
    return verdicts


def _write_scenes(items: list[tuple[str, str]], worked_steps: bool) -> list[Record]:
    return [
        make_record(_JUDGED[typed], style, "generated", worked_steps=worked_steps)
        for typed, style in items
    ]


class _Here:
    """workers=1: an executor that runs each call at once, in this process."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self) -> None:
        _JUDGED.clear()


# --- files, build -------------------------------------------------------------------------


def read_split(directory: str | Path, split: str) -> list[Record]:
    path = paths.resolve(directory) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make data` first")
    dataset_card.require_current_benchmarks(path.parent, directory)
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as err:
                raise ValueError(f"{path}:{number}: malformed record ({err})") from None
    return records


def write_dataset(splits: dict[str, list[Record]], config: DataConfig) -> Path:
    """Write all files to a temp dir beside the target, then swap it in: never half-written."""
    target = paths.resolve(config.dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        hashes = {}
        for split in SPLITS:
            content = "".join(record.to_json() + "\n" for record in splits[split])
            (staging / f"{split}.jsonl").write_text(content)
            hashes[f"{split}.jsonl"] = hashlib.sha256(content.encode()).hexdigest()
        dataset_card.write_card(staging, splits, config, hashes)
        DEFAULT_FORMAT.save(staging)
        paths.replace_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def cross_split_duplicates(splits: dict[str, list[Record]]) -> set[str]:
    owner: dict[str, str] = {}
    duplicates = set()
    for split, records in splits.items():
        for record in records:
            key = curriculum.canonical_key(parse_function(record.function))
            if owner.setdefault(key, split) != split:
                duplicates.add(record.function)
    return duplicates


def build(config: DataConfig, workers: int = 1) -> tuple[Path, dict[str, list[Record]]]:
    if config.import_path:
        splits = import_original(paths.resolve(config.import_path), config)
    else:
        splits = generate_splits(config, workers)
    return write_dataset(splits, config), splits


def build_workers(setting) -> int:
    """`workers: auto` is one process per core, at most 4 (the sampling between them is serial)."""
    if setting in (None, "auto"):
        return min(4, os.cpu_count() or 1)
    if int(setting) < 1:
        raise ValueError(f"workers must be auto or a positive number, got {setting}")
    return int(setting)


def main(cfg) -> int:
    from rich.console import Console

    from derivative_animator.data import render_check

    console = Console(stderr=True)
    from omegaconf import OmegaConf

    config = DataConfig(**OmegaConf.to_container(cfg.data, resolve=True))
    target, splits = build(config, build_workers(cfg.get("workers", "auto")))
    total = sum(len(r) for r in splits.values())
    console.print(
        f"wrote {total} records to {target} "
        + ", ".join(f"{s} {len(r)}" for s, r in splits.items())
    )
    if cfg.validate.enabled:
        records = [r for split in SPLITS for r in splits[split]]
        failures = render_check.render_all(
            records, cfg.validate.mode, cfg.validate.workers, cfg.validate.timeout_s
        )
        if failures:
            for record_id, error in failures:
                console.print(f"[red]render failed[/red] {record_id}: {error}")
            console.print(f"error: {len(failures)} of {total} samples failed to render")
            return 1
        console.print(f"rendered all {total} samples ({cfg.validate.mode}): no errors")
    return 0
