"""Training: configs compose, a micro model trains in seconds, merge is exact, runs resume."""

from __future__ import annotations

import json
import re
from functools import partial

import mlflow
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from derivative_animator import paths
from derivative_animator.data import dataset
from derivative_animator.data.prompt import DEFAULT_FORMAT, PromptFormat
from derivative_animator.math.header import math_header_length
from derivative_animator.model import finetune
from derivative_animator.model.settings import LoraSettings, ModelSettings
from derivative_animator.train import train

GROUPS = {
    group: sorted(p.stem for p in (paths.CONF_DIR / group).glob("*.yaml"))
    for group in ("data", "model", "lora", "trainer", "logger", "experiment")
}


compose_train = partial(compose_config, "train")


@pytest.mark.parametrize(
    "group, option", [(g, o) for g, options in GROUPS.items() for o in options]
)
def test_every_config_option_composes(group, option):
    cfg = compose_train(f"{group}={option}")
    OmegaConf.resolve(cfg) if group != "data" or option != "original" else None
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_a_training_run_is_named_for_its_method_rank_and_model():
    import re

    from derivative_animator.runs import run_name

    assert re.fullmatch(r"lora-r64-tiny-\d{4}-\d{4}", run_name(compose_train()))
    assert run_name(compose_train("model=micro", "lora=r8")).startswith("lora-r8-micro-")
    assert run_name(compose_train("model=micro", "lora=none")).startswith("full-micro-")
    assert run_name(compose_train(), {"sweep": "s", "sweep_job": "3"}).endswith(
        "-j3"
    )  # a sweep's jobs differ


def test_lora_presets_and_model_learning_rates():
    assert (
        compose_train("lora=default").lora.r == 64
        and compose_train("lora=default").lora.alpha == 128
    )
    # every model fine-tunes with the original LoRA (r=64, alpha=128, dropout 0.05, every linear
    # projection)
    assert compose_train().lora.enabled and not compose_train("lora=none").lora.enabled
    assert (
        compose_train().lora.target_modules == "all-linear" and compose_train().lora.dropout == 0.05
    )
    deepseek = compose_train("model=deepseek_coder_1_3b").lora
    assert deepseek.enabled and deepseek.r == 64 and deepseek.alpha == 128
    sweep = compose_train("experiment=lora_rank_sweep")
    assert sweep.lora.enabled  # a rank sweep is LoRA on any model
    assert sweep.sweep_name == "lora_rank_sweep"  # a preset's keys win over train.yaml's
    assert compose_train("lora=r8").lora.r == 8
    assert compose_train("model=deepseek_coder_1_3b").optim.lr == 1e-4
    assert (
        compose_train("model=deepseek_coder_1_3b").optim.effective_batch_size == 16
    )  # the original
    assert (
        compose_train().optim.effective_batch_size == 16
        and compose_train("trainer=gpu").trainer.max_epochs == 5
    )


def test_the_seeds_preset_is_make_all_s_recipe_over_three_seeds():
    seeds, default = (OmegaConf.to_container(compose_train(*o)) for o in (["experiment=seeds"], []))
    recipe = ("data", "model", "lora", "optim", "loader", "trainer")
    assert all(seeds[k] == default[k] for k in recipe) and seeds["sweep_name"] == "seeds"
    params = OmegaConf.load(paths.CONF_DIR / "experiment" / "seeds.yaml").hydra.sweeper.params
    assert [int(seed) for seed in str(params.seed).split(",")] == [42, 43, 44]
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(paths.CONF_DIR), version_base="1.3"):
        job = compose("train", ["experiment=seeds", "seed=43"], return_hydra_config=True)
    assert job.hydra.sweep.subdir == "seed-43"  # what make seeds reads them back by


