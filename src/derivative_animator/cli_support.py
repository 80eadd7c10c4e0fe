"""Entry-point plumbing shared by the Hydra programs: user mistakes become one line
`error: ...` and exit code 2, never a traceback; the libraries' known warnings, which say
nothing a person running `make all` can act on, silenced here and only here."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from derivative_animator.errors import MachineProblem
from derivative_animator.paths import CONF_DIR

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    MachineProblem,
)


# (category, message regex, module regex) of third-party warnings a user cannot act on: each
# names the library's own message, so any other warning (ours, or a new one) still shows.
LIBRARY_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # MLflow's schema inference of our tables (ids and levels are integers; none is ever missing)
    (UserWarning, r"Hint: Inferred schema contains integer column", r"mlflow\."),
    # two local-file dataset sources that are the same thing (a JSONL split, a functions file)
    (UserWarning, r"The specified dataset source can be interpreted in multiple ways", r"mlflow\."),
    # deprecations inside the libraries, about their own internals
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\."),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\."),
    (FutureWarning, r"`past_key_values` is deprecated", r"torch\.|transformers\."),
    (DeprecationWarning, r"'audioop' is deprecated", r"pydub\."),
)
# Loggers whose messages at INFO/WARNING are about the libraries, not the run: mlflow.transformers
# looks for a hub model card and license for a local checkpoint (it has neither, by design).
QUIET_LOGGERS = {"mlflow.transformers": logging.ERROR}


class _NoTips(logging.Filter):
    """Lightning's advertisements ("💡 Tip: ... try installing litlogger")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_library_warnings() -> None:
    for category, message, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())


def hydra_entry(task: Callable[[DictConfig], int | None], config_name: str) -> int:
    quiet_library_warnings()
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
