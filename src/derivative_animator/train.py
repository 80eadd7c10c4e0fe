"""Fine-tune: compose the config, build the parts, fit, merge, save, log.

    python -m derivative_animator.train                          # make train
    python -m derivative_animator.train lora=r16 trainer.max_epochs=3
    python -m derivative_animator.train -m lora.r=8,16 trainer.max_epochs=1   # a sweep
    python -m derivative_animator.train resume=outputs/train/<run dir>       # continue

Each run writes <run dir>/checkpoints (Lightning, adapters only), <run dir>/checkpoint/
merged (what inference loads) and one MLflow run holding params (the flattened config),
metrics and the merged checkpoint.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from derivative_animator import paths
from derivative_animator.model.checkpoint_files import CHECKPOINT_DIR

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


def train(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Compose the parts, fit, save the merged checkpoint; the MLflow run lives in `_mlflow_run`."""
    import pytorch_lightning as pl

    cfg, run_dir, resumed = _prepare_run(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    tokenizer, module, datamodule = _build_parts(cfg)
    with _mlflow_run(cfg, run_dir, resumed) as (logger, client):
        trainer = _make_trainer(cfg, run_dir, logger, tokenizer, extra_callbacks)
        last = run_dir / "checkpoints" / "last.ckpt"
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=str(last) if resumed and last.exists() else None,
        )
        if trainer.interrupted:
            raise KeyboardInterrupt
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.is_global_zero:
            _save_and_log(cfg, run_dir, module, tokenizer, trainer, logger.run_id, client, metrics)
    return metrics


def _prepare_run(cfg: DictConfig) -> tuple[DictConfig, Path, dict | None]:
    """The config (a resumed run's own), its run directory (never one holding a finished run),
    and the resumed run's record (None for a new run). Reinforce's runs too."""
    if cfg.get("resume"):
        cfg = _load_resumed_config(cfg)
    else:
        _refuse_ineffective_overrides(cfg)
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


def _build_parts(cfg: DictConfig):
    """Tokenizer, the LoRA-adapted model in its Lightning module, and the datamodule."""
    from derivative_animator.data.datamodule import DerivativeDataModule
    from derivative_animator.model import finetune
    from derivative_animator.model.base_model import BaseModelConfig
    from derivative_animator.model.pretrain import build_base
    from derivative_animator.model.settings import LoraSettings, ModelSettings

    if cfg.optim.effective_batch_size % cfg.optim.micro_batch_size:
        raise ValueError("optim.effective_batch_size must be a multiple of optim.micro_batch_size")
    model_settings, lora = ModelSettings.from_config(cfg.model), LoraSettings.from_config(cfg.lora)
    if cfg.model.get("build") and not cfg.model.build.get(
        "publish_dir"
    ):  # a shipped base is never rebuilt here
        build_base(BaseModelConfig(**OmegaConf.to_container(cfg.model.build, resolve=True)))
    tokenizer, model = finetune.load_base(model_settings)
    model = finetune.add_lora(model, lora)
    optim = cfg.optim
    datamodule = DerivativeDataModule(
        data_dir=cfg.data.dir,
        tokenizer=tokenizer,
        micro_batch_size=optim.micro_batch_size,
        max_length=cfg.model.max_length,
        bucket_size=cfg.loader.bucket_size,
        num_workers=cfg.loader.num_workers,
        seed=cfg.seed,
        limit_train_samples=cfg.get("limit_train_samples"),
        full_scenes=cfg.get("full_scenes"),
    )
    module = finetune.LoRAFineTuner(
        model,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        warmup_ratio=optim.warmup_ratio,
        fused_optimizer=optim.fused,
    )
    return tokenizer, module, datamodule


@contextmanager
def _mlflow_run(cfg: DictConfig, run_dir: Path, resumed: dict | None):
    """The MLflow run's life: created (or reopened when resuming) with params, tags and the
    splits as dataset inputs, its id in run.json; FAILED if anything raises inside (resume=<run
    dir> continues it). `_save_and_log` marks it FINISHED once the checkpoint is logged."""
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


def _make_trainer(cfg: DictConfig, run_dir: Path, logger, tokenizer, extra_callbacks: list | None):
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from derivative_animator import environment
    from derivative_animator.data import dataset
    from derivative_animator.model import finetune

    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.get("checkpoint_every_n_steps") or None,
    )
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = environment.resolve_precision(
        str(trainer_cfg["precision"]), str(trainer_cfg["accelerator"])
    )
    callbacks = [checkpoints, *(extra_callbacks or [])]
    if cfg.val_math.enabled:
        callbacks.append(
            finetune.ValidationMath(
                tokenizer,
                dataset.read_split(cfg.data.dir, "validation"),
                cfg.val_math.max_new_tokens,
            )
        )
    return instantiate(
        trainer_cfg,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        accumulate_grad_batches=cfg.optim.effective_batch_size // cfg.optim.micro_batch_size,
        enable_checkpointing=True,
    )


def _save_and_log(
    cfg: DictConfig, run_dir: Path, module, tokenizer, trainer, run_id: str, client, metrics: dict
) -> None:
    """The merged checkpoint (what inference loads), logged as an MLflow model; the run FINISHED."""
    from derivative_animator import tracking
    from derivative_animator.data import dataset
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
        # whole scenes only: the header-practice samples add nothing below the header
        draft_corpus=[
            r.completion
            for r in dataset.read_split(cfg.data.dir, "train")[: cfg.get("full_scenes")]
        ],
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


def main(cfg: DictConfig, task=None) -> int:
    """Run `task` (train, or reinforce), a model that cannot load reported as a user error."""
    from derivative_animator.model.finetune import ModelLoadError

    try:
        (task or train)(cfg)
    except ModelLoadError as err:
        raise ValueError(str(err)) from None
    return 0


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "train"))
