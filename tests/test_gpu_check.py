"""scripts/gpu_check.py: its every step, shrunk, on the CPU; and its settings are
conf/train.yaml's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from functools import partial

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from derivative_animator import paths

SCRIPT = paths.PROJECT_ROOT / "scripts" / "gpu_check.py"


def _script():
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(
            spec
        )  # its dataclasses look it up there
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


compose_train = partial(compose_config, "train")


@pytest.mark.parametrize("model", ["tiny", "micro", "deepseek_coder_1_3b"])
def test_settings_are_conf_train_composed_under_the_gpu_trainer(model):
    expected = compose_train(f"model={model}", "trainer=gpu", "data=default", "lora=default")
    assert _script().compose(model) == OmegaConf.to_container(expected, resolve=True)


def test_each_plan_trains_its_model_under_the_gpu_trainer():
    script = _script()
    assert (script.Plan().base, script.SMOKE.base, script.LARGE) == (
        "tiny",
        "micro",
        "deepseek_coder_1_3b",
    )
    gpu = {
        k: v
        for k, v in OmegaConf.to_container(compose_train("trainer=gpu").trainer).items()
        if k != "_target_"
    }
    assert script.trainer_kwargs(script.Plan()) == {**gpu, "precision": "bf16-mixed"}
    assert script.trainer_kwargs(script.SMOKE, max_epochs=1) == {
        **gpu,
        "accelerator": "cpu",
        "precision": "32-true",
        "max_epochs": 1,
    }


def _smoke_report(out, *extra) -> dict:
    """The script run shrunk on the CPU (--smoke) into `out`; its JSON report."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--smoke", *extra],
        cwd=paths.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


def test_smoke_run_trains_generates_and_times_the_large_shape(tmp_path):
    report = _smoke_report(tmp_path)
    tiny, large = report["tiny"], report["large"]
    assert tiny["optimizer_steps"] == 4 and tiny["scenes"] == 2 and len(tiny["rows"]) == 2
    assert "val/loss" in tiny and tiny["sampled_try"]["new_tokens"] > 0
    assert (tmp_path / "tiny-checkpoint" / "merged" / "prompt_format.json").is_file()
    assert (
        large["decode_new_tokens"] == 12
        and large["whole_scene_batch_s"] > 0
        and large["header_batch_s"] > 0
    )
    assert 0 < large["trainable_parameters"] < large["parameters"]  # LoRA: adapters only


def test_smoke_seeds_fine_tune_once_per_seed_and_judge_headers_on_every_set(tmp_path):
    report = _smoke_report(tmp_path, "--seeds", "1,2")
    assert [run["seed"] for run in report["runs"]] == [1, 2]
    assert report["runs"][0]["val/loss"] != report["runs"][1]["val/loss"]  # seeded apart
    for run in report["runs"]:
        assert run["optimizer_steps"] == 4
        assert set(run["header_math"]) == {"test", "textbook", "random"}
        assert all(s["n"] == 3 and 0 <= s["math_pct"] <= 100 for s in run["header_math"].values())
    assert set(report["median_math_pct"]) == {"test", "textbook", "random"}
