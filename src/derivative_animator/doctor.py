"""`make doctor`: is this machine ready? One row per check, with the fix for each failure.

python -m derivative_animator.doctor
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from collections.abc import Callable

from derivative_animator import environment, paths

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "pytorch-lightning",
    "hydra-core",
    "mlflow",
    "manim",
    "sympy",
)
MIN_FREE_GB = 2.0


def check_packages() -> tuple[bool, str]:
    versions, missing = [], []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return False, f"missing {', '.join(missing)}; fix: make setup"
    return True, ", ".join(versions)


def check_dataset() -> tuple[bool, str]:
    from derivative_animator.data import dataset
    from derivative_animator.data.dataset_schema import SPLITS
    from derivative_animator.data.prompt import (
        DEFAULT_FORMAT,
        PromptFormat,
        PromptFormatError,
        require_same,
    )

    directory = paths.resolve("data/derivatives")
    try:
        counts = {split: len(dataset.read_split(directory, split)) for split in SPLITS}
        require_same(PromptFormat.load(directory), DEFAULT_FORMAT)
    except (FileNotFoundError, ValueError, PromptFormatError) as err:
        return False, f"{err}; fix: make data"
    return True, f"{directory}: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def check_render_tools() -> tuple[bool, str]:
    problems = environment.render_problems()
    if problems:
        return False, f"{'; '.join(problems)}; fix: {environment.FIX}"
    return True, "latex, standalone.cls, dvisvgm, cairo, pango"


def check_sandbox() -> tuple[bool | str, str]:
    """The layers a generated scene runs under here; FAIL where rendering would be refused,
    warn where a layer is weaker than it should be (no unprivileged user, no seccomp)."""
    from derivative_animator.render.sandbox_launch import isolation_layers, probe

    found = probe()
    layers = ", ".join(isolation_layers())
    if found.bwrap is None:
        return False, f"{found.problem}; rendering generated code is refused until then"
    if found.problem:
        return "warn", f"{layers}; {found.problem}"
    return True, layers


def check_gpu() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0)
    bf16 = (
        "fast bf16 (AMX)"
        if environment.cpu_has_fast_bf16()
        else "no fast bf16: training runs in fp32"
    )
    return True, f"none: CPU only, {os.cpu_count()} cores, {bf16} (the tiny model is made for this)"


def check_mlflow() -> tuple[bool, str]:
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{paths.PROJECT_ROOT}/mlruns/mlflow.db")
    try:
        (paths.PROJECT_ROOT / "mlruns").mkdir(exist_ok=True)
        count = len(mlflow.MlflowClient(tracking_uri=uri).search_experiments())
    except Exception as err:  # any failure of the store is what this row reports
        return (
            False,
            f"{uri}: {str(err).splitlines()[0][:150]}; "
            "fix: check MLFLOW_TRACKING_URI or mlruns/ permissions",
        )
    return True, f"{uri} ({count} experiments)"


def check_disk() -> tuple[bool, str]:
    free = shutil.disk_usage(paths.PROJECT_ROOT).free / 1e9
    if free < MIN_FREE_GB:
        return (
            False,
            f"{free:.1f} GB free; fix: free at least {MIN_FREE_GB} GB (make clean removes outputs)",
        )
    return True, f"{free:.0f} GB free"


CHECKS: dict[str, Callable[[], tuple[bool | str, str]]] = {
    "python packages": check_packages,
    "dataset": check_dataset,
    "LaTeX / dvisvgm / cairo / pango": check_render_tools,
    "sandbox": check_sandbox,
    "GPU": check_gpu,
    "MLflow store": check_mlflow,
    "disk space": check_disk,
}


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="derivanim doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail / fix")
    failed = 0
    for name, check in CHECKS.items():
        ok, detail = check()
        failed += not ok
        status = (
            "[yellow]warn[/yellow]"
            if ok == "warn"
            else "[green]pass[/green]"
            if ok
            else "[red]FAIL[/red]"
        )
        table.add_row(name, status, detail)
    Console().print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
