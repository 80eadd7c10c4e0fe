"""Shared fixtures: a small dataset built once per session, and the template oracle.

Everything a test run writes goes under a temp dir of its own (DERIVANIM_OUTPUTS, set
before any config is composed), never the project's outputs/: no test runs against a
model an older checkout built. Under CI (CI set) a missing tool fails the tests that need it
(marked needs_render, needs_sandbox) instead of skipping them: a machine without LaTeX or
bubblewrap must not pass untested."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from derivative_animator import environment, paths
from derivative_animator.data import dataset
from derivative_animator.data.dataset_schema import SPLITS, DataConfig

_OUTPUTS = tempfile.mkdtemp(prefix="derivanim-test-outputs-")
os.environ["DERIVANIM_OUTPUTS"] = _OUTPUTS


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_OUTPUTS, ignore_errors=True)


_MISSING = {  # marker -> (what it needs, a function listing what this machine lacks of it)
    "needs_render": (
        "LaTeX, cairo, pango and the render sandbox",
        lambda: [*environment.render_problems(), *_sandbox_problems()],
    ),
    "needs_sandbox": ("the render sandbox", lambda: _sandbox_problems()),
    "needs_browser": (
        "Debian's chromium (setup.sh installs it)",
        lambda: [] if shutil.which("chromium") else ["chromium is not installed"],
    ),
}

CHROMIUM = "chromium"


def _sandbox_problems() -> list[str]:
    from derivative_animator.render.sandbox_launch import probe

    found = probe()
    return [found.problem] if found.bwrap is None else []


def pytest_configure(config):
    for marker, (what, _) in _MISSING.items():
        config.addinivalue_line(
            "markers", f"{marker}: needs {what}; skipped without, a failure under CI"
        )


def pytest_runtest_setup(item):
    """A test marked needs_render or needs_sandbox is skipped where the machine lacks it, and
    fails under CI (CI set), naming what is missing."""
    for marker, (what, problems) in _MISSING.items():
        if item.get_closest_marker(marker) is None:
            continue
        missing = problems()
        if missing:
            reason = f"needs {what}: {'; '.join(missing)}"
            if os.environ.get("CI"):
                pytest.fail(
                    f"CI runs every test, and this one cannot run here: {reason}", pytrace=False
                )
            pytest.skip(reason)


def compose_config(config_name: str, *overrides: str):
    """conf/<config_name>.yaml as Hydra composes it for the entry point, with overrides: tests
    run on the real configs (test modules import it: `from conftest import compose_config`)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(paths.CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture(scope="session")
def default_splits():
    """`make data`'s dataset (conf/make_data.yaml) with train cut to 418 functions and less
    practice, in memory in under a minute; validation and test are dealt first, so
    they are make all's exactly."""
    from omegaconf import OmegaConf

    cfg = compose_config(
        "make_data",
        "data.sizes.train=418",
        "data.tree_practice=1.5",  # less practice than make all's: tests read every scene
        "data.textbook_practice=0.5",
        "data.combination_practice=0.1",  # a few: the scene tests judge every record with sympy
    )
    config = DataConfig(**OmegaConf.to_container(cfg.data, resolve=True))
    return dataset.generate_splits(config, workers=2)  # the same records as one process


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory):
    """A micro model saved like a merged checkpoint, with the prompt format and drafts."""
    import json

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from derivative_animator import paths
    from derivative_animator.data.prompt import DEFAULT_FORMAT
    from derivative_animator.model.base_model import BaseModelConfig
    from derivative_animator.model.checkpoint_files import DRAFT_CORPUS
    from derivative_animator.model.pretrain import build_base

    cfg = compose_config("train", "model=micro").model.build
    build_base(BaseModelConfig(**OmegaConf.to_container(cfg, resolve=True)))
    tokenizer = AutoTokenizer.from_pretrained(paths.resolve(cfg.output_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    directory = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    DEFAULT_FORMAT.save(directory)
    scenes = [
        r.completion
        for r in dataset.generate_splits(
            DataConfig(sizes={"train": 6, "validation": 0, "test": 0})
        )["train"]
    ]
    (directory / DRAFT_CORPUS).write_text(json.dumps(scenes))
    return directory


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    """A built dataset of exactly 8 train samples (no practice): test_train counts steps
    from them."""
    directory = tmp_path_factory.mktemp("data") / "micro"
    dataset.build(
        DataConfig(
            dir=str(directory),
            sizes={"train": 8, "validation": 4, "test": 4},
            tree_practice=0,
            textbook_practice=0,
            combination_practice=0,
        )
    )
    return directory


@pytest.fixture
def crash_at_step():
    """A callback class: crash_at_step(n) raises once training has done n optimizer steps."""
    import pytorch_lightning as pl

    class CrashAtStep(pl.Callback):
        def __init__(self, step):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= self.step:
                raise RuntimeError("simulated crash")

    return CrashAtStep


@pytest.fixture(scope="session")
def all_records(default_splits):
    return [record for split in SPLITS for record in default_splits[split]]


class ScriptedLM:
    """A causal LM whose greedy choice after any prefix of one of its scripts (token ids) is
    that script's next token, EOS off every script. Its KV cache holds the token ids, so
    cropping the cache and feeding tokens again behave as with a real model."""

    def __init__(self, scripts: list[list[int]], vocab_size: int, eos: int):
        import torch

        self.scripts, self.vocab_size, self.eos = scripts, vocab_size, eos
        self.device, self.training = torch.device("cpu"), False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def forward(self, input_ids, use_cache=True, past_key_values=None, **unused):
        import torch

        fed = input_ids.float().view(1, 1, -1, 1)
        sequence = past_key_values.update(fed, fed, 0)[0].flatten().long().tolist()
        start = len(sequence) - input_ids.shape[1]
        logits = torch.zeros(1, input_ids.shape[1], self.vocab_size)
        for i in range(input_ids.shape[1]):
            n = start + i + 1
            script = next((s for s in self.scripts if n < len(s) and s[:n] == sequence[:n]), None)
            logits[0, i, script[n] if script else self.eos] = 1.0
        return type("Output", (), {"logits": logits})()

    __call__ = forward


@pytest.fixture
def scripted_lm():
    """The ScriptedLM class: scripted_lm(scripts, vocab_size, eos)."""
    return ScriptedLM
