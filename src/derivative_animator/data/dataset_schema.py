"""The dataset's schema: its splits, a record (one line of a split's JSONL file), the config a
build is made from (recorded in the dataset card), and how a record is made from an analysed
function: the one shape of a record, generated (`data/dataset.py`) or imported
(`data/dataset_import.py`)."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from functools import cache

import sympy as sp

from derivative_animator import paths
from derivative_animator.data import scenes
from derivative_animator.data.prompt import DEFAULT_FORMAT, PromptFormat
from derivative_animator.math import curriculum, notation

SPLITS = ("train", "validation", "test")


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
    textbook_practice: float = field(default_factory=lambda: _data_default("textbook_practice"))
    combination_practice: float = field(
        default_factory=lambda: _data_default("combination_practice")
    )
    power_practice: float = field(default_factory=lambda: _data_default("power_practice"))
    tree_wider_intervals: bool = field(
        default_factory=lambda: _data_default("tree_wider_intervals")
    )

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
        for name, what in (
            ("tree_practice", "expression-tree functions"),
            ("textbook_practice", "functions of textbook kinds"),
            ("combination_practice", "functions with several transcendental factors"),
            ("power_practice", "functions with wide powers and symbolic constants"),
        ):
            if not 0 <= float(getattr(self, name)) <= 10:
                raise ValueError(
                    f"data.{name} is a share of data.sizes.train from 0 to 10 (0.5: half as "
                    f"many {what} again), got {getattr(self, name)}"
                )
        if bad_styles or not self.styles:
            raise ValueError(f"data.styles must be a non-empty subset of {list(scenes.STYLES)}")
        object.__setattr__(self, "levels", tuple(int(level) for level in self.levels))
        object.__setattr__(self, "styles", tuple(self.styles))

    def practice_functions(self, option: str) -> int:
        """How many functions a practice option (tree_practice, textbook_practice,
        combination_practice, power_practice: a share of sizes.train) adds to train."""
        return round(float(getattr(self, option)) * self.sizes["train"])

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
        options = {
            "tree_practice": self.tree_practice,
            "worked_steps": self.worked_steps,
            "tree_wider_intervals": self.tree_wider_intervals,
            "textbook_practice": self.textbook_practice,
            "combination_practice": self.combination_practice,
            "power_practice": self.power_practice,
        }
        return {**content, **{name: value for name, value in options.items() if value}}

    @property
    def sha256(self) -> str:
        content = {k: v for k, v in self.to_dict().items() if k != "dir"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


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
