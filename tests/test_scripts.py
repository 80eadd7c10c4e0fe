"""The scripts' contracts that a run would take too long to show (scripts/)."""

from __future__ import annotations

import ast

from derivative_animator import paths


def test_the_training_benchmark_times_the_shipped_base_and_never_pretrains():
    """`scripts/benchmark.py --only training` on a fresh clone once started the 70-minute
    pretraining (build_base); it loads `model.pretrained`, the shipped base, instead."""
    tree = ast.parse((paths.PROJECT_ROOT / "scripts" / "benchmark.py").read_text())
    [bench] = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "bench_training"
    ]
    names = {node.id for node in ast.walk(bench) if isinstance(node, ast.Name)} | {
        node.attr for node in ast.walk(bench) if isinstance(node, ast.Attribute)
    }
    assert "load_base" in names
    assert not names & {"build_base", "pretrain", "BaseModelConfig"}
