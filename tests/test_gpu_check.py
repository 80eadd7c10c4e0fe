"""scripts/gpu_check.py: its every step, shrunk, on the CPU; and it reads conf/ as Hydra does."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from derivative_animator import paths

SCRIPT = paths.PROJECT_ROOT / "scripts" / "gpu_check.py"


def _script():
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up there
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


@pytest.mark.parametrize("group, name", [("model", "micro"), ("model", "tiny"), ("model", "deepseek_coder_1_3b"),
                                         ("trainer", "gpu"), ("data", "default")])
def test_config_files_read_without_hydra_as_hydra_composes_them(group, name):
    chain = [name]
    while "defaults" in (own := OmegaConf.load(paths.CONF_DIR / group / f"{chain[0]}.yaml")):
        chain.insert(0, next(d for d in own.defaults if d != "_self_"))
    composed = OmegaConf.merge(*(OmegaConf.load(paths.CONF_DIR / group / f"{n}.yaml") for n in chain))
    composed.pop("defaults", None)
    expected = OmegaConf.to_container(composed)  # interpolations stay as written: the script never reads those
    assert _script().conf(group, f"{name}.yaml") == expected


def test_smoke_run_trains_generates_and_times_the_large_shape(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--smoke"], cwd=paths.PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    tiny, large = report["tiny"], report["large"]
    assert tiny["optimizer_steps"] == 4 and tiny["scenes"] == 2 and len(tiny["rows"]) == 2
    assert "val/loss" in tiny and tiny["sampled_try"]["new_tokens"] > 0
    assert (tmp_path / "tiny-checkpoint" / "merged" / "prompt_format.json").is_file()
    assert large["decode_new_tokens"] == 12 and large["whole_scene_batch_s"] > 0 and large["header_batch_s"] > 0
    assert 0 < large["trainable_parameters"] < large["parameters"]  # LoRA: adapters only
