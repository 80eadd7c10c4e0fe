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


def test_the_training_benchmark_times_the_batches_make_all_trains_on():
    """Without train.py's `full_scenes` every sample runs on to the style's opening (about
    1,650 tokens against make all's 200-token headers): the benchmark once timed that, from
    its own copy of train.py's arguments. It now builds train.py's data module."""
    tree = ast.parse((paths.PROJECT_ROOT / "scripts" / "benchmark.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and "DerivativeDataModule" in ast.unparse(node.func)
    ]
    assert [ast.unparse(call.func) for call in calls] == ["DerivativeDataModule.from_config"]
    overridden = {keyword.arg for keyword in calls[0].keywords}
    assert not overridden & {"full_scenes", "max_length", "micro_batch_size", "max_tokens"}


def test_the_curve_counts_every_pretraining_stage_of_a_continued_base(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "compute_quality", paths.PROJECT_ROOT / "scripts" / "compute_quality.py"
    )
    compute_quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compute_quality)
    config = {"batch_size": 16, "seq_len": 512}
    first = {"config": config, "trained_tokens": 22_937_600}
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "build_info.json").write_text(
        json.dumps({"config": config, "trained_tokens": 12_288_000, "parent": first})
    )
    assert compute_quality.pretraining_tokens(tmp_path / "base") == 35_225_600
    snapshot = tmp_path / "tiny-snapshots" / "step-700"
    snapshot.mkdir(parents=True)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "build_info.json").write_text(json.dumps(first))
    assert compute_quality.pretraining_tokens(snapshot) == 700 * 16 * 512
