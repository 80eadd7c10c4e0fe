"""The dataset: its schema, how it is built, split, described, imported and validated.

    python -m derivative_animator.dataset                       # make data
    python -m derivative_animator.dataset validate=true         # ... and render every scene
    python -m derivative_animator.dataset data.sizes.train=10000
    python -m derivative_animator.dataset data=original data.import_path=instruction_dataset.json

Writes `{dir}/{train,validation,test}.jsonl`, `card.json` and `README.md` (the dataset
card). The same config gives byte-identical files. No function (by canonical sympy
form) appears in two splits or in a benchmark (`data/benchmarks.py`), and every split holds
every curriculum level in the same proportions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path

import sympy as sp

from derivative_animator import paths
from derivative_animator.data import benchmarks, scenes
from derivative_animator.data.prompt import DEFAULT_FORMAT, PromptFormat
from derivative_animator.math import curriculum, notation
from derivative_animator.math.differentiate import UnsupportedFunction
from derivative_animator.math.parsing import ParseError, parse_function

SPLITS = ("train", "validation", "test")
CARD_FILE = "card.json"


@dataclass(frozen=True)
class Record:
    """One (function, Manim scene) pair: a line of a split's JSONL file."""

    id: str
    level: int
    style: str
    function: str  # as a person types it (canonical notation)
    sympy: str  # sympy's canonical form of f
    derivative: str  # sympy form of f'
    function_latex: str
    derivative_latex: str
    steps: list[dict]  # [{"rule", "expression", "derivative"}], children before parents
    x_range: list[float]
    prompt: str
    completion: str
    source: str  # "generated" or the file it was imported from

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        names = {f.name for f in fields(cls)}
        missing = names - data.keys()
        if missing:
            raise ValueError(
                f"record {data.get('id', '?')} lacks fields: {', '.join(sorted(missing))}"
            )
        return cls(**{name: data[name] for name in names})


@cache
def _data_defaults() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(paths.conf_group("data"))


def _data_default(key: str):
    return copy.deepcopy(_data_defaults()[key])  # conf/data read once; each config its own copy


