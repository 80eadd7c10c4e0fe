"""MLflow by its conventions: what the UI needs to show our runs as people expect them.

- `mark_experiment`: the experiment opens on its runs table, not on MLflow's GenAI overview
  (MLflow 3 reads the tag `mlflow.experimentKind`);
- `log_splits`: a run's data as MLflow dataset inputs (name, digest, source, context), so the
  runs table's Dataset column says which data a run saw;
- `log_evaluation`: an evaluation as a child run of the training run it evaluated.
"""

from __future__ import annotations

from pathlib import Path

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
CONTEXTS = {"train": "training", "validation": "validation", "test": "evaluation"}


def mark_experiment(client, experiment_id: str) -> None:
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def split_dataset(data_dir: str | Path, split: str):
    """A dataset split as an MLflow dataset: its records' fields, sourced from its JSONL file."""
    import warnings

    import mlflow
    import pandas as pd

    from derivative_animator.data import dataset

    path = Path(data_dir) / f"{split}.jsonl"
    records = dataset.read_split(data_dir, split)
    frame = pd.DataFrame([{"id": r.id, "level": r.level, "style": r.style, "function": r.function,
                           "prompt": r.prompt, "completion": r.completion} for r in records])
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local-file sources, the same
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(frame, source=str(path.resolve()), name=f"{Path(data_dir).name}-{split}")


def log_splits(client, run_id: str, data_dir: str | Path, splits: tuple[str, ...]) -> None:
    from mlflow.entities import DatasetInput, InputTag

    inputs = [DatasetInput(split_dataset(data_dir, split)._to_mlflow_entity(),
                           tags=[InputTag("mlflow.data.context", CONTEXTS[split])]) for split in splits]
    client.log_inputs(run_id, datasets=inputs)


CHECKPOINT_EXTRAS = ("prompt_format.json", "derivanim_config.json", "draft_corpus.json", "run_info.json")


def log_merged_model(tracking_uri: str, run_id: str, merged_dir: Path, registered_name: str | None):
    """The merged checkpoint as an MLflow model (transformers flavor, text generation), with
    the prompt format and its hash in the model's metadata, registered under `registered_name`
    (a version per run); the checkpoint's own files beside it as run artifacts. Returns the
    model info (`model_uri`, `registered_model_version`)."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from derivative_animator.data.prompt import PromptFormat

    prompt_format = PromptFormat.load(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer}, name="model", task="text-generation",
            metadata={"prompt_format": prompt_format.to_dict()}, registered_model_name=registered_name,
            pip_requirements=["torch", "transformers", "accelerate"],  # inferring them imports torchvision
        )
        for name in CHECKPOINT_EXTRAS:
            if (merged_dir / name).is_file():
                mlflow.log_artifact(str(merged_dir / name), artifact_path="checkpoint")
    return info


def load_logged_model(model_uri: str):
    """(model, tokenizer, prompt format) of a model logged by `log_merged_model`, offline."""
    import mlflow

    from derivative_animator.data.prompt import PromptFormat

    components = mlflow.transformers.load_model(model_uri, return_type="components")
    stored = mlflow.models.get_model_info(model_uri).metadata["prompt_format"]
    prompt_format = PromptFormat(name=stored["name"], template=stored["template"], notation=stored["notation"])
    return components["model"], components["tokenizer"], prompt_format


def log_evaluation(results: dict, run_dir: Path) -> str | None:
    """An evaluation is an MLflow run of its own, a child of the evaluated checkpoint's
    training run (`mlflow.parentRunId`): its metrics (eval/<baseline>/<metric>), the
    functions it evaluated as a dataset input, every row as an MLflow table, the reports and
    gallery as artifacts. The headline metrics also go to the training run, where runs are
    compared. Returns the evaluation run's id (None when the checkpoint has no run)."""
    import json
    import time

    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag, Metric

    if not results["model"]:
        return None
    info_path = Path(results["model"]) / "run_info.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    client = mlflow.MlflowClient(tracking_uri=info["tracking_uri"])
    run_id = info["mlflow_run_id"]
    # A benchmark's figures are its own (eval/textbook/finetuned/math); the test split's keep eval/...
    benchmark = results.get("benchmark")
    prefix = f"eval/{benchmark}" if benchmark else "eval"
    metrics = {f"{prefix}/time/{name}": seconds for name, seconds in results.get("timings", {}).items()}
    for baseline, groups in results["summary"].items():
        for group, values in groups.items():
            for metric, value in values.items():
                if isinstance(value, (int, float)) and (not group.startswith("kind/") or metric in ("math", "n")):
                    suffix = "" if group == "all" else f"/{group}"
                    metrics[f"{prefix}/{baseline}/{metric.replace('@', '_at_')}{suffix}"] = float(value)
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, 0) for key, value in metrics.items()]
    # One call: each single log_metric is a sqlite transaction (~9 ms; 200 of them here).
    client.log_batch(run_id, metrics=batch)
    training = client.get_run(run_id)
    mark_experiment(client, training.info.experiment_id)
    evaluation = client.create_run(training.info.experiment_id, run_name=f"eval-{benchmark or Path(results.get('functions_source') or 'eval').stem}-{run_dir.name}", tags={
        "mlflow.parentRunId": run_id, "stage": "evaluation", "evaluated_run": run_id, "benchmark": benchmark or "",
        "model": training.data.tags.get("model", "")}).info.run_id
    client.log_batch(evaluation, metrics=batch,
                     params=[mlflow.entities.Param("model", str(results["model"]))])
    rows = results.get("rows", [])
    if rows:
        functions = pd.DataFrame([{"sample_id": r["sample_id"], "function": r["function"], "level": r["level"]}
                                  for r in rows]).drop_duplicates("sample_id")
        source = results.get("functions_source") or str(run_dir)
        name = f"benchmark-{benchmark}" if benchmark else f"eval-{Path(source).stem}"
        dataset = mlflow.data.from_pandas(functions, source=source, name=name)
        client.log_inputs(evaluation, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                             tags=[InputTag("mlflow.data.context", "evaluation")])])
        table = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows])
        client.log_table(evaluation, data=table, artifact_file="rows.json")
    client.log_artifacts(evaluation, str(run_dir / "report"), artifact_path="report")
    client.set_terminated(evaluation, "FINISHED")
    return evaluation
