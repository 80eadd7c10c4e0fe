"""MLflow by its conventions: what the UI needs to show our runs as people expect them.

- `mark_experiment`: the experiment opens on its runs table, not on MLflow's GenAI overview
  (MLflow 3 reads the tag `mlflow.experimentKind`);
- `log_splits`: a run's data as MLflow dataset inputs (name, digest, source, context), so the
  runs table's Dataset column says which data a run saw;
- `training_run_name` / `evaluation_run_name`: names that say what ran
  (`lora-r64-tiny-1130-1630`, `eval-test-lora-r64-tiny-1130-1630-1130-1702`);
- `evaluation_run` / `log_evaluation`: an evaluation as a child run of the training run it
  evaluated, open while the evaluation runs (its duration is the evaluation's), its headline
  metrics (`test/math`, `textbook/math`, ...) on both runs;
- `describe_registered_model`: the registered model's description and tags (base, LoRA,
  dataset, benchmarks, prompt format, recipe);
- `checkpoint_title`: a checkpoint as people name it (`derivanim-tiny + LoRA r64 (2026-12-03
  07:35)`), from what training saved beside it: the page's name for its model.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from derivative_animator.model.checkpoint_files import (
    DRAFT_CORPUS,
    MERGED_DIR,
    RUN_INFO,
    TRAINED_CONFIG,
)

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
CONTEXTS = {"train": "training", "validation": "validation", "test": "evaluation"}


DATE_FORMAT = "%m%d-%H%M"  # month-day-hour-minute: short enough for the runs table's name column


def run_date(when: datetime | None = None) -> str:
    return (when or datetime.now()).strftime(DATE_FORMAT)


def training_run_name(
    model: str, lora_r: int | None, when: datetime | None = None, job: str | None = None
) -> str:
    """`lora-r64-tiny-1130-1630` (a LoRA fine-tune) or `full-tiny-1130-1630`; a sweep's job adds
    its number (`-j3`): a sweep starts many jobs in one minute."""
    method = f"lora-r{lora_r}" if lora_r is not None else "full"
    return f"{method}-{model}-{run_date(when)}" + (f"-j{job}" if job is not None else "")


def evaluation_run_name(source: str, checkpoint: str, when: datetime | None = None) -> str:
    """`eval-<test|textbook|random|file stem>-<the checkpoint's run name or dir>-<date>`."""
    return f"eval-{source}-{checkpoint}-{run_date(when)}"


def mark_experiment(client, experiment_id: str) -> None:
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def pretraining_run(logger_cfg, run_name: str, params: dict[str, object]):
    """How pretraining opens its MLflow run: `open_run(run id or None) -> (client, run id)`,
    which continues an interrupted build's run or creates one (its experiment marked, the
    recipe's params logged). `model.pretrain.build_base` calls it; model/ never imports MLflow's
    home."""

    def open_run(run_id: str | None):
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=logger_cfg.tracking_uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return client, run_id
        experiment = client.get_experiment_by_name(logger_cfg.experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = client.create_experiment(
                logger_cfg.experiment_name, artifact_location=logger_cfg.artifact_location
            )
            mark_experiment(client, experiment_id)
        run = client.create_run(experiment_id, run_name=run_name, tags={"stage": "pretrain"})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, str(value)[:500])
        return client, run.info.run_id

    return open_run


def split_dataset(data_dir: str | Path, split: str):
    """A dataset split as an MLflow dataset: its records' fields, sourced from its JSONL file."""
    import warnings

    import mlflow
    import pandas as pd

    from derivative_animator.data import dataset

    path = Path(data_dir) / f"{split}.jsonl"
    records = dataset.read_split(data_dir, split)
    frame = pd.DataFrame(
        [
            {
                "id": r.id,
                "level": r.level,
                "style": r.style,
                "function": r.function,
                "prompt": r.prompt,
                "completion": r.completion,
            }
            for r in records
        ]
    )
    with (
        warnings.catch_warnings()
    ):  # "can be interpreted in multiple ways": two local-file sources, the same
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(
            frame, source=str(path.resolve()), name=f"{Path(data_dir).name}-{split}"
        )


def log_splits(client, run_id: str, data_dir: str | Path, splits: tuple[str, ...]) -> None:
    from mlflow.entities import DatasetInput, InputTag

    inputs = [
        DatasetInput(
            split_dataset(data_dir, split)._to_mlflow_entity(),
            tags=[InputTag("mlflow.data.context", CONTEXTS[split])],
        )
        for split in splits
    ]
    client.log_inputs(run_id, datasets=inputs)


