"""Measure the figures the README reports. Nothing here is hard-coded: every number printed
is timed on this machine, now.

    python scripts/benchmark.py                 # data build, training throughput, generation
    python scripts/benchmark.py --validate      # + render-validation of the whole dataset (minutes)
    python scripts/benchmark.py --eval          # + evaluation of the test split, fine-tuned
                                                #   model (minutes)
    python scripts/benchmark.py --only training
    python scripts/benchmark.py --only rollbacks  # sampled scenes with / without line rollbacks
    python scripts/benchmark.py --only renders    # sandboxed renders: fresh process vs warm sandbox
    python scripts/benchmark.py --only renders --against REV   # + today's scenes vs those of REV

Training throughput compares the project's Lightning module against a plain
transformers + PEFT loop on the same model, data, batches and precision, in the same run,
counting real (non-padding) tokens only, after one untimed step; each loop runs --repeats
times in alternating order and the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def bench_data(validate: bool) -> dict:
    """`make data`'s build (and with render validation), into a temporary directory."""
    result = {}
    variants = [("data_build_s", [])]
    if validate:
        variants.append(("data_build_and_validate_s", ["validate.enabled=true"]))
    for name, overrides in variants:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "derivative_animator.dataset", f"data.dir={out}"]
                + overrides,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            result[name] = round(time.perf_counter() - start, 1)
    return result


