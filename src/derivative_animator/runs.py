"""A training run's life, shared by the entry points that train (train, reinforce): its
directory under outputs/ (never one holding a finished run; `resume=` reopens it), its MLflow run
(params, tags, the splits; FAILED on a crash, FINISHED once the merged checkpoint is logged), and
the merged checkpoint inference loads."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from derivative_animator import paths
from derivative_animator.model.checkpoint_files import CHECKPOINT_DIR, DRAFT_CORPUS

RUN_FILE = "run.json"  # mlflow run id and status, for resuming


def _run_dir(cfg: DictConfig) -> Path:
    if cfg.get("resume"):
        return paths.resolve(cfg.resume)
    if cfg.get("run_dir"):  # set by tests and scripts that call train() without Hydra's main
        return paths.resolve(cfg.run_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _load_resumed_config(cfg: DictConfig) -> DictConfig:
    run_dir = paths.resolve(cfg.resume)
    saved = run_dir / ".hydra" / "config.yaml"
    if not (run_dir / RUN_FILE).is_file() or not saved.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a training run directory (no {RUN_FILE} or .hydra/config.yaml)"
        )
    resumed = OmegaConf.load(saved)
    resumed.resume = cfg.resume
    return resumed


def _sweep_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {"model": str(cfg.model.name), "lora_r": str(cfg.lora.r if cfg.lora.enabled else "full")}
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            tags["sweep"] = cfg.get("sweep_name") or Path(hydra_cfg.sweep.dir).name
            tags["sweep_job"] = str(hydra_cfg.job.num)
    except ValueError:
        pass  # not running under Hydra (tests call train() directly)
    if cfg.get("sweep_name"):
        tags["sweep"] = str(cfg.sweep_name)
    return tags


def run_name(cfg: DictConfig, tags: dict[str, str] | None = None) -> str:
    """`lora-r64-tiny-<date>` (`full-tiny-<date>` with LoRA off); a sweep's job adds
    `-j<number>`."""
    from derivative_animator import tracking

    tags = _sweep_tags(cfg) if tags is None else tags
    return tracking.training_run_name(
        str(cfg.model.name),
        int(cfg.lora.r) if cfg.lora.enabled else None,
        job=tags.get("sweep_job"),
    )


def _refuse_ineffective_overrides(cfg: DictConfig) -> None:
    """A LoRA setting given while LoRA is off changes nothing: `-m lora.r=4,8` would train
    identical full fine-tunes and compare nothing. Refused, saying how to turn LoRA on."""
    try:
        from hydra.core.hydra_config import HydraConfig

        given = list(HydraConfig.get().overrides.task)
    except ValueError:
        return  # not running under Hydra (tests call train() directly)
    if cfg.lora.enabled:
        return
    ineffective = [
        o
        for o in given
        if o.lstrip("+~").startswith("lora.") and not o.lstrip("+~").startswith("lora.enabled")
    ]
    if ineffective:
        raise ValueError(
            f"{', '.join(ineffective)} has no effect: LoRA is off (lora=none trains every weight); "
            f"drop lora=none or add lora.enabled=true"
        )


def data_as_built(cfg: DictConfig) -> DictConfig:
    """cfg with its data group as the dataset at data.dir was built (its card's options), so a
    run logs what it trains on; a note when the composed group says otherwise (a dataset from
    an older recipe that `make train` kept, or one built with other options on purpose)."""
    from derivative_animator.data.dataset_card import CARD_FILE

    card = paths.resolve(cfg.data.dir) / CARD_FILE if "data" in cfg else None
    if card is None or not card.is_file():
        return cfg
    built = json.loads(card.read_text())["config"]
    composed = OmegaConf.to_container(cfg.data, resolve=True)
    # an option the card lacks was off when it was built (cards leave off options out)
    as_built = {
        key: value
        if key == "dir"
        else built.get(key, type(value)() if isinstance(value, bool | int | float) else value)
        for key, value in composed.items()
    }
    differ = [key for key in composed if as_built[key] != composed[key]]
    if differ:
        print(
            f"note: {cfg.data.dir} was built with "
            + ", ".join(f"{key}={as_built[key]}" for key in differ)
            + " (the data group says "
            + ", ".join(f"{key}={composed[key]}" for key in differ)
            + "): training on and logging what it holds; `make data` rebuilds it from the group",
            file=sys.stderr,
        )
    cfg = cfg.copy()
    cfg.data = as_built
    return cfg


def prepare_run(cfg: DictConfig) -> tuple[DictConfig, Path, dict | None]:
    """The config (a resumed run's own; data as its dataset was built), its run directory (never
    one holding a finished run), and the resumed run's record (None for a new run). Reinforce's
    runs too."""
    if cfg.get("resume"):
        cfg = _load_resumed_config(cfg)
    else:
        _refuse_ineffective_overrides(cfg)
        cfg = data_as_built(cfg)
    run_dir = _run_dir(cfg)
    resumed = json.loads((run_dir / RUN_FILE).read_text()) if cfg.get("resume") else None
    if not resumed and (run_dir / CHECKPOINT_DIR).exists():
        raise FileExistsError(
            f"{run_dir} already holds a finished run; runs never overwrite each other"
        )
    if not (run_dir / ".hydra" / "config.yaml").exists():
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return cfg, run_dir, resumed


@contextmanager
def mlflow_run(cfg: DictConfig, run_dir: Path, resumed: dict | None):
    """The MLflow run's life: created (or reopened when resuming) with params, tags and the
    splits as dataset inputs, its id in run.json; FAILED if anything raises inside (resume=<run
    dir> continues it). `save_and_log` marks it FINISHED once the checkpoint is logged."""
    import mlflow
    from pytorch_lightning.loggers import MLFlowLogger
    from pytorch_lightning.utilities import rank_zero_only

    from derivative_animator import tracking

    tags = _sweep_tags(cfg)
    logger = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=cfg.logger.tracking_uri,
        artifact_location=cfg.logger.artifact_location,
        run_name=run_name(cfg, tags),
        tags={**tags, "run_dir": str(run_dir)},
        run_id=resumed["mlflow_run_id"] if resumed else None,
    )
    client = mlflow.MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    if not resumed:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if not resumed and rank_zero_only.rank == 0:  # the other DDP ranks have no MLflow run
        tracking.mark_experiment(client, logger.experiment_id)
        tracking.log_splits(
            client, logger.run_id, paths.resolve(cfg.data.dir), ("train", "validation")
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(
        json.dumps({"mlflow_run_id": logger.run_id, "tracking_uri": cfg.logger.tracking_uri}) + "\n"
    )
    try:
        yield logger, client
    except BaseException:
        client.set_terminated(logger.run_id, "FAILED")
        raise


def draft_corpus(cfg: DictConfig) -> list[str] | None:
    """The scenes speculative decoding drafts from: a fine-tune's whole scenes (header practice
    adds nothing below the header); a reinforcement run keeps its SFT checkpoint's (its config has
    no full_scenes: every train record, 390 MB, would be written)."""
    from derivative_animator.data import dataset

    started_from = OmegaConf.select(cfg, "reinforce.model")
    if started_from is not None:
        drafts = paths.resolve(started_from) / DRAFT_CORPUS
        return json.loads(drafts.read_text()) if drafts.is_file() else None
    return [
        r.completion for r in dataset.read_split(cfg.data.dir, "train")[: cfg.get("full_scenes")]
    ]


def save_and_log(
    cfg: DictConfig, run_dir: Path, module, tokenizer, trainer, run_id: str, client, metrics: dict
) -> None:
    """The merged checkpoint (what inference loads), logged as an MLflow model; the run FINISHED."""
    from derivative_animator import tracking
    from derivative_animator.model import finetune

    run_info = {
        "mlflow_run_id": run_id,
        "tracking_uri": cfg.logger.tracking_uri,
        "run_dir": str(run_dir),
        "global_step": trainer.global_step,
        "metrics": metrics,
    }
    merged_dir = finetune.save_checkpoint(
        module.model,
        tokenizer,
        run_dir / CHECKPOINT_DIR,
        OmegaConf.to_container(cfg, resolve=True),
        run_info,
        draft_corpus=draft_corpus(cfg),
    )
    if cfg.logger.log_model:
        tracking.log_merged_model(
            cfg.logger.tracking_uri, run_id, merged_dir, cfg.logger.registered_model
        )
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    client.set_terminated(run_id, "FINISHED")
    print(
        f"merged checkpoint: {merged_dir}\nMLflow run: {run_id} ({cfg.logger.tracking_uri})",
        file=sys.stderr,
    )


def make_trainer(
    cfg: DictConfig,
    run_dir: Path,
    logger,
    callbacks: list,
    checkpoint_every_n_steps: int | None,
    **trainer_args,
):
    """conf/trainer's Trainer (its precision resolved for this machine) saving last.ckpt (every
    N optimizer steps, else each epoch) into <run dir>/checkpoints, which `resume=` reads."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from derivative_animator import environment

    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=checkpoint_every_n_steps,
    )
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = environment.resolve_precision(
        str(trainer_cfg["precision"]), str(trainer_cfg["accelerator"])
    )
    return instantiate(
        trainer_cfg,
        logger=logger,
        callbacks=[checkpoints, *callbacks],
        default_root_dir=str(run_dir),
        enable_checkpointing=True,
        **trainer_args,
    )


def run_reporting_load_errors(task: Callable[[DictConfig], object], cfg: DictConfig) -> int:
    """An entry point's task, a model that cannot load reported as a user error (one line)."""
    from derivative_animator.model.finetune import ModelLoadError

    try:
        task(cfg)
    except ModelLoadError as err:
        raise ValueError(str(err)) from None
    return 0