CHECKPOINT_EXTRAS = (
    TRAINED_CONFIG,
    DRAFT_CORPUS,
    RUN_INFO,
)  # beside the prompt format's (prompt.FILENAME)


def log_merged_model(tracking_uri: str, run_id: str, merged_dir: Path, registered_name: str | None):
    """The merged checkpoint as an MLflow model (transformers flavor, text generation), with
    the prompt format and its hash in the model's metadata, registered under `registered_name`
    (a version per run); the checkpoint's own files beside it as run artifacts. Returns the
    model info (`model_uri`, `registered_model_version`)."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from derivative_animator.data.prompt import FILENAME, PromptFormat

    prompt_format = PromptFormat.load(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name="model",
            task="text-generation",
            metadata={"prompt_format": prompt_format.to_dict()},
            registered_model_name=registered_name,
            pip_requirements=[
                "torch",
                "transformers",
                "accelerate",
            ],  # inferring them imports torchvision
        )
        for name in (FILENAME, *CHECKPOINT_EXTRAS):
            if (merged_dir / name).is_file():
                mlflow.log_artifact(str(merged_dir / name), artifact_path="checkpoint")
    if registered_name and info.registered_model_version is not None:
        describe_registered_model(
            mlflow.MlflowClient(tracking_uri=tracking_uri),
            registered_name,
            str(info.registered_model_version),
            merged_dir,
        )
    return info


def model_tags(merged_dir: Path) -> dict[str, str]:
    """What a merged checkpoint is, from the files it carries: base model (and its build recipe's
    digest), LoRA rank and alpha, dataset and benchmarks digests, prompt format, training recipe."""
    import hashlib

    from derivative_animator import paths
    from derivative_animator.data import benchmarks
    from derivative_animator.data.prompt import PromptFormat

    config = json.loads((merged_dir / TRAINED_CONFIG).read_text())
    model, lora = config["model"], config["lora"]
    pretrained = str(model.get("pretrained") or model["name"])
    base_dir = (
        paths.resolve(pretrained) if paths.resolve(pretrained).exists() else None
    )  # else a hub id
    tags = {
        "base_model": base_dir.name if base_dir else pretrained,
        "model": str(model["name"]),
        "lora_r": str(lora["r"]) if lora["enabled"] else "full",
        "lora_alpha": str(lora["alpha"]) if lora["enabled"] else "full",
    }
    if base_dir and (base_dir / "build_info.json").is_file():
        tags["base_recipe_sha256"] = json.loads((base_dir / "build_info.json").read_text()).get(
            "config_sha256", ""
        )
    data_dir = paths.resolve(config["data"]["dir"])
    tags["dataset"] = data_dir.name
    if (data_dir / "train.jsonl").is_file():
        tags["dataset_sha256"] = hashlib.sha256((data_dir / "train.jsonl").read_bytes()).hexdigest()
    tags["benchmarks_sha256"] = benchmarks.digest()
    prompt_format = PromptFormat.load(merged_dir)
    tags["prompt_format"], tags["prompt_format_sha256"] = prompt_format.name, prompt_format.sha256
    trainer = config.get("trainer", {})
    if "reinforce" in config:  # learnt from the math judge, after fine-tuning (its own recipe)
        stage = config["reinforce"]
        tags["recipe"] = (
            f"reinforce lr={stage['lr']} steps={stage['steps']} "
            f"functions_per_step={stage['functions_per_step']} group_size={stage['group_size']} "
            f"beta={stage['beta']} seed={config.get('seed')}"
        )
        return tags
    optim = config["optim"]
    tags["recipe"] = (
        f"lr={optim['lr']} batch={optim['effective_batch_size']} "
        f"epochs={trainer.get('max_epochs')} "
        f"full_scenes={config.get('full_scenes')} seed={config.get('seed')}"
    )
    return tags


def describe_registered_model(client, name: str, version: str, merged_dir: Path) -> None:
    """The registered model's description and tags (the newest version's), and each version's
    own."""
    tags = model_tags(merged_dir)
    method = (
        f"LoRA (r={tags['lora_r']}, alpha={tags['lora_alpha']})"
        if tags["lora_r"] != "full"
        else "Full"
    )
    description = (
        f"{method} fine-tune of {tags['base_model']} that writes a Manim scene animating a "
        "function's derivative. "
        f"Trained on {tags['dataset']} (train.jsonl sha256 "
        f"{tags.get('dataset_sha256', '?')[:12]}), which leaves out "
        f"the benchmarks (sha256 {tags['benchmarks_sha256'][:12]}); "
        f"prompt format {tags['prompt_format']} "
        f"(sha256 {tags['prompt_format_sha256'][:12]}); recipe {tags['recipe']}. "
        "Each version is one training run; "
        "its evaluations are child runs of that run, headline metrics test/math, textbook/math, "
        "random/math."
    )
    client.update_registered_model(name, description=description)
    client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_registered_model_tag(name, key, value)
        client.set_model_version_tag(name, version, key, value)


def load_logged_model(model_uri: str):
    """(model, tokenizer, prompt format) of a model logged by `log_merged_model`, offline."""
    import mlflow

    from derivative_animator.data.prompt import PromptFormat

    components = mlflow.transformers.load_model(model_uri, return_type="components")
    stored = mlflow.models.get_model_info(model_uri).metadata["prompt_format"]
    prompt_format = PromptFormat(
        name=stored["name"], template=stored["template"], notation=stored["notation"]
    )
    return components["model"], components["tokenizer"], prompt_format


def _training_run(model_dir) -> tuple[dict, object] | None:
    """(run_info.json, client) of the training run that wrote checkpoint `model_dir`, or None."""
    import mlflow

    if not model_dir:
        return None
    info_path = Path(model_dir) / RUN_INFO
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    return info, mlflow.MlflowClient(tracking_uri=info["tracking_uri"])


def checkpoint_name(model_dir: Path, client=None, run_id: str | None = None) -> str:
    """The checkpoint's training run name, else its run directory's name
    (<run dir>/checkpoint/merged)."""
    if client is not None and run_id:
        name = client.get_run(run_id).info.run_name
        if name:
            return name
    model_dir = Path(model_dir)
    return model_dir.parent.parent.name if model_dir.name == MERGED_DIR else model_dir.name


def checkpoint_title(model_dir: Path) -> str:
    """The checkpoint as people name it, from what training saved beside it (no MLflow asked):
    its base, how it was tuned and when, "derivanim-tiny + LoRA r64 (2026-12-03 07:35)"; the
    directory's name where it carries no training config (a base or a hand-made checkpoint)."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / TRAINED_CONFIG).read_text())
        model, lora = config["model"], config.get("lora") or {}
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint_name(model_dir)
    shipped = (model.get("build") or {}).get("publish_dir")
    pretrained = str(model.get("pretrained") or "")
    base = (
        Path(shipped).name
        if shipped
        else pretrained
        if pretrained and not Path(pretrained).is_absolute()
        else str(model.get("name") or checkpoint_name(model_dir))
    )
    tuned = f"LoRA r{lora['r']}" if lora.get("enabled") and lora.get("r") else "full fine-tune"
    when = _run_started(model_dir)
    return f"{base} + {tuned}" + (f" ({when:%Y-%m-%d %H:%M})" if when else "")


