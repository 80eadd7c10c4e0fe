"""Entry point: pretrain the shipped base (`make pretrain`), logged to MLflow through `tracking`.

    python -m derivative_animator.pretrain                 # rebuild models/derivanim-tiny
    python -m derivative_animator.pretrain model=micro     # seconds, for tests

Composes conf/base.yaml and hands each stage of the recipe to `model.pretrain.build_base`
(the stages `model.build` continues first, `model.earlier_stages`: the shipped base is a
from-scratch base continued on practice), which resumes an interrupted build in the same MLflow run.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from derivative_animator import paths, tracking
from derivative_animator.model.base_model import recipe_stages
from derivative_animator.model.pretrain import build_base


def main(cfg) -> int:
    from omegaconf import OmegaConf
    from rich.console import Console

    console = Console(stderr=True)
    stages = recipe_stages(OmegaConf.to_container(cfg.model, resolve=True))
    for config in stages:  # the stages it continues first, model.build last
        open_run = None
        if cfg.get("logger") is not None:
            params = {f"build/{key}": value for key, value in asdict(config).items()}
            open_run = tracking.pretraining_run(
                cfg.logger, f"pretrain-{Path(config.output_dir).name}", params
            )
        report = build_base(config, force=cfg.get("force", False), open_run=open_run)
        if report.cached:
            console.print(f"base model up to date: {report.output_dir}")
        else:
            console.print(
                f"built {report.output_dir}: {report.parameters / 1e6:.1f}M parameters, "
                f"{report.corpus_tokens:,} corpus tokens ({report.calculus_tokens:,} calculus), "
                f"{report.trained_tokens:,} trained, "
                f"loss {report.first_loss:.2f} -> {report.final_loss:.2f}, "
                f"copies {report.copy_accuracy:.0%} of "
                f"repeated spans, {report.tokens_per_second:.0f} tokens/s, {report.seconds:.0f} s"
            )
        if config.publish_dir:
            console.print(f"published to {paths.resolve(config.publish_dir)}")
    return 0


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "base"))