@dataclass(frozen=True)
class DataConfig:
    """What `make data` builds. Every field not given takes conf/data/default.yaml's value: the
    one home of the defaults (`python -m derivative_animator.dataset` composes the same file)."""

    dir: str = field(default_factory=lambda: _data_default("dir"))
    seed: int = field(default_factory=lambda: _data_default("seed"))
    sizes: dict = field(default_factory=lambda: _data_default("sizes"))
    levels: tuple[int, ...] = field(default_factory=lambda: _data_default("levels"))
    styles: tuple[str, ...] = field(default_factory=lambda: _data_default("styles"))
    import_path: str | None = field(default_factory=lambda: _data_default("import_path"))
    tree_practice: float = field(default_factory=lambda: _data_default("tree_practice"))
    worked_steps: bool = field(default_factory=lambda: _data_default("worked_steps"))

    def __post_init__(self):
        sizes = dict(self.sizes)
        if set(sizes) != set(SPLITS) or any(int(n) < 0 for n in sizes.values()):
            raise ValueError(
                f"data.sizes needs non-negative train, validation and test counts, got {sizes}"
            )
        object.__setattr__(self, "sizes", {split: int(sizes[split]) for split in SPLITS})
        bad_levels = set(self.levels) - set(curriculum.LEVELS)
        if bad_levels or not self.levels:
            raise ValueError(f"data.levels must be a non-empty subset of {list(curriculum.LEVELS)}")
        bad_styles = set(self.styles) - set(scenes.STYLES)
        if not 0 <= float(self.tree_practice) <= 10:
            raise ValueError(
                "data.tree_practice is a share of data.sizes.train from 0 to 10 (0.5: half as "
                f"many expression-tree functions again), got {self.tree_practice}"
            )
        if bad_styles or not self.styles:
            raise ValueError(f"data.styles must be a non-empty subset of {list(scenes.STYLES)}")
        object.__setattr__(self, "levels", tuple(int(level) for level in self.levels))
        object.__setattr__(self, "styles", tuple(self.styles))

    @property
    def tree_functions(self) -> int:
        """How many expression-tree functions tree practice adds to train."""
        return round(float(self.tree_practice) * self.sizes["train"])

    def to_dict(self) -> dict:
        content = {
            "dir": self.dir,
            "seed": self.seed,
            "sizes": self.sizes,
            "levels": list(self.levels),
            "styles": list(self.styles),
            "import_path": self.import_path,
        }
        # Absent when off, so datasets built before an option keep their card's bytes and hash.
        options = {"tree_practice": self.tree_practice, "worked_steps": self.worked_steps}
        return {**content, **{name: value for name, value in options.items() if value}}

    @property
    def sha256(self) -> str:
        content = {k: v for k, v in self.to_dict().items() if k != "dir"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


# --- building records --------------------------------------------------------------------


def make_record(
    analysed: curriculum.CurriculumFunction,
    style: str,
    source: str,
    completion: str | None = None,
    prompt_format: PromptFormat = DEFAULT_FORMAT,
    worked_steps: bool = False,
) -> Record:
    typed = notation.typed(analysed.expr)
    code = (
        completion
        if completion is not None
        else scenes.scene_code(
            analysed.expr,
            analysed.derivative,
            analysed.steps,
            analysed.x_range,
            style,
            worked_steps,
        )
    )
    key = hashlib.sha1(curriculum.canonical_key(analysed.expr).encode()).hexdigest()[:10]
    return Record(
        id=f"L{analysed.level}-{key}",
        level=analysed.level,
        style=style,
        function=typed,
        sympy=sp.sstr(analysed.expr),
        derivative=sp.sstr(analysed.derivative),
        function_latex=notation.latex(analysed.expr),
        derivative_latex=notation.latex(analysed.derivative),
        steps=[
            {"rule": s.rule, "expression": sp.sstr(s.expr), "derivative": sp.sstr(s.derivative)}
            for s in scenes.shown_steps(analysed.steps)
        ],
        x_range=[float(v) for v in analysed.x_range],
        prompt=prompt_format.format(typed),
        completion=code,
        source=source,
    )


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
    finally:
        for worker in pool:
            worker.shutdown()
    splits["train"] += tree_practice(config, seen)
    for split in SPLITS:
        random.Random(f"{config.seed}-order-{split}").shuffle(splits[split])
    return splits


def tree_practice(config: DataConfig, seen: set[str]) -> list[Record]:
    """`config.tree_functions` more train functions, drawn from expression trees rather than the
    curriculum's shapes (every primitive, long sums and polynomials, depth three:
    math/expression_trees), each one the dataset rule animates and none in `seen` (the splits so
    far and every benchmark)."""
    from itertools import islice

    from rich.progress import track

    from derivative_animator.math import expression_trees

    analysed: dict[str, curriculum.CurriculumFunction] = {}

    def keep(typed: str, expr) -> bool:
        if expr.is_Symbol:  # a bare x: no rule to practise (and no step a rule-steps scene lists)
            return False
        key = curriculum.canonical_key(expr)
        found = None if key in seen else curriculum.analyse(expr)
        if found is None:
            return False
        seen.add(key)
        analysed[typed] = found
        return True

    if not config.tree_functions:
        return []
    rng = random.Random(f"{config.seed}-tree-practice-styles")
    drawn = islice(
        expression_trees.functions(f"{config.seed}-practice", keep), config.tree_functions
    )
    return [
        make_record(
            analysed[typed],
            rng.choice(config.styles),
            "expression-trees",
            worked_steps=config.worked_steps,
        )
        for typed in track(drawn, total=config.tree_functions, description="tree practice")
    ]


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


# --- importing the original project's dataset ------------------------------------------


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


# --- files, card -----------------------------------------------------------------------


def read_split(directory: str | Path, split: str) -> list[Record]:
    path = paths.resolve(directory) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make data` first")
    card_path = path.parent / CARD_FILE
    if (
        card_path.is_file()
        and json.loads(card_path.read_text()).get("benchmarks_sha256") != benchmarks.digest()
    ):
        raise ValueError(
            f"{path.parent} was built before the benchmarks it must leave out (benchmarks/) "
            "changed: rebuild it with `make data` "
            f"(python -m derivative_animator.dataset data.dir={directory})"
        )
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as err:
                raise ValueError(f"{path}:{number}: malformed record ({err})") from None
    return records


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
        # what it leaves out; read_split refuses it once they change
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
        info = card(splits, config, hashes)
        (staging / CARD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        (staging / "README.md").write_text(card_markdown(info))
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