def _run_started(model_dir: Path) -> datetime | None:
    """When the training run that wrote the checkpoint began: its run directory is named by
    Hydra's clock (`2026-12-03_07-35-00-850501`); else when the checkpoint's weights were saved."""
    run_dir = model_dir.parent.parent if model_dir.name == MERGED_DIR else model_dir
    try:
        return datetime.strptime(run_dir.name, "%Y-%m-%d_%H-%M-%S-%f")
    except ValueError:
        pass
    weights = next(iter(sorted(model_dir.glob("*.safetensors"))), None)
    return datetime.fromtimestamp(weights.stat().st_mtime) if weights is not None else None


@contextmanager
def evaluation_run(model_dir, source: str, benchmark: str | None = None):
    """The evaluation's MLflow run, open while the evaluation runs: created before (RUNNING, a
    child of the checkpoint's training run, named by `evaluation_run_name`), FINISHED by
    `log_evaluation` or FAILED if anything raises. Yields its id, or None when the checkpoint
    has no training run (nothing is logged then)."""
    found = _training_run(model_dir)
    if found is None:
        yield None
        return
    info, client = found
    run_id = info["mlflow_run_id"]
    training = client.get_run(run_id)
    mark_experiment(client, training.info.experiment_id)
    name = evaluation_run_name(source, checkpoint_name(model_dir, client, run_id))
    evaluation = client.create_run(
        training.info.experiment_id,
        run_name=name,
        tags={
            "mlflow.parentRunId": run_id,
            "stage": "evaluation",
            "evaluated_run": run_id,
            "benchmark": benchmark or "",
            "model": training.data.tags.get("model", ""),
        },
    ).info.run_id
    try:
        yield evaluation
    except BaseException:
        client.set_terminated(evaluation, "FAILED")
        raise
    if client.get_run(evaluation).info.status == "RUNNING":  # log_evaluation was never reached
        client.set_terminated(evaluation, "FINISHED")


