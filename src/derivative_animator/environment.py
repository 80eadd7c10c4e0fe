"""What rendering needs from the machine, and the fix when it is missing.

A scene that fails because LaTeX or cairo is missing says nothing about the code, so
checkers report these as environment failures, and `make doctor` lists them.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from functools import cache
from pathlib import Path

APT_PACKAGES = (
    "libcairo2-dev libpango1.0-dev pkg-config texlive-latex-base texlive-latex-recommended "
    "texlive-latex-extra texlive-fonts-recommended dvisvgm bubblewrap"
)
FIX = f"run `make setup` (or: sudo apt-get install --no-install-recommends {APT_PACKAGES})"


@cache
def render_problems() -> tuple[str, ...]:
    """Missing pieces Manim needs to render a scene with MathTex; empty when all is there."""
    problems = []
    for program in ("latex", "dvisvgm"):
        if shutil.which(program) is None:
            problems.append(f"{program} not found on PATH")
    if shutil.which("kpsewhich"):
        found = subprocess.run(["kpsewhich", "standalone.cls"], capture_output=True, text=True)
        if not found.stdout.strip():
            problems.append("LaTeX package standalone.cls missing (texlive-latex-extra)")
    for module in ("cairo", "manimpango", "manim"):
        if importlib.util.find_spec(module) is None:
            problems.append(f"Python module {module} not importable")
    return tuple(problems)


def render_problem_summary() -> str | None:
    problems = render_problems()
    return f"environment: {'; '.join(problems)}; {FIX}" if problems else None


@cache
def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls are only fast on CPUs with AMX or AVX512-BF16; elsewhere they run
    hundreds of times slower than fp32 (measured: 0.3 vs 170 GFLOP/s), so never assume."""
    flags = _cpuinfo()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed on GPUs and on CPUs with fast bf16, full fp32 otherwise."""
    if precision != "auto":
        return precision
    import torch

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu or cpu_has_fast_bf16() else "32-true"


def cpu_description() -> str:
    """The machine in a few words, for every figure: cores and whether bf16 is fast."""
    import os

    fast = (
        "AMX"
        if "amx_bf16" in _cpuinfo()
        else "AVX512-BF16"
        if cpu_has_fast_bf16()
        else "no fast bf16"
    )
    return f"{os.cpu_count()} CPU cores ({fast})"


@cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
