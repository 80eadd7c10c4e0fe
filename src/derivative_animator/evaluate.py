"""Evaluation: generate a scene per function, render every one in the sandbox, check the
mathematics, and report per baseline and per curriculum level.

    python -m derivative_animator.evaluate                        # make eval (test split)
    python -m derivative_animator.evaluate eval.model=outputs/train/<run>/checkpoint/merged
    python -m derivative_animator.evaluate eval.functions_file=my_functions.txt

Baselines (eval.baselines): `template` (the oracle: the dataset's template with the true
derivative; it must score 100%, the evaluator's own sanity check), `base` (the model before
fine-tuning, same prompt), `finetuned` (greedy, raw), `self_consistency` (the greedy scene under
the math header most sampled headers agree on), `verified` (the sampled headers the math judge
accepts completed until one passes every check), `api` (a model behind any OpenAI-compatible
endpoint, eval.api; skipped with a one-line reason where there is none): each one class in
`eval/baselines.py`, its registry. This module composes the config and builds the typed settings
(`eval/settings.py`, `model/settings.py`) once; the engine (queue, evaluator), the baselines' rows
and the figures live in `eval/`.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from derivative_animator import paths
from derivative_animator.data.scenes import STYLES
from derivative_animator.eval.baselines import BASELINES, Run, requested
from derivative_animator.eval.engine import Evaluator, Row, Sample
from derivative_animator.eval.metrics import summarize
from derivative_animator.eval.settings import EvaluationSettings
from derivative_animator.model.settings import GenerationSettings


def load_samples(cfg: DictConfig) -> list[Sample]:
    from derivative_animator.data import dataset, oracle
    from derivative_animator.math.parsing import ParseError, function_lines

    if cfg.eval.benchmark:
        samples = benchmark_samples(cfg.eval.benchmark)
    elif cfg.eval.functions_file:
        path = paths.resolve(cfg.eval.functions_file)
        if not path.is_file():
            raise FileNotFoundError(f"eval.functions_file {path} not found")
        samples = []
        for number, text in function_lines(path):
            try:
                info = oracle.describe(text)
            except (
                ParseError
            ) as err:  # one bad line never stops the others: it becomes a failed row
                samples.append(
                    Sample(f"line{number:04d}", text, 0, problem=f"{path.name}:{number}: {err}")
                )
                continue
            samples.append(Sample(f"line{number:04d}", info["function"], info["level"]))
    else:
        samples = [
            Sample(r.id, r.function, r.level, r.style)
            for r in dataset.read_split(cfg.data.dir, cfg.eval.split)
        ]
    samples = samples[: cfg.eval.limit] if cfg.eval.limit else samples
    if cfg.eval.ask_styles and not (cfg.eval.benchmark or cfg.eval.functions_file):
        return samples  # a split's records carry their style
    if cfg.eval.ask_styles:  # the other sources have none: each style in turn
        return [replace(s, style=STYLES[i % len(STYLES)]) for i, s in enumerate(samples)]
    return samples


def benchmark_samples(name: str) -> list[Sample]:
    """A benchmark's functions (data/benchmarks.py), each with the kinds it exercises. One the
    oracle cannot animate (a constant function) is no exercise for the model: left out, said."""
    from derivative_animator.data import benchmarks
    from derivative_animator.math import curriculum, expression_trees, notation
    from derivative_animator.math.parsing import parse_function

    samples = []
    for item in benchmarks.items(name):
        try:
            expr = parse_function(item.text)
            analysed = curriculum.analyse(expr, wider=True)
        except ValueError as err:  # ParseError, or no rule for it: a failed row, the rest go on
            samples.append(Sample(item.id, item.text, 0, problem=f"{item.source}: {err}"))
            continue
        if analysed is None:
            print(
                f"note: {item.id} ({item.source}) f(x) = {item.text} left out: the oracle cannot "
                "animate it (constant, or never real and readable)",
                file=sys.stderr,
            )
            continue
        samples.append(
            Sample(
                item.id,
                notation.typed(expr),
                analysed.level,
                kinds=tuple(
                    sorted(
                        expression_trees.kinds(expr) | {expression_trees.length_bucket(item.text)}
                    )
                ),
            )
        )
    return samples


def latest_checkpoint() -> Path:
    runs = sorted(
        paths.resolve("outputs/train").glob("*/checkpoint/merged"), key=lambda p: p.stat().st_mtime
    )
    runs += sorted(
        paths.resolve("outputs/train-multirun").glob("*/*/checkpoint/merged"),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        raise FileNotFoundError(
            "no trained checkpoint under outputs/train: run `make train` first, or set eval.model"
        )
    return max(runs, key=lambda p: p.stat().st_mtime)


def evaluated_model(cfg: DictConfig) -> Path | None:
    """The checkpoint the requested baselines need (eval.model, or the newest), None for none."""
    if not any(baseline.needs_model for baseline in requested(cfg.eval.baselines)):
        return None
    return (
        latest_checkpoint() if cfg.eval.model in (None, "latest") else paths.resolve(cfg.eval.model)
    )


def run_evaluation(cfg: DictConfig, run_dir: Path, model_dir: Path | None = None) -> dict:
    """The requested baselines' rows and figures: settings built here, once, from the composed
    config; each baseline (eval/baselines.py) writes its own rows."""
    from rich.progress import Progress

    settings = EvaluationSettings.from_config(cfg.eval)
    # The evaluator measures the model: it never repairs a scene, whatever conf/generate says
    # (repair is for what the CLI and the page show a user).
    generation = GenerationSettings.from_config(cfg.generate).changed(repair=False)
    chosen = requested(settings.baselines)
    samples = load_samples(cfg)
    model_dir = model_dir or evaluated_model(cfg)
    futures: dict[str, list[Future]] = {baseline.name: [] for baseline in chosen}
    started = time.perf_counter()
    with (
        Evaluator(settings, run_dir) as evaluator,
        _torch_threads(settings.torch_threads()),
        Progress() as progress,
    ):
        run = Run(evaluator, settings, generation, model_dir, progress, started)
        for sample in samples:  # lines that do not parse: a failed row in every baseline
            if sample.problem is not None:
                for baseline in chosen:
                    futures[baseline.name].append(baseline.failed(sample, sample.problem))
        usable = [sample for sample in samples if sample.problem is None]
        for (
            baseline
        ) in BASELINES.values():  # the registry's order: the oracle's spare renders first
            if baseline.name in futures:
                futures[baseline.name] += baseline.rows(run, usable)
        task = progress.add_task(
            "rendering and checking", total=sum(len(v) for v in futures.values())
        )
        rows: list[Row] = []
        for baseline in chosen:
            for future in futures[baseline.name]:
                rows.append(future.result())
                progress.advance(task)
    # Renders overlap generation: only the total is the wall time a user waits.
    run.timings["total_s"] = round(time.perf_counter() - started, 1)
    return {
        "model": str(model_dir) if model_dir else None,
        "samples": len(samples),
        "functions_source": str(functions_source(cfg)),
        "benchmark": settings.benchmark,
        "notes": run.notes,
        "rows": [asdict(r) for r in rows],
        "summary": summarize(
            rows,
            settings.samples_per_function,
            {s.id: s.kinds for s in samples},
            {s.id: s.style for s in samples} if settings.ask_styles else None,
        ),
        "timings": run.timings,
    }


def functions_source(cfg: DictConfig) -> Path:
    if cfg.eval.benchmark:
        from derivative_animator.data import benchmarks

        return benchmarks.BENCHMARK_DIR / benchmarks.FILES[cfg.eval.benchmark]
    if cfg.eval.functions_file:
        return paths.resolve(cfg.eval.functions_file)
    return paths.resolve(cfg.data.dir) / f"{cfg.eval.split}.jsonl"


@contextmanager
def _torch_threads(count: int):
    """torch's thread count is process-wide: set it for the evaluation, then give it back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    return evaluate_and_report(cfg, Path(HydraConfig.get().runtime.output_dir))


