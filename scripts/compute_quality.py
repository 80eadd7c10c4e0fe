"""The compute-quality curve: raw math on the test split against pretraining tokens and
against fine-tuning steps, and its noise over seeds.

Every point fine-tunes a base with the main job's recipe (conf/train.yaml: LoRA r=64 on the
4,400-function split) and scores the greedy math headers the fine-tuned model writes for the
test functions: the very headers raw evaluation's greedy scenes open with, so the figure is
raw math (`finetune.ValidationMath.score`, the bracket guard on, as in evaluation).

- pretraining tokens: the snapshots a pretraining saves (`model.build.snapshot_every`,
  outputs/base/<name>-snapshots/step-N) and the shipped base, one fine-tune each;
- fine-tuning steps: the shipped base's run, scored every --every optimizer steps;
- noise: the shipped base fine-tuned with --seeds (median and range).

Each finished point is stored in outputs/compute_quality/results.json at once and never run
again, so an interrupted run continues where it stopped; points fine-tuned on another dataset
are refused. The figure: docs/compute_quality.png.

    python scripts/compute_quality.py                  # make curve
    python scripts/compute_quality.py --seeds 42 --no-snapshots --every 500
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

OUT = ROOT / "outputs" / "compute_quality"


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from derivative_animator import paths

    with initialize_config_dir(config_dir=str(paths.CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def data_fingerprint(data_dir: str) -> str:
    """The dataset's files as its card hashes them: points fine-tuned on other data never mix."""
    import hashlib

    card = json.loads((ROOT / data_dir / "card.json").read_text())
    return hashlib.sha256(json.dumps(card["files_sha256"], sort_keys=True).encode()).hexdigest()[
        :16
    ]


def fine_tune_and_score(
    label: str, pretrained: Path, seed: int, every: int | None, overrides: list[str]
) -> dict:
    """Fine-tune `pretrained` with the main recipe; raw math of the test headers at the end
    (and every `every` steps)."""
    import pytorch_lightning as pl

    from derivative_animator.data import dataset
    from derivative_animator.model.finetune import ValidationMath
    from derivative_animator.train import train

    cfg = compose(
        f"model.pretrained={pretrained}",
        f"seed={seed}",
        f"+run_dir={OUT / 'runs' / label}",
        "val_math.enabled=false",
        "sweep_name=compute_quality",
        "logger.log_model=false",
        *overrides,
    )
    test = dataset.read_split(ROOT / cfg.data.dir, "test")
    curve: list[dict] = []

    class ScoreEvery(pl.Callback):
        def __init__(self):
            self.scorer = None

        def on_train_start(self, trainer, module):
            from transformers import AutoTokenizer

            self.scorer = ValidationMath(AutoTokenizer.from_pretrained(pretrained), test)

        def on_train_batch_end(self, trainer, module, *args):
            step = trainer.global_step
            if every and step % every == 0 and not any(p["step"] == step for p in curve):
                curve.append({"step": step, **self.scorer.score(module.model)})
                print(f"  {label} step {step}: raw math {curve[-1]['math']:.1f}%", file=sys.stderr)

        def on_train_end(self, trainer, module):
            if not any(p["step"] == trainer.global_step for p in curve):
                curve.append({"step": trainer.global_step, **self.scorer.score(module.model)})

    started = time.perf_counter()
    train(cfg, extra_callbacks=[ScoreEvery()])
    final = curve[-1]
    return {
        "label": label,
        "pretrained": str(pretrained),
        "seed": seed,
        "steps": final["step"],
        "math": round(final["math"], 1),
        "levels": {k: round(v, 1) for k, v in final.items() if k.startswith("math_level")},
        "curve": curve,
        "seconds": round(time.perf_counter() - started, 1),
    }


