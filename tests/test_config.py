"""Every default lives under conf/: the CLI, the evaluator, the dataset builder and the base model
read theirs from the composed configs, and no setting has two homes."""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields

from conftest import compose_config
from omegaconf import OmegaConf

from derivative_animator import cli, paths
from derivative_animator.data import dataset
from derivative_animator.model.base_model import BaseModelConfig
from derivative_animator.model.settings import GenerationSettings, SelfConsistencySettings


def test_derivanim_generate_takes_every_generation_default_from_the_group_the_evaluator_composes():
    g = compose_config("eval").generate
    args = cli.build_parser().parse_args(["generate", "x^2", "--model", "checkpoint"])
    assert cli.generation_settings(args) == GenerationSettings.from_config(g)  # every field, nested ones too
    assert (args.temperature, args.top_p, args.max_new_tokens, args.seed, args.attempts,
            args.syntax_rollbacks, args.bracket_guard, args.self_consistency_temperature, args.repair) == (
        g.temperature, g.top_p, g.max_new_tokens, g.seed, g.attempts,
        g.syntax_rollbacks, g.bracket_guard, g.self_consistency.temperature, g.repair)
    assert args.self_consistency == 0  # off unless asked; asked without K, the group's k
    assert cli.build_parser().parse_args(["generate", "x^2", "--self-consistency"]).self_consistency == g.self_consistency.k


def test_generation_settings_have_no_defaults_of_their_own_and_take_every_key_of_the_group():
    for settings_class in (GenerationSettings, SelfConsistencySettings):
        assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(settings_class))
    settings = GenerationSettings.from_config(compose_config("eval", "generate.self_consistency.k=3").generate)
    assert settings.self_consistency.k == 3 and settings == GenerationSettings.defaults().changed(
        self_consistency={"k": 3})


def test_generation_settings_have_one_home():
    generate = set(OmegaConf.load(paths.CONF_DIR / "generate" / "default.yaml"))
    evaluation = set(OmegaConf.load(paths.CONF_DIR / "eval" / "default.yaml"))
    assert generate & evaluation == set()
    assert set(compose_config("eval").generate) == generate


def test_the_dataset_builders_defaults_are_conf_data():
    composed = OmegaConf.to_container(compose_config("make_data").data, resolve=True)
    built = asdict(dataset.DataConfig())
    assert {**built, "levels": list(built["levels"]), "styles": list(built["styles"])} == composed
    assert dataset.DataConfig().sizes["train"] == composed["sizes"]["train"] == 4400


def test_the_base_model_recipe_has_no_defaults_outside_conf():
    assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(BaseModelConfig))
    for model in ("tiny", "micro"):
        build = compose_config("train", f"model={model}").model.build
        assert BaseModelConfig(**OmegaConf.to_container(build, resolve=True)).steps == build.steps