def micro_cfg(tmp_path, data_dir, *overrides):
    return compose_train(
        "model=micro",
        f"data.dir={data_dir}",
        f"+run_dir={tmp_path / 'run'}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.artifact_location={tmp_path}/artifacts",
        "optim.micro_batch_size=2",
        "optim.effective_batch_size=4",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        *overrides,
    )


@pytest.mark.parametrize(
    "lora", ["default", "none"]
)  # LoRA (DeepSeek-Coder's default), full (the tiny model's)
def test_fast_dev_run_trains_and_saves_a_loadable_merged_checkpoint(tmp_path, micro_data, lora):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = train(micro_cfg(tmp_path, micro_data, "trainer.fast_dev_run=true", f"lora={lora}"))
    assert "train/loss_step" in metrics
    merged = tmp_path / "run" / "checkpoint" / "merged"
    assert PromptFormat.load(merged) == DEFAULT_FORMAT  # the checkpoint carries the prompt format
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    out = model.generate(
        **tokenizer("from manim import", return_tensors="pt"), max_new_tokens=5, do_sample=False
    )
    assert out.shape[1] > 3
    assert (tmp_path / "run" / "checkpoint" / "adapter" / "adapter_config.json").is_file() == (
        lora != "none"
    )


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_optimizer_option_trains_in_any_precision(tmp_path, micro_data, precision):
    # Under mixed precision Lightning refuses to clip gradients for a fused optimizer (seen on
    # a GPU with trainer=gpu): the option must fall back to foreach there.
    metrics = train(
        micro_cfg(
            tmp_path,
            micro_data,
            "trainer.fast_dev_run=true",
            "optim.fused=true",
            f"trainer.precision={precision}",
            "trainer.gradient_clip_val=1.0",
        )
    )
    assert "train/loss_step" in metrics


