"""Entry-point plumbing shared by the Hydra programs: user mistakes become one line
`error: ...` and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from derivative_animator.errors import MachineProblem
from derivative_animator.paths import CONF_DIR

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                 MachineProblem)


def hydra_entry(task: Callable[[DictConfig], int | None], config_name: str) -> int:
    outcome = {"rc": 0}

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def run(cfg: DictConfig) -> None:
        try:
            rc = task(cfg)
        except USER_ERRORS as err:
            print(f"error: {err}", file=sys.stderr)
            rc = 2
        outcome["rc"] = max(outcome["rc"], rc or 0)

    run()
    return outcome["rc"]
