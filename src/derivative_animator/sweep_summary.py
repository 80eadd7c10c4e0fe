"""`make sweep-summary`: a table and a plot of one metric by LoRA rank and epochs, from
the MLflow runs of a sweep (the newest sweep unless --sweep names one; a named sweep run again
shows its newest run of each rank and epochs), best run first.
The default metric is val/math (the validation headers' derivatives right, in percent:
higher is better); val/loss ranks lowest first.

    python -m derivative_animator.sweep_summary [--sweep NAME] [--metric val/math] [-o plot.png]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from derivative_animator import paths


def sweep_runs(tracking_uri: str, experiment: str, sweep: str | None, metric: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(
            f"no MLflow experiment {experiment!r} at {tracking_uri}: run `make sweep` first"
        )
    runs = client.search_runs(
        [found.experiment_id], filter_string="tags.sweep != ''", max_results=5000
    )
    runs = [r for r in runs if r.data.tags.get("sweep")]
    if not runs:
        raise ValueError("no sweep runs found: run `make sweep` first")
    if sweep is None:  # the newest sweep
        sweep = max(runs, key=lambda r: r.info.start_time).data.tags["sweep"]
    chosen = [r for r in runs if r.data.tags.get("sweep") == sweep and metric in r.data.metrics]
    if not chosen:
        raise ValueError(f"no finished runs with metric {metric!r} in sweep {sweep!r}")
    newest = {}  # a named sweep run again (make sweep twice): its newest run of each cell
    for r in sorted(chosen, key=lambda r: r.info.start_time):
        cell = (
            int(r.data.params.get("lora/r", r.data.tags.get("lora_r", 0)) or 0),
            int(r.data.params.get("trainer/max_epochs", 0)),
        )
        newest[cell] = (*cell, r.data.metrics[metric], r.info.run_id)
    return sweep, [newest[cell] for cell in sorted(newest)]


def plot(rows, metric: str, sweep: str, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for epochs in sorted({e for _, e, _, _ in rows}):
        points = [(r, v) for r, e, v, _ in rows if e == epochs]
        axis.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", label=f"{epochs} epochs"
        )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("LoRA rank r")
    axis.set_ylabel(metric)
    axis.set_title(f"sweep {sweep}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweep")
    parser.add_argument("--metric", default="val/math")
    parser.add_argument("--experiment", default="derivative-animator")
    parser.add_argument("-o", "--output", default="outputs/sweep_summary.png")
    args = parser.parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{paths.PROJECT_ROOT}/mlruns/mlflow.db")
    try:
        sweep, rows = sweep_runs(uri, args.experiment, args.sweep, args.metric)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    higher_is_better = "loss" not in args.metric and "perplexity" not in args.metric
    ranked = sorted(rows, key=lambda row: -row[2] if higher_is_better else row[2])
    print(
        f"sweep {sweep}: {args.metric}, best first\n\n"
        f"| rank | lora r | epochs | {args.metric} | MLflow run |\n"
        "|---|---|---|---|---|"
    )
    for place, (r, epochs, value, run_id) in enumerate(ranked, 1):
        print(f"| {place} | {r} | {epochs} | {value:.4f} | {run_id} |")
    output = paths.resolve(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.metric, sweep, output)
    print(f"\nplot: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