def test_mlflow_run_holds_params_metrics_and_model(tmp_path, micro_data):
    train(micro_cfg(tmp_path, micro_data, "+limit_train_samples=4", "trainer.limit_val_batches=1"))
    run_id = json.loads((tmp_path / "run" / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert re.fullmatch(
        r"lora-r64-micro-\d{4}-\d{4}", run.info.run_name
    )  # what ran, not a timestamp
    assert "val/loss" in run.data.metrics and "train/loss_step" in run.data.metrics
    assert 0 <= run.data.metrics["val/math"] <= 100  # headers of the validation functions, checked
    levels = {f"val/math_level{r.level}" for r in dataset.read_split(micro_data, "validation")}
    assert levels <= set(run.data.metrics)
    assert any(k.startswith("lora") for k in run.data.params)
    # the merged checkpoint: an MLflow model of the run, registered, its prompt format in the
    # metadata
    (logged,) = run.outputs.model_outputs
    (version,) = client.search_model_versions("name = 'derivanim-micro'")
    assert version.run_id == run_id and logged.model_id in version.source
    # the registered model says what it is: description and tags, on the model and on its version
    registered = client.get_registered_model("derivanim-micro")
    assert registered.description.startswith("LoRA (r=64, alpha=128) fine-tune of micro")
    assert {
        "base_model": "micro",
        "lora_r": "64",
        "lora_alpha": "128",
        "dataset": "micro",
        "prompt_format_sha256": DEFAULT_FORMAT.sha256,
    }.items() <= registered.tags.items()
    assert len(registered.tags["dataset_sha256"]) == len(registered.tags["benchmarks_sha256"]) == 64
    assert (
        "lr=" in registered.tags["recipe"]
        and version.tags == registered.tags
        and version.description
    )
    artifacts = {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    assert (
        "checkpoint/prompt_format.json" in artifacts and "checkpoint/draft_corpus.json" in artifacts
    )
    # the runs table's Dataset column: the train and validation splits, with digests and sources
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"micro-train", "micro-validation"}
    assert {d.tags[0].value for d in inputs.values()} == {"training", "validation"}
    assert json.loads(inputs["micro-train"].dataset.source)["uri"] == str(
        (micro_data / "train.jsonl").resolve()
    )
    assert inputs["micro-train"].dataset.digest != inputs["micro-validation"].dataset.digest
    experiment = client.get_experiment(run.info.experiment_id)
    assert (
        experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    )  # the UI opens on runs


def test_the_logged_model_loads_back_offline_and_writes_the_scene_the_checkpoint_writes(
    tmp_path, micro_data, monkeypatch
):
    import mlflow

    from derivative_animator import tracking
    from derivative_animator.model.generate import SceneGenerator

    train(
        micro_cfg(
            tmp_path,
            micro_data,
            "+limit_train_samples=4",
            "trainer.limit_val_batches=1",
            "val_math.enabled=false",
        )
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    model, tokenizer, prompt_format = tracking.load_logged_model("models:/derivanim-micro/1")
    assert prompt_format == DEFAULT_FORMAT
    from_mlflow = SceneGenerator(model, tokenizer, prompt_format, None, tmp_path, speculative=False)
    from_folder = SceneGenerator.load(tmp_path / "run" / "checkpoint" / "merged", speculative=False)
    for function in ("x^2", "sin(x) e^x"):
        assert from_mlflow.generate(function, 60).code == from_folder.generate(function, 60).code


def test_runs_never_overwrite_each_other(tmp_path, micro_data):
    cfg = micro_cfg(tmp_path, micro_data, "trainer.fast_dev_run=true")
    train(cfg)
    with pytest.raises(FileExistsError):
        train(cfg)


def test_a_run_logs_the_options_its_dataset_was_built_with_and_says_when_they_differ(
    tmp_path, micro_data, capsys
):
    """micro_data was built without practice and with 8 train functions; the composed data group
    says make all's recipe: the run takes (and would log) the card's, with a note."""
    from derivative_animator.runs import prepare_run

    composed = micro_cfg(tmp_path, micro_data)
    assert composed.data.tree_practice > 0 and composed.data.sizes.train != 8
    cfg, _, _ = prepare_run(composed)
    assert (cfg.data.tree_practice, cfg.data.combination_practice) == (0, 0)
    assert cfg.data.sizes.train == 8 and cfg.data.dir == str(micro_data)
    note = capsys.readouterr().err
    assert f"note: {micro_data} was built with" in note and "tree_practice=0" in note
    built, _, _ = prepare_run(micro_cfg(tmp_path / "again", micro_data, *_as_built(cfg)))
    assert built.data == cfg.data and "note:" not in capsys.readouterr().err


def _as_built(cfg) -> list[str]:
    """Overrides that compose cfg's data group."""
    data = OmegaConf.to_container(cfg.data)
    sizes = [f"data.sizes.{split}={n}" for split, n in data.pop("sizes").items()]
    listed = lambda v: f"[{','.join(map(str, v))}]" if isinstance(v, list) else v  # noqa: E731
    plain = [f"data.{k}={'null' if v is None else listed(v)}" for k, v in data.items()]
    return sizes + [o for o in plain if not o.startswith("data.dir=")]


def test_the_data_module_is_the_one_conf_train_describes():
    """train.py and scripts/benchmark.py build their data through this one constructor."""
    from derivative_animator.data.datamodule import DerivativeDataModule

    cfg = compose_train("full_scenes=7", "seed=3", "loader.bucket_size=17")
    data = DerivativeDataModule.from_config(cfg, tokenizer=None)
    assert (data.data_dir, data.full_scenes, data.seed, data.bucket_size) == (
        cfg.data.dir,
        7,
        3,
        17,
    )
    assert (data.micro_batch_size, data.max_length, data.max_tokens) == (
        cfg.optim.micro_batch_size,
        cfg.model.max_length,
        cfg.loader.max_tokens,
    )
    assert DerivativeDataModule.from_config(cfg, None, seed=0).seed == 0
    assert compose_train().full_scenes, "make all trains on header practice after the first scenes"


def test_header_practice_cuts_samples_after_the_first_n_at_the_math_header(micro_data):
    from derivative_animator.data.datamodule import IGNORE_INDEX, DerivativeDataModule
    from derivative_animator.model.base_model import BaseModelConfig
    from derivative_animator.model.pretrain import build_base

    model_cfg = compose_train("model=micro").model
    build_base(BaseModelConfig(**OmegaConf.to_container(model_cfg.build, resolve=True)))
    tokenizer, _ = finetune.load_base(ModelSettings.from_config(model_cfg))
    whole = DerivativeDataModule(str(micro_data), tokenizer, max_length=model_cfg.max_length)
    practice = DerivativeDataModule(
        str(micro_data), tokenizer, max_length=model_cfg.max_length, full_scenes=3
    )
    whole.setup(), practice.setup()
    records = dataset.read_split(micro_data, "train")
    for index, (full, cut) in enumerate(
        zip(whole.splits["train"], practice.splits["train"], strict=True)
    ):
        if index < 3:
            assert cut == full
            continue
        n = len(cut["input_ids"])
        assert cut["input_ids"] == full["input_ids"][:n] and cut["labels"] == full["labels"][:n]
        assert (
            tokenizer.eos_token_id not in cut["labels"][-1:] and cut["labels"][-1] != IGNORE_INDEX
        )
        header = tokenizer.decode([t for t in cut["labels"] if t != IGNORE_INDEX])
        completion = records[index].completion
        assert header == completion[: math_header_length(completion)]
    assert (
        practice.splits["validation"].examples == whole.splits["validation"].examples
    )  # validated whole
    with pytest.raises(ValueError, match="full_scenes"):
        DerivativeDataModule(str(micro_data), tokenizer, full_scenes=0)


def test_scene_samples_end_where_decoding_takes_over_and_fit_the_tiny_model(micro_data):
    from derivative_animator.data import scenes
    from derivative_animator.data.datamodule import IGNORE_INDEX, DerivativeDataModule

    model_cfg = compose_train().model  # the shipped tiny model: its tokenizer and max_length
    tokenizer, _ = finetune.load_base(ModelSettings.from_config(model_cfg))
    data = DerivativeDataModule(str(micro_data), tokenizer, max_length=model_cfg.max_length)
    data.setup()  # refuses a sample over max_length
    for split in ("train", "validation", "test"):
        for record, example in zip(
            dataset.read_split(micro_data, split), data.splits[split], strict=True
        ):
            written = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
            end = scenes.written_length(record.completion)
            # the scene's own tokens up to the one the style's opening ends in
            assert written == record.completion[: len(written)] and end <= len(written) < end + 16
    # a sample whose opening lies past max_length (a long header) ends at its header
    lengths = data.splits["train"].lengths
    short = DerivativeDataModule(str(micro_data), tokenizer, max_length=max(lengths) - 1)
    short.setup()
    records = dataset.read_split(micro_data, "train")
    for record, length, example in zip(records, lengths, short.splits["train"], strict=True):
        written = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
        end = (math_header_length if length == max(lengths) else scenes.written_length)(
            record.completion
        )
        assert end <= len(written) < end + 16


def test_merged_logits_equal_adapter_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    model = finetune.add_lora(
        base,
        LoraSettings(
            enabled=True,
            r=8,
            alpha=16,
            dropout=0.0,
            target_modules="all-linear",
            modules_to_save=None,
        ),
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at 0; make the adapters actually change the output
            torch.nn.init.normal_(parameter, std=0.5)
    model.eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        adapter_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            plain_logits = model(input_ids=ids).logits
        merged = finetune.merge(model)
        merged_logits = merged(input_ids=ids).logits
        assert finetune.merge(merged) is merged  # merging is idempotent
    assert (adapter_logits - plain_logits).abs().max() > 1e-2  # the adapters do change the output
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)


def test_interrupted_run_resumes_into_the_same_mlflow_run(tmp_path, micro_data, crash_at_step):
    cfg = micro_cfg(
        tmp_path,
        micro_data,
        "trainer.max_epochs=2",
        "+checkpoint_every_n_steps=1",
        "trainer.limit_val_batches=1",
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, extra_callbacks=[crash_at_step(2)])
    run_dir = tmp_path / "run"
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "FAILED"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "checkpoint").exists()

    train(compose_train(f"+resume={run_dir}"))
    assert json.loads((run_dir / "run.json").read_text())["mlflow_run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    info = json.loads((run_dir / "checkpoint" / "merged" / "run_info.json").read_text())
    assert (
        info["global_step"] == 4
    )  # 8 samples / batch 4 = 2 steps per epoch, 2 epochs, none repeated


def test_response_loss_is_the_models_own_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    from derivative_animator.data.datamodule import IGNORE_INDEX, collate

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    module = finetune.LoRAFineTuner(model, lr=1e-3)
    # prompts of 5 and 9 tokens, responses of 4 and 7, padded: the head runs from position 4 on
    examples = [
        {"input_ids": list(range(1, 10)), "labels": [IGNORE_INDEX] * 5 + list(range(6, 10))},
        {"input_ids": list(range(1, 17)), "labels": [IGNORE_INDEX] * 9 + list(range(10, 17))},
    ]
    batch = collate(examples, pad_id=0)
    assert torch.allclose(module.response_loss(batch), model(**batch).loss, atol=1e-6)
    whole = collate(
        [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}], pad_id=0
    )  # labelled from the start
    assert torch.allclose(module.response_loss(whole), model(**whole).loss, atol=1e-6)


def test_hub_model_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train("model=deepseek_coder_1_3b").model
    with pytest.raises(
        finetune.ModelLoadError, match="deepseek-ai/deepseek-coder-1.3b-base.*model.pretrained="
    ):
        finetune.load_base(ModelSettings.from_config(cfg))


def test_nan_loss_stops_with_a_clear_message():
    module = finetune.LoRAFineTuner(
        model=lambda **batch: type("Out", (), {"loss": torch.tensor(float("nan"))})(), lr=1e-3
    )
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        module.training_step({"input_ids": torch.zeros(1, 2)}, 0)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path, micro_data):
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "derivative_animator.train",
        "model=micro",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        f"data.dir={micro_data}",
        f"+run_dir={tmp_path / 'run'}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.artifact_location={tmp_path}/a",
        "optim.micro_batch_size=2",
        "optim.effective_batch_size=2",
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=paths.PROJECT_ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint" / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_multirun_makes_one_mlflow_run_per_rank(tmp_path, micro_data):
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "derivative_animator.train",
        "-m",
        "model=micro",
        "lora.r=4,8",
        "trainer.max_epochs=1",
        "+limit_train_samples=4",
        "trainer.limit_val_batches=1",
        f"data.dir={micro_data}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.artifact_location={tmp_path}/a",
        "sweep_name=test-sweep",
    ]
    env = {**__import__("os").environ, "DERIVANIM_OUTPUTS": str(tmp_path / "outputs")}
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=paths.PROJECT_ROOT, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("derivative-animator")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'test-sweep'")
    assert sorted(r.data.params["lora/r"] for r in runs) == ["4", "8"]
    assert all(
        r.data.params["lora/enabled"] == "True" for r in runs
    )  # LoRA on by default: ranks that differ
    assert all(r.info.status == "FINISHED" and "val/math" in r.data.metrics for r in runs)