def bench_training(steps: int, repeats: int) -> dict:
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from derivative_animator import environment, paths
    from derivative_animator.data import dataset
    from derivative_animator.data.datamodule import DerivativeDataModule, padding_share
    from derivative_animator.data.dataset_schema import DataConfig
    from derivative_animator.model import finetune
    from derivative_animator.model.settings import LoraSettings, ModelSettings

    with initialize_config_dir(config_dir=str(paths.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train")
    # The shipped base (cfg.model.pretrained) is what is timed: never a pretraining here.
    if not (paths.resolve(cfg.data.dir) / "train.jsonl").is_file():
        dataset.build(DataConfig(**OmegaConf.to_container(cfg.data, resolve=True)))
    precision = environment.resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    micro = cfg.optim.micro_batch_size
    base, lora = ModelSettings.from_config(cfg.model), LoraSettings.from_config(cfg.lora)

    def fresh():
        torch.manual_seed(0)
        tokenizer, model = finetune.load_base(base)
        return tokenizer, finetune.add_lora(model, lora)

    # Both loops time the same batches after a first, untimed one (allocations, and
    # Trainer.fit's own set-up, are not training throughput): make all's own batches (header
    # practice cut where train.py cuts it), spread evenly through the epoch. The data is
    # tokenized once: 52,800 samples take minutes where bf16 is not fast.
    tokenizer, _ = fresh()
    data = DerivativeDataModule.from_config(cfg, tokenizer, seed=0, num_workers=0)
    data.setup()
    loader = data.train_dataloader()
    sampler_batches = list(loader.batch_sampler)
    chosen = [sampler_batches[i * len(sampler_batches) // (steps + 1)] for i in range(steps + 1)]
    batches = [loader.collate_fn([loader.dataset[j] for j in batch]) for batch in chosen]
    real = sum(int(b["attention_mask"].sum()) for b in batches[1:])

    def plain_loop() -> float:
        """transformers + PEFT + torch.optim, nothing else."""
        _, model = fresh()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        autocast = precision.startswith("bf16")
        model.train()
        for index, batch in enumerate(batches):
            if index == 1:
                start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return real / (time.perf_counter() - start)

    class StepClock(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 0:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    def lightning_loop() -> float:
        """The project's LightningModule on the same batches."""
        _, model = fresh()
        clock = StepClock()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision=precision,
            max_steps=steps + 1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[clock],
        )
        trainer.fit(
            finetune.LoRAFineTuner(model, lr=1e-4),
            train_dataloaders=DataLoader(batches, batch_size=None),
        )
        return real / (clock.end - clock.start)

    # Alternate the order (p l, l p, p l, ...): this machine drifts by several percent
    # between runs, and the median of each cancels most of it.
    plain, lightning = [], []
    for repeat in range(repeats):
        for loop in (
            (plain_loop, lightning_loop) if repeat % 2 == 0 else (lightning_loop, plain_loop)
        ):
            (plain if loop is plain_loop else lightning).append(loop())
    runs = {
        "plain_loop_runs_tokens_per_s": [round(v) for v in plain],
        "lightning_runs_tokens_per_s": [round(v) for v in lightning],
    }
    plain, lightning = statistics.median(plain), statistics.median(lightning)

    lengths = data.splits["train"].lengths
    naive = [list(range(i, min(i + micro, len(lengths)))) for i in range(0, len(lengths), micro)]
    return {
        "training_precision": precision,
        "training_steps_measured": steps,
        "training_repeats": repeats,
        "plain_loop_tokens_per_s": round(plain, 1),
        "lightning_tokens_per_s": round(lightning, 1),
        "lightning_over_plain": round(lightning / plain, 3),
        **runs,
        "padding_share_bucketed": round(padding_share(lengths, sampler_batches), 4),
        "padding_share_unsorted": round(padding_share(lengths, naive), 4),
        "train_tokens_per_epoch": sum(lengths),
    }


def bench_generation(checkpoint: str | None, n: int) -> dict:
    from derivative_animator import paths
    from derivative_animator.data import dataset
    from derivative_animator.evaluate import latest_checkpoint
    from derivative_animator.model.generate import SceneGenerator

    directory = Path(checkpoint) if checkpoint else latest_checkpoint()
    records = dataset.read_split(ROOT / "data/derivatives", "test")[:n]
    result = {"checkpoint": str(directory)}
    settings = paths.conf_group("generate")
    for label, speculative in (("speculative", True), ("plain", False)):
        generator = SceneGenerator.load(directory, speculative=speculative)
        generator.generate(records[0].function, max_new_tokens=32)  # warm-up
        times, tokens = [], []
        for record in records:
            gen = generator.generate(record.function, settings.max_new_tokens)
            times.append(gen.seconds)
            tokens.append(gen.new_tokens)
        result[f"latency_median_s_{label}"] = round(statistics.median(times), 3)
        result[f"latency_max_s_{label}"] = round(max(times), 3)
        result[f"tokens_per_s_{label}"] = round(sum(tokens) / sum(times), 1)
    result["samples"] = len(records)
    return result


def bench_rollbacks(checkpoint: str | None, n: int, rollbacks: int = 8) -> dict:
    """Sampled scenes (as verification retries sample them) with and without line
    rollbacks after an unfixable syntax error: how many parse, hold a Scene, get the math
    right (no render), and at what time cost."""
    from derivative_animator import paths
    from derivative_animator.data import dataset
    from derivative_animator.evaluate import latest_checkpoint
    from derivative_animator.model.generate import SceneGenerator
    from derivative_animator.render.checks import check_code

    e = paths.conf_group("generate")  # the retries' sampling settings
    generator = SceneGenerator.load(Path(checkpoint) if checkpoint else latest_checkpoint())
    records = dataset.read_split(ROOT / "data/derivatives", "test")[:n]
    result = {"rollback_samples": len(records)}
    for allowed in (0, rollbacks):
        start, counts, used = time.perf_counter(), {"syntax": 0, "structure": 0, "math": 0}, 0
        for i, record in enumerate(records):
            gen = generator.generate(
                record.function,
                e.max_new_tokens,
                e.sample_temperature,
                e.top_p,
                seed=100 + i,
                syntax_rollbacks=allowed,
            )
            checked = check_code(gen.code, record.function, execute=False)
            for key in counts:
                counts[key] += bool(getattr(checked, key))
            used += gen.rollbacks
        label = f"rollbacks_{allowed}"
        result.update(
            {f"{label}_{key}_pct": round(100 * v / len(records), 1) for key, v in counts.items()}
        )
        result[f"{label}_seconds"] = round(time.perf_counter() - start, 1)
        result[f"{label}_lines_sampled_again"] = used
    return result


def bench_eval(checkpoint: str | None) -> dict:
    """Wall time of `make eval` for the fine-tuned model alone: generation, sandboxed renders
    and math checks of every test function."""
    from derivative_animator.evaluate import latest_checkpoint

    directory = Path(checkpoint) if checkpoint else latest_checkpoint()
    run_dir = ROOT / "outputs" / "benchmark" / time.strftime("eval-%Y-%m-%d_%H-%M-%S")
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "derivative_animator.evaluate",
            "eval.baselines=[finetuned]",
            f"eval.model={directory}",
            "eval.log_to_mlflow=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    results = json.loads((run_dir / "report" / "results.json").read_text())
    summary = results["summary"]["finetuned"]["all"]
    return {
        "eval_finetuned_wall_s": round(seconds, 1),
        "eval_samples": results["samples"],
        "eval_renders": sum(1 for r in results["rows"] if r["executes"] is not None),
        "eval_syntax_pct": summary["syntax"],
        "eval_executes_pct": summary["executes"],
        "eval_math_pct": summary["math"],
    }


def bench_renders(n: int, against: str | None = None) -> dict:
    """Sandboxed renders of the first n test-split oracle scenes as the evaluator renders them
    (480p, 5 fps, last frame saved), one at a time: a fresh process per scene, then one warm
    sandbox (Manim imported once; its start-up counted in its total). `against`: a git revision
    whose scene templates are rendered too, on the same functions and intervals, interleaved
    scene by scene in the warm sandbox so both see the same machine load."""
    from derivative_animator.data import dataset, oracle
    from derivative_animator.math import curriculum
    from derivative_animator.math.parsing import parse_function
    from derivative_animator.render import checks

    records = dataset.read_split(ROOT / "data/derivatives", "test")[:n]
    render = checks.RenderOptions(fps=5)
    result: dict = {"render_scenes": len(records)}
    for label in ("fresh", "warm"):
        start = time.perf_counter()
        sandbox = (
            checks.PythonSandbox(render.limits, checks.RENDER_PRELOAD) if label == "warm" else None
        )
        times, passed = [], 0
        for record in records:
            code = oracle.template_scene(record.function, record.style)
            begun = time.perf_counter()
            outcome = checks.check_code(code, record.function, render=render, sandbox=sandbox)
            times.append(time.perf_counter() - begun)
            passed += outcome.passed
        if sandbox is not None:
            sandbox.close()
        result[f"render_{label}_total_s"] = round(time.perf_counter() - start, 1)
        result[f"render_{label}_median_s"] = round(statistics.median(times), 2)
        result[f"render_{label}_passed"] = passed
    if against:
        old = scenes_at(against)
        sandbox = checks.PythonSandbox(render.limits, checks.RENDER_PRELOAD)
        times: dict[str, list[float]] = {"now": [], against: []}
        for record in records:
            analysed = curriculum.analyse(parse_function(record.function), wider=True)
            for label, module in (("now", None), (against, old)):
                code = (
                    oracle.template_scene(record.function, record.style)
                    if module is None
                    else module.scene_code(
                        analysed.expr,
                        analysed.derivative,
                        analysed.steps,
                        analysed.x_range,
                        record.style,
                    )
                )
                begun = time.perf_counter()
                checks.check_code(code, record.function, render=render, sandbox=sandbox)
                times[label].append(time.perf_counter() - begun)
        sandbox.close()
        for label, values in times.items():
            result[f"render_interleaved_median_s[{label}]"] = round(statistics.median(values), 2)
            result[f"render_interleaved_total_s[{label}]"] = round(sum(values), 1)
    return result


def scenes_at(revision: str):
    """The scene templates as they were at a git revision, imported as their own module. Before
    the package had layers they lived in scenes.py and imported the math modules flat: those
    imports are pointed at math/ (the templates' own text is left as it was)."""
    import importlib.util
    import re
    import tempfile

    for relative in ("data/scenes.py", "scenes.py"):
        shown = subprocess.run(
            ["git", "show", f"{revision}:src/derivative_animator/{relative}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"error: no scene templates at revision {revision}")
    flat = re.compile(
        r"^from derivative_animator(\.(parsing|notation|differentiate|curriculum))? "
        r"import (?!typed_line$)",
        re.M,
    )
    source = flat.sub(
        lambda m: f"from derivative_animator.math{m.group(1) or ''} import ", shown.stdout
    )
    path = Path(tempfile.mkdtemp()) / "scenes_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("scenes_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scenes_then"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", choices=["data", "training", "generation", "rollbacks", "eval", "renders"]
    )
    parser.add_argument(
        "--validate", action="store_true", help="also time render-validation of every sample"
    )
    parser.add_argument(
        "--eval", action="store_true", help="also time evaluation of the test split"
    )
    parser.add_argument(
        "--steps", type=int, default=12, help="training micro-batches to time per run"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each training loop (medians)"
    )
    parser.add_argument(
        "--against", help="renders: also render the scene templates of this git revision"
    )
    parser.add_argument("--checkpoint", help="merged checkpoint for generation (default: newest)")
    parser.add_argument(
        "--samples", type=int, default=20, help="test functions for generation latency"
    )
    args = parser.parse_args()
    import os

    figures = {"cpu_count": os.cpu_count()}
    if args.only in (None, "data"):
        figures.update(bench_data(args.validate))
    if args.only in (None, "training"):
        figures.update(bench_training(args.steps, args.repeats))
    if args.only in (None, "generation"):
        figures.update(bench_generation(args.checkpoint, args.samples))
    if args.only == "rollbacks":
        figures.update(bench_rollbacks(args.checkpoint, args.samples))
    if args.only == "renders":
        figures.update(bench_renders(args.samples, args.against))
    if args.only == "eval" or (args.only is None and args.eval):
        figures.update(bench_eval(args.checkpoint))
    out = ROOT / "outputs" / "benchmark.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