HEADLINE_BASELINES = ("finetuned", "self_consistency", "verified", "api")


def headline(results: dict) -> dict[str, float]:
    """A few metrics with names a person finds in the Columns list: `<source>/math` (the raw
    fine-tuned model's math, in percent), `<source>/passed` (all four checks), and the other
    model baselines' math (`<source>/math_self_consistency`, ...); source = test, textbook, random
    or the functions file's stem."""
    source = evaluation_source(results)
    metrics = {}
    for baseline in HEADLINE_BASELINES:
        overall = results["summary"].get(baseline, {}).get("all", {})
        suffix = "" if baseline == "finetuned" else f"_{baseline}"
        if isinstance(overall.get("math"), (int, float)):
            metrics[f"{source}/math{suffix}"] = float(overall["math"])
        if baseline == "finetuned" and isinstance(overall.get("passed"), (int, float)):
            metrics[f"{source}/passed"] = float(overall["passed"])
    return metrics


def evaluation_source(results: dict) -> str:
    return results.get("benchmark") or Path(results.get("functions_source") or "eval").stem


def log_evaluation(results: dict, run_dir: Path, evaluation: str | None = None) -> str | None:
    """An evaluation is an MLflow run of its own, a child of the evaluated checkpoint's
    training run (`mlflow.parentRunId`): its metrics (eval/<baseline>/<metric>), the headline
    (`headline`, also as the table headline.json), the functions it evaluated as a dataset input,
    every row as an MLflow table, the reports and gallery as artifacts. The headline and the
    eval/ metrics also go to the training run, where runs are compared. `evaluation`: the run
    `evaluation_run` opened (none: one is opened and closed here). Returns the evaluation run's
    id (None when the checkpoint has no run)."""
    if evaluation is None:
        with evaluation_run(
            results["model"], evaluation_source(results), results.get("benchmark")
        ) as opened:
            return log_evaluation(results, run_dir, opened) if opened else None
    import time

    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag, Metric

    info, client = _training_run(results["model"])
    run_id = info["mlflow_run_id"]
    # A benchmark's figures are its own (eval/textbook/finetuned/math); the test split's keep
    # eval/...
    benchmark = results.get("benchmark")
    prefix = f"eval/{benchmark}" if benchmark else "eval"
    metrics = {
        f"{prefix}/time/{name}": seconds for name, seconds in results.get("timings", {}).items()
    }
    for baseline, groups in results["summary"].items():
        for group, values in groups.items():
            for metric, value in values.items():
                if isinstance(value, (int, float)) and (
                    not group.startswith("kind/") or metric in ("math", "n")
                ):
                    suffix = "" if group == "all" else f"/{group}"
                    metrics[f"{prefix}/{baseline}/{metric.replace('@', '_at_')}{suffix}"] = float(
                        value
                    )
    headlines = headline(results)
    metrics.update(headlines)
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, 0) for key, value in metrics.items()]
    # One call: each single log_metric is a sqlite transaction (~9 ms; 200 of them here).
    client.log_batch(run_id, metrics=batch)
    client.log_batch(
        evaluation, metrics=batch, params=[mlflow.entities.Param("model", str(results["model"]))]
    )
    source = evaluation_source(results)
    client.log_table(
        evaluation,
        data=pd.DataFrame(
            [
                {
                    "source": source,
                    "baseline": baseline,
                    "n": groups["all"].get("n"),
                    "math": groups["all"].get("math"),
                    "passed": groups["all"].get("passed"),
                }
                for baseline, groups in results["summary"].items()
                if "all" in groups
            ]
        ),
        artifact_file="headline.json",
    )
    rows = results.get("rows", [])
    if rows:
        functions = pd.DataFrame(
            [
                {"sample_id": r["sample_id"], "function": r["function"], "level": r["level"]}
                for r in rows
            ]
        ).drop_duplicates("sample_id")
        origin = results.get("functions_source") or str(run_dir)
        name = f"benchmark-{benchmark}" if benchmark else f"eval-{Path(origin).stem}"
        dataset = mlflow.data.from_pandas(functions, source=origin, name=name)
        client.log_inputs(
            evaluation,
            datasets=[
                DatasetInput(
                    dataset._to_mlflow_entity(),
                    tags=[InputTag("mlflow.data.context", "evaluation")],
                )
            ],
        )
        table = pd.DataFrame(
            [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
        )
        client.log_table(evaluation, data=table, artifact_file="rows.json")
    if (run_dir / "report").is_dir():
        client.log_artifacts(evaluation, str(run_dir / "report"), artifact_path="report")
    client.set_terminated(evaluation, "FINISHED")
    return evaluation