@pytest.fixture(scope="module")
def micro_tokenizer():
    from derivative_animator.model.base_model import BaseModelConfig
    from derivative_animator.model.pretrain import build_base

    model_cfg = compose_train("model=micro").model
    build_base(BaseModelConfig(**OmegaConf.to_container(model_cfg.build, resolve=True)))
    return finetune.load_base(ModelSettings.from_config(model_cfg))[0], model_cfg.max_length


def test_the_ids_training_feeds_begin_with_exactly_the_ids_inference_sends(
    micro_data, micro_tokenizer
):
    """Not the prompt module against itself: the datamodule's tensors against the generator's."""
    from derivative_animator.data.datamodule import IGNORE_INDEX, DerivativeDataModule
    from derivative_animator.data.scenes import written_length
    from derivative_animator.model.generate import SceneGenerator

    tokenizer, max_length = micro_tokenizer
    datamodule = DerivativeDataModule(str(micro_data), tokenizer, max_length=max_length)
    datamodule.setup()
    generator = SceneGenerator(torch.nn.Linear(1, 1), tokenizer, DEFAULT_FORMAT, None, micro_data)
    for split in ("train", "validation"):
        for record, example in zip(
            dataset.read_split(micro_data, split), datamodule.splits[split], strict=True
        ):
            sent = generator.prompt_ids(record.function)
            assert example["input_ids"][: len(sent)] == sent
            assert example["labels"][: len(sent)] == [IGNORE_INDEX] * len(sent)
            assert example["labels"][len(sent)] != IGNORE_INDEX  # the response starts right after
            response = tokenizer.decode(example["input_ids"][len(sent) :], skip_special_tokens=True)
            assert record.completion.startswith(response)  # up to the style's opening
            assert len(response) >= written_length(record.completion)


