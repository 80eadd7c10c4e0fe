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

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from derivative_animator.runs import (
    make_trainer,
    mlflow_run,
    prepare_run,
    run_reporting_load_errors,
    save_and_log,
)


def train(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Compose the parts, fit, save the merged checkpoint (the run itself: `runs.py`)."""
    import pytorch_lightning as pl

    cfg, run_dir, resumed = prepare_run(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    tokenizer, module, datamodule = _build_parts(cfg)
    with mlflow_run(cfg, run_dir, resumed) as (logger, client):
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
            save_and_log(cfg, run_dir, module, tokenizer, trainer, logger.run_id, client, metrics)
    return metrics


def _build_parts(cfg: DictConfig):
    """Tokenizer, the LoRA-adapted model in its Lightning module, and the datamodule."""
    from derivative_animator.data.datamodule import DerivativeDataModule
    from derivative_animator.model import finetune
    from derivative_animator.model.base_model import recipe_stages
    from derivative_animator.model.pretrain import build_base
    from derivative_animator.model.settings import LoraSettings, ModelSettings

    if cfg.optim.effective_batch_size % cfg.optim.micro_batch_size:
        raise ValueError("optim.effective_batch_size must be a multiple of optim.micro_batch_size")
    model_settings, lora = ModelSettings.from_config(cfg.model), LoraSettings.from_config(cfg.lora)
    if cfg.model.get("build") and not cfg.model.build.get(
        "publish_dir"
    ):  # a shipped base is never rebuilt here
        for config in recipe_stages(OmegaConf.to_container(cfg.model, resolve=True)):
            build_base(config)
    tokenizer, model = finetune.load_base(model_settings)
    model = finetune.add_lora(model, lora)
    optim = cfg.optim
    datamodule = DerivativeDataModule.from_config(cfg, tokenizer)
    module = finetune.LoRAFineTuner(
        model,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        warmup_ratio=optim.warmup_ratio,
        fused_optimizer=optim.fused,
    )
    return tokenizer, module, datamodule


def _make_trainer(cfg: DictConfig, run_dir: Path, logger, tokenizer, extra_callbacks: list | None):
    from derivative_animator.data import dataset
    from derivative_animator.model import finetune

    callbacks = list(extra_callbacks or [])
    if cfg.val_math.enabled:
        callbacks.append(
            finetune.ValidationMath(
                tokenizer,
                dataset.read_split(cfg.data.dir, "validation"),
                cfg.val_math.max_new_tokens,
            )
        )
    return make_trainer(
        cfg,
        run_dir,
        logger,
        callbacks,
        cfg.get("checkpoint_every_n_steps") or None,
        accumulate_grad_batches=cfg.optim.effective_batch_size // cfg.optim.micro_batch_size,
    )


def main(cfg: DictConfig) -> int:
    return run_reporting_load_errors(train, cfg)


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "train"))