def evaluate_and_report(cfg: DictConfig, run_dir: Path) -> int:
    """The evaluation inside its MLflow run (open from before the first function to after the
    reports: the run's duration is the evaluation's), then the tables and where things are."""
    from contextlib import nullcontext

    from rich.console import Console

    from derivative_animator import tracking
    from derivative_animator.eval import report

    model_dir = evaluated_model(cfg)
    source = cfg.eval.benchmark or functions_source(cfg).stem
    mlflow_run = (
        tracking.evaluation_run(model_dir, source, cfg.eval.benchmark)
        if cfg.eval.log_to_mlflow
        else nullcontext()
    )
    with mlflow_run as run_id:
        results = run_evaluation(cfg, run_dir, model_dir)
        results["config"] = OmegaConf.to_container(cfg, resolve=True)
        report_dir = report.write_reports(results, run_dir)
        if run_id:
            tracking.log_evaluation(results, run_dir, run_id)
    console = Console(soft_wrap=True)  # tables keep their rows whole in a log or a narrow terminal
    console.print(report.markdown_table(results["summary"]))
    if kinds := report.kind_table(results["summary"]):
        console.print(f"\nMath by kind ({cfg.eval.benchmark} benchmark):\n{kinds}")
    if styles := report.style_table(results["summary"]):
        console.print(f"\nMath and layout by the style asked:\n{styles}")
    timings = results["timings"]
    phases = ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if k != "total_s")
    console.print(
        f"\n{results['samples']} functions x {len(cfg.eval.baselines)} baselines in "
        f"{timings['total_s']:.0f} s" + (f" ({phases})" if phases else "")
    )
    console.print(f"reports: {report_dir}\ngallery: {report_dir / 'gallery.html'}")
    if run_id:
        console.print(f"MLflow: run {run_id}; browse with `make ui` (http://127.0.0.1:5000)")
    failed = [row for row in results["rows"] if row["extra"].get("failed")]
    if failed:
        print(
            f"error: {len(failed)} of {len(results['rows'])} rows could not be evaluated "
            f"(the first: {failed[0]['function']!r}: {failed[0]['error']}); "
            "each row's error is in results.json",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "eval"))
