"""Every default lives under conf/: the CLI, the evaluator, the dataset builder and the base model
read theirs from the composed configs, and no setting has two homes."""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from derivative_animator import cli, paths
from derivative_animator.data.dataset_schema import DataConfig
from derivative_animator.eval.baselines import requested
from derivative_animator.eval.settings import EvaluationSettings, RenderSettings
from derivative_animator.model.base_model import BaseModelConfig
from derivative_animator.model.settings import (
    ApiSettings,
    GenerationSettings,
    LoraSettings,
    ModelSettings,
    SelfConsistencySettings,
)

SHIPPED = {
    group: sorted(p.stem for p in (paths.CONF_DIR / group).glob("*.yaml"))
    for group in ("model", "lora")
}


def test_derivanim_generate_takes_every_generation_default_from_the_group_the_evaluator_composes():
    g = compose_config("eval").generate
    args = cli.build_parser().parse_args(["generate", "x^2", "--model", "checkpoint"])
    assert cli.generation_settings(args) == GenerationSettings.from_config(
        g
    )  # every field, nested ones too
    assert (
        args.temperature,
        args.top_p,
        args.max_new_tokens,
        args.seed,
        args.attempts,
        args.syntax_rollbacks,
        args.bracket_guard,
        args.self_consistency_temperature,
        args.repair,
    ) == (
        g.temperature,
        g.top_p,
        g.max_new_tokens,
        g.seed,
        g.attempts,
        g.syntax_rollbacks,
        g.bracket_guard,
        g.self_consistency.temperature,
        g.repair,
    )
    assert args.self_consistency == 0  # off unless asked; asked without K, the group's k
    assert (
        cli.build_parser().parse_args(["generate", "x^2", "--self-consistency"]).self_consistency
        == g.self_consistency.k
    )


def test_generation_settings_have_no_defaults_of_their_own_and_take_every_key_of_the_group():
    for settings_class in (GenerationSettings, SelfConsistencySettings):
        assert all(
            f.default is MISSING and f.default_factory is MISSING for f in fields(settings_class)
        )
    settings = GenerationSettings.from_config(
        compose_config("eval", "generate.self_consistency.k=3").generate
    )
    assert settings.self_consistency.k == 3 and settings == GenerationSettings.defaults().changed(
        self_consistency={"k": 3}
    )


def test_generation_settings_have_one_home():
    generate = set(OmegaConf.load(paths.CONF_DIR / "generate" / "default.yaml"))
    evaluation = set(OmegaConf.load(paths.CONF_DIR / "eval" / "default.yaml"))
    assert generate & evaluation == set()
    assert set(compose_config("eval").generate) == generate


def test_the_dataset_builders_defaults_are_conf_data():
    composed = OmegaConf.to_container(compose_config("make_data").data, resolve=True)
    built = asdict(DataConfig())
    assert {**built, "levels": list(built["levels"]), "styles": list(built["styles"])} == composed
    assert DataConfig().sizes["train"] == composed["sizes"]["train"] == 4400


def test_the_base_model_recipe_has_no_defaults_outside_conf():
    assert all(
        f.default is MISSING and f.default_factory is MISSING for f in fields(BaseModelConfig)
    )
    for model in ("tiny", "micro"):
        build = compose_config("train", f"model={model}").model.build
        assert BaseModelConfig(**OmegaConf.to_container(build, resolve=True)).steps == build.steps


def test_the_model_lora_and_evaluation_settings_have_no_defaults_outside_conf():
    for settings_class in (
        ModelSettings,
        LoraSettings,
        ApiSettings,
        RenderSettings,
        EvaluationSettings,
    ):
        assert all(
            f.default is MISSING and f.default_factory is MISSING for f in fields(settings_class)
        )


@pytest.mark.parametrize(
    "group, option", [(g, o) for g, options in SHIPPED.items() for o in options]
)
def test_the_model_and_lora_settings_build_from_every_shipped_config(group, option):
    train = compose_config("train", f"{group}={option}")
    model, lora = ModelSettings.from_config(train.model), LoraSettings.from_config(train.lora)
    assert (model.pretrained, model.dtype, model.gradient_checkpointing) == (
        train.model.pretrained,
        train.model.dtype,
        train.model.gradient_checkpointing,
    )
    assert asdict(lora) == OmegaConf.to_container(
        train.lora, resolve=True
    )  # every key of the group, as it is