def test_the_datamodule_refuses_a_dataset_made_with_another_prompt_format(
    micro_data, micro_tokenizer, tmp_path
):
    import shutil

    from derivative_animator.data.datamodule import DerivativeDataModule
    from derivative_animator.data.prompt import PromptFormatError

    other = tmp_path / "other"
    shutil.copytree(micro_data, other)
    PromptFormat(name="other", template="Animate {function}:\n").save(other)
    with pytest.raises(PromptFormatError):
        DerivativeDataModule(str(other), micro_tokenizer[0]).setup()
    DerivativeDataModule(
        str(micro_data), micro_tokenizer[0], max_length=micro_tokenizer[1]
    ).setup()  # its own: fine


def test_a_crash_after_fit_marks_the_run_failed(tmp_path, micro_data, monkeypatch):
    """Lightning marks a crash inside fit FAILED itself; saving the checkpoint is ours."""

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(finetune, "save_checkpoint", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(micro_cfg(tmp_path, micro_data, "trainer.fast_dev_run=true"))
    run_id = json.loads((tmp_path / "run" / "run.json").read_text())["mlflow_run_id"]
    assert (
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        .get_run(run_id)
        .info.status
        == "FAILED"
    )


@pytest.mark.parametrize("precision, fused", [("32-true", True), ("bf16-mixed", False)])
def test_the_fused_option_gives_a_fused_optimizer_where_lightning_allows_it(
    tmp_path, micro_data, precision, fused
):
    seen = []

    class Spy(pl.Callback):
        def on_train_start(self, trainer, module):
            seen.append(trainer.optimizers[0].defaults)

    for option in (True, False):
        train(
            micro_cfg(
                tmp_path / str(option),
                micro_data,
                "trainer.fast_dev_run=true",
                f"optim.fused={option}",
                f"trainer.precision={precision}",
            ),
            extra_callbacks=[Spy()],
        )
    assert [bool(defaults["fused"]) for defaults in seen] == [fused, False]


class CrashAtBatch(pl.Callback):
    """Dies as the n-th micro-batch (from 0) starts: what was checkpointed before it is kept."""

    def __init__(self, n: int):
        self.n, self.started = n, 0

    def on_train_batch_start(self, trainer, *args):
        if self.started == self.n:
            raise RuntimeError("simulated crash")
        self.started += 1


class RecordBatches(pl.Callback):
    """Each micro-batch trained on, as (epoch, its token ids), in order."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, tuple(batch["input_ids"].flatten().tolist())))


def test_a_resumed_run_trains_on_exactly_the_batches_an_uninterrupted_run_does(
    tmp_path, micro_data
):
    """Crash mid-epoch, resume: no micro-batch repeated, none skipped, the same order and steps."""
    overrides = (
        "trainer.max_epochs=2",
        "+checkpoint_every_n_steps=1",
        "trainer.limit_val_batches=1",
    )
    whole = RecordBatches()
    train(micro_cfg(tmp_path / "whole", micro_data, *overrides), extra_callbacks=[whole])
    assert len(whole.seen) == 8  # 8 samples in micro-batches of 2, two epochs

    before, after = RecordBatches(), RecordBatches()
    cfg = micro_cfg(tmp_path / "cut", micro_data, *overrides)
    with pytest.raises(
        RuntimeError, match="simulated crash"
    ):  # step 1 (2 micro-batches) saved, then it dies
        train(cfg, extra_callbacks=[before, CrashAtBatch(2)])
    train(compose_train(f"+resume={tmp_path / 'cut' / 'run'}"), extra_callbacks=[after])
    trained = before.seen[:2] + after.seen
    assert trained == whole.seen, [
        whole.seen.index(b) if b in whole.seen else None for b in trained
    ]
    info = json.loads(
        (tmp_path / "cut" / "run" / "checkpoint" / "merged" / "run_info.json").read_text()
    )
    assert info["global_step"] == 4


def test_the_learning_rate_schedule_is_transformers_cosine_with_warmup():
    from transformers import get_cosine_schedule_with_warmup

    def rates(schedule, steps=300):
        values = []
        for _ in range(steps):
            values.append(schedule.get_last_lr()[0])
            schedule.optimizer.step()
            schedule.step()
        return values

    weights = [torch.nn.Parameter(torch.zeros(1))]
    module = finetune.LoRAFineTuner(torch.nn.Linear(1, 1), lr=1e-3, warmup_ratio=0.05)
    module.trainer = type(
        "Trainer", (), {"estimated_stepping_batches": 250, "precision": "32-true"}
    )()
    module.model = torch.nn.ParameterList(weights)
    ours = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    reference = get_cosine_schedule_with_warmup(torch.optim.AdamW(weights, lr=1e-3), 12, 250)
    assert rates(ours) == pytest.approx(rates(reference), abs=1e-12)


def test_a_lora_setting_while_lora_is_off_is_refused_in_one_line(tmp_path, micro_data):
    """`-m lora.r=4,8` with lora=none would make identical full fine-tunes."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "derivative_animator.train",
        "model=micro",
        "lora=none",
        "lora.r=8",
        f"data.dir={micro_data}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    env = {**__import__("os").environ, "DERIVANIM_OUTPUTS": str(tmp_path / "outputs")}
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=paths.PROJECT_ROOT, env=env
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "lora.r=8 has no effect" in error[0] and "drop lora=none" in error[0]
    assert not (tmp_path / "outputs" / "train").exists() or not any(
        (tmp_path / "outputs" / "train").rglob("run.json")
    )


def test_validation_math_scores_the_derivatives_of_the_headers_the_model_writes(
    micro_tokenizer, scripted_lm
):
    from derivative_animator.data import oracle
    from derivative_animator.data.prompt import encode_prompt
    from derivative_animator.data.scenes import DOCSTRING_END, HEADER_CODE
    from derivative_animator.eval.engine import Sample

    tokenizer = micro_tokenizer[0]
    records = [Sample("a", "x^3", 1), Sample("b", "sin(x^2)", 4), Sample("c", "x^2 + 1", 1)]
    scenes = [oracle.template_scene(r.function, "tangent") for r in records]
    scenes[2] = scenes[2].replace("f'(x) = ", "f'(x) = 3 + ", 1)  # a wrong derivative

    def tokens(scene):  # in the pieces decoding writes apart (decoding.SharedCode)
        docstring = scene[: scene.index(DOCSTRING_END) + len(DOCSTRING_END)]
        values = scene[len(docstring + HEADER_CODE) :].split("\n", 1)[0] + "\n"
        pieces = (docstring, HEADER_CODE, values, scene[len(docstring + HEADER_CODE + values) :])
        return [
            t for piece in pieces for t in tokenizer(piece, add_special_tokens=False)["input_ids"]
        ]

    scripts = [
        encode_prompt(tokenizer, DEFAULT_FORMAT.format(r.function)) + tokens(scene)
        for r, scene in zip(records, scenes, strict=True)
    ]
    logged = {}
    module = type(
        "Module",
        (),
        {
            "model": scripted_lm(scripts, len(tokenizer), tokenizer.eos_token_id),
            "log": lambda self, name, value, **kw: logged.__setitem__(name, value),
        },
    )()
    trainer = type("Trainer", (), {"sanity_checking": False, "default_root_dir": "."})()
    finetune.ValidationMath(tokenizer, records).on_validation_epoch_end(trainer, module)
    assert logged == {
        "val/math": pytest.approx(200 / 3),
        "val/math_level1": 50.0,
        "val/math_level4": 100.0,
    }


def test_a_token_capped_sampler_bounds_every_batch_and_trains_each_sample_once():
    """loader.max_tokens: big batches of short headers, small ones of whole scenes, and the
    count Lightning's schedule is sized by is the count handed out."""
    import random

    from derivative_animator.data.datamodule import BucketBatchSampler

    rng = random.Random(0)
    lengths = [rng.choice([90, 120, 200, 1900, 2040]) for _ in range(500)]
    sampler = BucketBatchSampler(lengths, 16, 4096, True, seed=1, max_tokens=8192)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 8192 for b in batches)
    assert max(len(b) for b in batches) == 16  # headers still fill whole batches
    assert min(len(b) for b in batches if max(lengths[i] for i in b) > 1000) <= 4


