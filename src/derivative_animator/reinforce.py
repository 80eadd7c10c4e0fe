"""Reinforce: learn from the math judge after fine-tuning (GRPO-style, model/reinforce.py).

    python -m derivative_animator.reinforce reinforce.model=outputs/train/<run>/checkpoint/merged
    python -m derivative_animator.reinforce resume=outputs/reinforce/<run dir>     # continue

Each run writes <run dir>/checkpoints (Lightning, adapter only, every
reinforce.checkpoint_every_n_steps), <run dir>/checkpoint/merged (what evaluate and
`derivanim generate --model` load) and one MLflow run (reward, pass rate, KL, loss, tokens/s).
"""

from __future__ import annotations

import sys
from functools import partial

from omegaconf import DictConfig

from derivative_animator import paths, runs


def _require_checkpoint(model: str | None) -> None:
    """reinforce.model must be a merged checkpoint in this code's prompt format."""
    from derivative_animator.data.prompt import PromptFormat, require_same

    if not model:
        raise ValueError(
            "reinforce.model is required: a merged SFT checkpoint, "
            "reinforce.model=outputs/train/<run>/checkpoint/merged"
        )
    directory = paths.resolve(model)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"reinforce.model {directory} is not a model checkpoint (no config.json); pass the "
            "merged dir of a training run, e.g. outputs/train/<run>/checkpoint/merged"
        )
    require_same(PromptFormat.load(directory))


def reinforce(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Compose the parts, fit, save the merged checkpoint (the run itself: `runs.py`)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from derivative_animator.model.reinforce import Steps

    if not cfg.get("resume"):
        _require_checkpoint(cfg.reinforce.model)
    cfg, run_dir, resumed = runs.prepare_run(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    tokenizer, module = _build_parts(cfg)
    with runs.mlflow_run(cfg, run_dir, resumed) as (logger, client):
        client.set_tag(logger.run_id, "stage", "reinforce")
        if not resumed:  # told apart from the fine-tune it starts from in the runs table
            client.set_tag(logger.run_id, "mlflow.runName", f"reinforce-{runs.run_name(cfg)}")
        trainer = runs.make_trainer(
            cfg, run_dir, logger, extra_callbacks or [], cfg.reinforce.checkpoint_every_n_steps
        )
        last = run_dir / "checkpoints" / "last.ckpt"
        trainer.fit(
            module,
            train_dataloaders=DataLoader(Steps(cfg.reinforce.steps), batch_size=None),
            ckpt_path=str(last) if resumed and last.exists() else None,
        )
        if trainer.interrupted:
            raise KeyboardInterrupt
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        runs.save_and_log(cfg, run_dir, module, tokenizer, trainer, logger.run_id, client, metrics)
    return metrics


def _build_parts(cfg: DictConfig):
    """Tokenizer and the module: the SFT model with a fresh LoRA, on held-out-free functions."""
    from derivative_animator.data import calculus_corpus, dataset
    from derivative_animator.model import finetune
    from derivative_animator.model.reinforce import GroupRelativeTrainer
    from derivative_animator.model.settings import LoraSettings, ModelSettings

    rl = cfg.reinforce
    tokenizer, model = finetune.load_base(ModelSettings.from_config(cfg.model))
    model = finetune.add_lora(model, LoraSettings.from_config(cfg.lora))
    functions = partial(
        dataset.reinforcement_functions,
        str(rl.practice_seed),
        count=rl.functions_per_step,
        curriculum_share=rl.curriculum_share,
        textbook_share=rl.textbook_share,
        wider_intervals=rl.wider_intervals,
        held_out=calculus_corpus.held_out_keys(paths.resolve(cfg.data.dir)),
    )
    module = GroupRelativeTrainer(
        model,
        tokenizer,
        functions,
        group_size=rl.group_size,
        temperature=rl.temperature,
        beta=rl.beta,
        lr=rl.lr,
        max_new_tokens=rl.max_new_tokens,
    )
    return tokenizer, module


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(partial(runs.run_reporting_load_errors, reinforce), "reinforce"))