def test_the_evaluation_settings_build_from_conf_eval_with_every_key():
    composed = compose_config(
        "eval", "eval.render.fps=7", "eval.api.concurrency=3", "eval.baselines=[template,api]"
    )
    settings = EvaluationSettings.from_config(composed.eval)
    values = OmegaConf.to_container(composed.eval, resolve=True)
    assert asdict(settings) == {**values, "baselines": ("template", "api")}
    assert (settings.render.fps, settings.api.concurrency) == (7, 3)
    assert [
        b.name
        for b in requested(EvaluationSettings.from_config(compose_config("eval").eval).baselines)
    ] == [
        "template",
        "base",
        "finetuned",
        "self_consistency",
        "verified",
    ]  # conf/eval's names are the registry's
    with pytest.raises(
        TypeError, match="colour"
    ):  # a key the settings do not know is an error, not ignored
        EvaluationSettings.from_config(compose_config("eval", "+eval.render.colour=red").eval)


@pytest.mark.parametrize(
    "config, override, message",
    [
        ("eval", "eval.render.quality=x", "eval.render.quality must be one of l, m, h, k"),
        ("eval", "eval.render.memory_mb=16", "eval.render: sandbox limits: "),
        ("eval", "eval.workers=0", "eval.samples_per_function and eval.workers must be at least 1"),
        (
            "eval",
            "eval.generation_threads=none",
            "eval.generation_threads must be auto or a positive number",
        ),
        ("eval", "eval.api.concurrency=0", "eval.api: timeout_s > 0"),
        ("train", "lora.dropout=1.0", "lora.dropout in [0, 1)"),
        ("train", "model.dtype=int8", "model.dtype must be one of float32, bfloat16, float16"),
    ],
)
def test_a_setting_out_of_range_is_refused_in_one_line_naming_it(config, override, message):
    build = {
        "eval": lambda cfg: EvaluationSettings.from_config(cfg.eval),
        "train": lambda cfg: (
            ModelSettings.from_config(cfg.model),
            LoraSettings.from_config(cfg.lora),
        ),
    }
    with pytest.raises(ValueError) as refused:
        build[config](compose_config(config, override))
    assert message in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("generate.temperature=-0.1", "generate.temperature must be 0 (greedy) or more"),
        ("generate.sample_temperature=-1", "generate.sample_temperature must be 0 or more"),
        ("generate.top_p=0", "generate.top_p must be in (0, 1]"),
        ("generate.top_p=1.5", "generate.top_p must be in (0, 1]"),
        ("generate.max_new_tokens=0", "generate.max_new_tokens must be 1 or more"),
        ("generate.attempts=0", "generate.attempts must be 1 or more"),
        ("generate.syntax_rollbacks=-1", "generate.syntax_rollbacks must be 0 or more"),
        (
            "generate.video_quality=k",
            "generate.video_quality must be l (480p), m (720p), h (1080p)",
        ),
        ("generate.self_consistency.k=0", "generate.self_consistency.k must be 1 or more"),
        (
            "generate.self_consistency.temperature=0",
            "generate.self_consistency.temperature must be above 0",
        ),
    ],
)
def test_a_generation_setting_out_of_range_is_refused_in_one_line_naming_it(override, message):
    with pytest.raises(ValueError) as refused:
        GenerationSettings.from_config(compose_config("eval", override).generate)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_changed_generation_setting_is_checked_too():
    """The CLI's flags and the evaluator's repair=False reach the settings through `changed`."""
    with pytest.raises(ValueError, match="generate.attempts must be 1 or more, got 0"):
        GenerationSettings.defaults().changed(attempts=0)
    with pytest.raises(ValueError, match="generate.self_consistency.k must be 1 or more"):
        GenerationSettings.defaults().changed(self_consistency={"k": 0})


def test_lora_off_accepts_the_zero_rank_it_never_uses_and_a_saved_model_config_keeps_its_other_keys():  # noqa: E501
    assert not LoraSettings.from_config(compose_config("train", "lora=none").lora).enabled
    saved = OmegaConf.to_container(
        compose_config("train", "model=micro").model, resolve=True
    )  # derivanim_config.json
    assert ModelSettings.from_config({**saved, "an_old_key": 1}).pretrained == saved["pretrained"]
    with pytest.raises(ValueError, match="model settings lack model.dtype"):
        ModelSettings.from_config(
            {"pretrained": "models/derivanim-tiny", "gradient_checkpointing": False}
        )