def pretraining_tokens(base: Path) -> int | None:
    """Tokens the base was pretrained on: a snapshot's step from its name, the shipped base's
    from its build record (every stage's)."""
    import json as _json

    match = re.fullmatch(r"step-(\d+)", base.name)
    info = (
        base / "build_info.json"
        if not match
        else base.parent.parent / base.parent.name.removesuffix("-snapshots") / "build_info.json"
    )
    if not info.is_file():
        return None
    data = _json.loads(info.read_text())
    per_step = data["config"]["batch_size"] * data["config"]["seq_len"]
    if match:
        return int(match.group(1)) * per_step
    tokens, stage = 0, data
    while stage:  # a base continued from a parent counts the parent's tokens too
        tokens, stage = tokens + stage["trained_tokens"], stage.get("parent")
    return tokens


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    points = sorted(
        (p["pretraining_tokens"], p["math"])
        for p in results["points"].values()
        if p.get("pretraining_tokens") and p["seed"] == results["main_seed"]
    )
    if points:
        left.plot([t / 1e6 for t, _ in points], [m for _, m in points], "o-")
    seeds = [p["math"] for p in results["points"].values() if p["label"].startswith("seed-")]
    if seeds and points:
        tokens = points[-1][0] / 1e6
        left.errorbar(
            [tokens],
            [statistics.median(seeds)],
            yerr=[[statistics.median(seeds) - min(seeds)], [max(seeds) - statistics.median(seeds)]],
            fmt="s",
            color="C3",
            capsize=4,
            label=f"{len(seeds)} seeds: median, range",
        )
        left.legend(loc="lower right")
    left.set(
        xlabel="pretraining tokens (millions)",
        ylabel="raw math, test split (%)",
        ylim=(0, 100),
        title="more pretraining (same fine-tune)",
    )
    main = results["points"].get(f"seed-{results['main_seed']}")
    if main:
        right.plot([p["step"] for p in main["curve"]], [p["math"] for p in main["curve"]], "o-")
    right.set(
        xlabel="fine-tuning steps (LoRA, shipped base)",
        ylabel="raw math, test split (%)",
        ylim=(0, 100),
        title="more fine-tuning",
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.suptitle(f"DerivativeAnimator: compute vs quality ({results['machine']})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="models/derivanim-tiny", help="the shipped base")
    parser.add_argument(
        "--snapshots", default="outputs/base/tiny-snapshots", help="pretraining snapshots dir"
    )
    parser.add_argument(
        "--no-snapshots", action="store_true", help="skip the pretraining-tokens points"
    )
    parser.add_argument(
        "--seeds",
        default="42,43,44",
        help="fine-tuning seeds of the shipped base (the first: the curve's)",
    )
    parser.add_argument(
        "--every", type=int, default=250, help="score the first seed's run every N optimizer steps"
    )
    parser.add_argument("--figure", default="docs/compute_quality.png")
    parser.add_argument(
        "overrides", nargs="*", help="extra train overrides, e.g. trainer.precision=32-true"
    )
    args = parser.parse_args()

    from derivative_animator import environment

    OUT.mkdir(parents=True, exist_ok=True)
    recipe = compose()
    results_file = OUT / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"points": {}}
    data = data_fingerprint(recipe.data.dir)
    if results["points"] and results.get("data") != data:
        raise SystemExit(
            f"error: {results_file} holds points fine-tuned on other data (its dataset's files "
            f"{results.get('data', 'unrecorded')}, now {data}): move it away to start a new curve"
        )
    results["data"] = data
    seeds = [int(s) for s in args.seeds.split(",")]
    precision = environment.resolve_precision(str(recipe.trainer.precision), "cpu")
    results.update(main_seed=seeds[0], machine=f"{environment.cpu_description()}, {precision}")
    base = ROOT / args.base
    plan = [(f"seed-{s}", base, s, args.every if s == seeds[0] else None) for s in seeds]
    snapshots = sorted(
        (ROOT / args.snapshots).glob("step-*"), key=lambda p: int(p.name.split("-")[1])
    )
    if not args.no_snapshots:
        plan += [(f"pretrain-{p.name}", p, seeds[0], None) for p in snapshots]
    for label, pretrained, seed, every in plan:
        if label in results["points"]:
            continue
        print(f"{label}: fine-tuning {pretrained} (seed {seed})", file=sys.stderr)
        point = fine_tune_and_score(label, pretrained, seed, every, args.overrides)
        point.update(pretraining_tokens=pretraining_tokens(pretrained), precision=precision)
        results["points"][label] = point
        results_file.write_text(json.dumps(results, indent=1) + "\n")
        plot(results, ROOT / args.figure)
    seed_math = [
        results["points"][f"seed-{s}"]["math"] for s in seeds if f"seed-{s}" in results["points"]
    ]
    print(f"{'point':<24} {'pretraining tokens':>19} {'raw math':>9}  levels")
    for label, point in sorted(
        results["points"].items(), key=lambda kv: kv[1].get("pretraining_tokens") or 0
    ):
        levels = " ".join(f"{v:.0f}" for v in point["levels"].values())
        print(
            f"{label:<24} {point.get('pretraining_tokens') or 0:>19,} "
            f"{point['math']:>8.1f}%  {levels}"
        )
    if seed_math:
        print(
            f"seeds {seeds}: raw math median {statistics.median(seed_math):.1f}% "
            f"(range {min(seed_math):.1f}-{max(seed_math):.1f}), {results['machine']}"
        )
    plot(results, ROOT / args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