@pytest.mark.parametrize("replicas", [1, 3])
def test_an_uncapped_sampler_batches_each_sorted_bucket_in_runs_of_batch_size(replicas):
    import random

    from derivative_animator.data.datamodule import BucketBatchSampler

    lengths = [random.Random(i).randint(10, 900) for i in range(1003)]
    sampler = BucketBatchSampler(lengths, 16, 100, True, seed=2, num_replicas=replicas)
    batches = list(sampler)
    cuts = BucketBatchSampler(lengths, 16, 100, False, seed=2).batches(0)
    assert [len(b) for b in cuts] == ([16] * 6 + [4]) * 10 + [3]  # 100-sample buckets, 3 left
    assert all(
        [lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in cuts
    )  # each batch a run of its sorted bucket
    assert len(batches) == len(sampler) == 71 // replicas


def test_encoding_in_chunks_gives_the_ids_of_one_call_per_sample(micro_data, monkeypatch):
    from derivative_animator.data import datamodule

    model_cfg = compose_train().model
    tokenizer, _ = finetune.load_base(ModelSettings.from_config(model_cfg))
    records = dataset.read_split(micro_data, "train")
    prompts = [DEFAULT_FORMAT.format(record.function) for record in records]
    completions = [record.completion for record in records]
    header_only = [index % 2 == 1 for index in range(len(records))]
    monkeypatch.setattr(datamodule, "ENCODE_CHUNK", 3)  # 8 samples: chunks of 3, 3 and 2
    chunked = datamodule.encode_examples(tokenizer, prompts, completions, header_only, 2048)
    one_by_one = [
        datamodule.encode_examples(tokenizer, [p], [c], [h], 2048)[0]
        for p, c, h in zip(prompts, completions, header_only, strict=True)
    ]
    assert chunked == one_by_one
