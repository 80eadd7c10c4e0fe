import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from derivative_animator import paths
from derivative_animator.model import base_model, base_publish, copy_circuit, pretrain
from derivative_animator.model.base_model import BaseModelConfig


def test_copy_rows_repeat_spans_an_induction_head_can_predict():
    tokens = torch.randint(10, 5000, (20_000,), generator=torch.Generator().manual_seed(0))
    row, mask = copy_circuit._copy_row(tokens, 256, torch.Generator().manual_seed(1))
    assert row.shape == mask.shape == (256,)
    assert (
        40 < int(mask.sum()) < 128
    )  # about half the row repeats, first tokens of repeats excluded
    for i in mask.nonzero().flatten().tolist():
        # the token before i appeared earlier, followed by the very token at i
        earlier = [j for j in range(1, i - 1) if row[j - 1] == row[i - 1] and row[j] == row[i]]
        assert earlier, f"position {i} is not predictable by copying"


def tiny_config(**changes) -> BaseModelConfig:
    """The first stage of the shipped base's recipe (a fresh model), with changes."""
    model = OmegaConf.to_container(compose_config("train", "model=tiny").model, resolve=True)
    return BaseModelConfig(**{**model["build"], **model["earlier_stages"]["fresh"], **changes})


def micro_config(tmp_path, **changes) -> BaseModelConfig:
    settings = OmegaConf.to_container(
        compose_config("train", "model=micro").model.build, resolve=True
    )
    return BaseModelConfig(**{**settings, "output_dir": str(tmp_path / "base"), **changes})


def test_batches_are_corpus_windows_each_once_an_epoch():
    tokens = torch.arange(64 * 40 + 1) % 3000
    config = BaseModelConfig(
        **{**micro_config(Path("/unused")).__dict__, "seq_len": 64, "batch_size": 8}
    )
    batches = [pretrain.batch_at(tokens, config, step) for step in range(10)]  # 5 steps an epoch
    assert all(b.shape == (8, 64) for b in batches)
    assert all(
        bool(((row[1:] - row[:-1]) % 3000 == 1).all()) for b in batches for row in b
    )  # consecutive tokens
    for epoch in (batches[:5], batches[5:]):
        starts = sorted(int(row[0]) for b in epoch for row in b)
        assert starts == [64 * i for i in range(40)]
    assert not torch.equal(
        torch.cat(batches[:5]), torch.cat(batches[5:])
    )  # each epoch its own order
    assert torch.equal(
        pretrain.batch_at(tokens, config, 7), batches[7]
    )  # a pure function of the step


def test_an_interrupted_pretraining_resumes_to_the_very_weights_of_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    whole = micro_config(tmp_path / "whole", steps=6, checkpoint_every=2)
    pretrain.build_base(whole)
    interrupted = micro_config(tmp_path / "interrupted", steps=6, checkpoint_every=2)
    real_batch_at = pretrain.batch_at

    def stop_at_step_5(tokens, config, step):
        if step == 5:
            raise KeyboardInterrupt
        return real_batch_at(tokens, config, step)

    monkeypatch.setattr(pretrain, "batch_at", stop_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        pretrain.build_base(interrupted)
    state = torch.load(
        tmp_path / "interrupted" / ".base-building" / pretrain.STATE_FILE, weights_only=False
    )
    assert state["step"] == 4  # the last checkpoint; step 5 is trained again
    trained: list[int] = []
    monkeypatch.setattr(
        pretrain, "batch_at", lambda t, c, step: trained.append(step) or real_batch_at(t, c, step)
    )
    report = pretrain.build_base(interrupted)
    assert (
        trained == [4, 5] and len(report.losses) == 6 and not report.cached
    )  # continued, not restarted
    first, second = (
        load_file(tmp_path / d / "base" / "model.safetensors") for d in ("whole", "interrupted")
    )
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert pretrain.build_base(interrupted).cached  # finished: reused as it is


def test_the_corpus_is_built_in_a_child_process_and_read_back(tmp_path):
    """The process that pretrains never runs the corpus writer (one stage pretrained 1.6x slower
    in the process that had built its corpus: docs/experiments.md, 2026-12-07 evening); it reads
    the child's corpus back."""
    import pickle

    config = micro_config(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    (tmp_path / "config.pkl").write_bytes(pickle.dumps(config))
    script = (
        "import pickle, sys; from pathlib import Path\n"
        "from derivative_animator.model import base_corpus, base_model\n"
        f"config = pickle.loads(Path({str(tmp_path / 'config.pkl')!r}).read_bytes())\n"
        "report = base_model.BuildReport(output_dir='', cached=False)\n"
        f"_, tokens = base_corpus.prepare_corpus(config, Path({str(staging)!r}), report)\n"
        "print(len(tokens), report.code_tokens, report.corpus_files,"
        " 'derivative_animator.data.calculus_corpus' in sys.modules)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    tokens, code_tokens, files, imported = ran.stdout.splitlines()[-1].split()
    assert imported == "False"  # the writer ran elsewhere
    assert int(files) > 0 and 0 < int(code_tokens) < int(tokens)  # counts read back, EOS between
    saved = torch.load(staging / "corpus.pt")
    assert len(saved["tokens"]) == int(tokens)


def test_sigterm_saves_the_step_it_finished_and_marks_the_pretraining_run_killed(
    tmp_path, monkeypatch
):
    import os
    import signal

    config = micro_config(tmp_path, steps=6, checkpoint_every=4)
    real_batch_at = pretrain.batch_at
    calls: list[tuple] = []

    class Client:  # the MLflow client's two calls pretraining makes
        def log_metric(self, *args, **kwargs):
            pass

        def set_terminated(self, run_id, status):
            calls.append((run_id, status))

    def terminated_in_step_2(tokens, config, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a session's end sends it
        return real_batch_at(tokens, config, step)

    monkeypatch.setattr(pretrain, "batch_at", terminated_in_step_2)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        pretrain.build_base(config, open_run=lambda run_id: (Client(), "run-1"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert calls == [("run-1", "KILLED")]
    state = torch.load(tmp_path / ".base-building" / pretrain.STATE_FILE, weights_only=False)
    assert state["step"] == 2  # the step under way finished and saved (the first checkpoint: 4)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_make_pretrain_at_micro_scale_logs_to_mlflow_and_publishes_a_base_with_its_card(
    tmp_path, default_splits
):
    """The `make pretrain` entry point, end to end, with a calculus corpus that leaves the
    held-out data out."""
    import mlflow
    from transformers import AutoModelForCausalLM

    from derivative_animator.data import benchmarks, calculus_corpus, dataset
    from derivative_animator.data.dataset_schema import DataConfig

    data = tmp_path / "data"
    dataset.write_dataset(default_splits, DataConfig(dir=str(data)))
    published = tmp_path / "models" / "micro-base"
    store = f"sqlite:///{tmp_path}/mlflow.db"
    command = [
        sys.executable,
        "-m",
        "derivative_animator.pretrain",
        "model=micro",
        "model.build.calculus_draws=300",
        f"model.build.held_out_data={data}",
        f"model.build.output_dir={tmp_path / 'base'}",
        f"model.build.publish_dir={published}",
        f"logger.tracking_uri={store}",
        f"logger.artifact_location={tmp_path / 'artifacts'}",
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=paths.PROJECT_ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((published / base_model.BUILD_INFO).read_text())
    held_out = calculus_corpus.held_out_keys(
        data
    )  # the splits' validation and test functions and every benchmark's
    assert (
        info["calculus_documents"] > 200 and info["held_out_functions"] == len(held_out) > 107 + 300
    )
    assert info["held_out_sha256"] == benchmarks.keys_sha256(held_out)
    assert {name: base_publish.file_sha256(published / name) for name in info["sha256"]} == info[
        "sha256"
    ]
    assert_card_lists_every_file(published)
    assert (
        f"{info['held_out_functions']} held-out functions"
        in (published / base_publish.CARD).read_text()
    )
    AutoModelForCausalLM.from_pretrained(published)
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("derivative-animator-pretrain").experiment_id]
    )
    assert run.info.status == "FINISHED" and run.data.metrics["pretrain/calculus_tokens"] > 0
    assert run.data.params["build/calculus_draws"] == "300"


def assert_card_lists_every_file(folder):
    """The card's Files table names every other file of the folder, each with its true sha256."""
    listed = base_publish.card_files((folder / base_publish.CARD).read_text())
    assert sorted(listed) == sorted(p.name for p in folder.iterdir() if p.name != base_publish.CARD)
    assert {name: base_publish.file_sha256(folder / name) for name in listed} == listed


def test_the_shipped_base_loads_and_its_files_match_the_sha256_of_its_card():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = compose_config("train", "model=tiny").model.build
    shipped = paths.resolve(settings.publish_dir)
    info = json.loads((shipped / base_model.BUILD_INFO).read_text())
    assert {name: base_publish.file_sha256(shipped / name) for name in info["sha256"]} == info[
        "sha256"
    ]
    assert_card_lists_every_file(shipped)
    assert (
        shipped / "model.safetensors"
    ).stat().st_size < 40e6  # the budget for weights in git
    assert (
        info["config_sha256"]
        == BaseModelConfig(**OmegaConf.to_container(settings, resolve=True)).sha256
    )  # its recipe (its first stage: test_small_grows_the_first_stage_of_tinys_recipe...)
    model = AutoModelForCausalLM.from_pretrained(shipped)
    tokenizer = AutoTokenizer.from_pretrained(shipped)
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    assert tokenizer.decode(tokenizer("f'(x) = 2x*sin(x)")["input_ids"]) == "f'(x) = 2x*sin(x)"


class _Tokenizer:  # what make_model reads from a tokenizer
    def __init__(self, size):
        self.size, self.eos_token_id, self.pad_token_id = size, 0, 1

    def __len__(self):
        return self.size


@pytest.mark.parametrize("circuit", [False, True])
def test_copy_circuit_makes_an_untrained_model_copy(circuit):
    """The built-in induction head copies repeated spans before any training; without it, a
    random model copies nothing. Spans of random tokens, so only copying can predict them."""
    config = tiny_config(
        num_layers=2, copy_circuit=circuit, max_position_embeddings=1024, seq_len=512
    )
    torch.manual_seed(0)
    model = base_model.make_model(config, _Tokenizer(2048))
    tokens = torch.randint(2, 2048, (50_000,), generator=torch.Generator().manual_seed(0))
    accuracy = copy_circuit.copy_accuracy(model, tokens, seq_len=512, rows=4)
    assert (accuracy > 0.8) if circuit else (accuracy < 0.05)


def test_copy_circuit_attends_one_and_two_tokens_back():
    config = tiny_config(num_layers=2, max_position_embeddings=1024, seq_len=512)
    torch.manual_seed(0)
    model = base_model.make_model(config, _Tokenizer(512))
    inputs = torch.randint(2, 512, (1, 300), generator=torch.Generator().manual_seed(0))
    model.set_attn_implementation("eager")  # sdpa does not return attention weights
    attentions = model(input_ids=inputs, output_attentions=True).attentions[0][0]  # layer 0
    positions = torch.arange(2, 300)
    assert bool((attentions[0, positions].argmax(-1) == positions - 1).all())
    assert bool((attentions[1, positions].argmax(-1) == positions - 2).all())


def test_copy_circuit_refuses_models_too_small_to_host_it():
    with pytest.raises(ValueError, match="copy_circuit=false"):
        tiny_config(hidden_size=32, num_heads=2, num_layers=2)
    tiny_config(hidden_size=32, num_heads=2, num_layers=2, copy_circuit=False)  # fine without


def test_a_grown_base_computes_what_its_parent_does_until_it_trains(tmp_path):
    """Block expansion: each layer followed by a copy whose output projections are zero, so
    the deeper model's logits are its parent's, and then pretraining moves them."""
    from transformers import AutoModelForCausalLM

    from derivative_animator.model import grow

    parent = micro_config(tmp_path / "parent", steps=3)
    pretrain.build_base(parent)
    grown = micro_config(
        tmp_path / "grown", grow_from=str(tmp_path / "parent" / "base"), num_layers=4, steps=3
    )
    shape = {k: getattr(grown, k) for k in ("hidden_size", "intermediate_size", "num_heads")}
    model = grow.grown_model(grown.grow_from, 4, {**shape, "rope_theta": grown.rope_theta})
    before = AutoModelForCausalLM.from_pretrained(grown.grow_from).eval()
    ids = torch.randint(5, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, before(ids).logits, atol=1e-5)
        assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
        # the key-value cache (generation) sees four layers in order
        out = model.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)
        assert torch.equal(out, before.generate(ids[:1, :8], max_new_tokens=4, do_sample=False))

    report = pretrain.build_base(grown)
    assert not report.cached and report.parameters > sum(p.numel() for p in before.parameters())
    info = json.loads((tmp_path / "grown" / "base" / base_model.BUILD_INFO).read_text())
    assert info["parent_sha256"] == grow.parent_digest(grown.grow_from)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "grown" / "base").eval()
    with torch.no_grad():
        assert not torch.allclose(trained(ids).logits, before(ids).logits, atol=1e-3)
    assert pretrain.build_base(grown).cached
    pretrain.build_base(micro_config(tmp_path / "parent", steps=4))  # the parent changes
    assert not pretrain.build_base(grown).cached  # so the grown base is built again


def test_growing_to_the_parents_own_depth_continues_the_parent(tmp_path):
    """num_layers equal to the parent's: the same model, its pretraining continued (the
    control a deeper base is measured against)."""
    from derivative_animator.model import grow

    pretrain.build_base(micro_config(tmp_path / "parent", steps=1))
    config = micro_config(tmp_path, grow_from=str(tmp_path / "parent" / "base"), num_layers=2)
    shape = {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_heads")}
    from transformers import AutoModelForCausalLM

    model = grow.grown_model(config.grow_from, 2, {**shape, "rope_theta": config.rope_theta})
    parent = AutoModelForCausalLM.from_pretrained(config.grow_from).state_dict()
    assert len(model.model.layers) == 2 and model.state_dict().keys() == parent.keys()
    assert all(torch.equal(weights, parent[name]) for name, weights in model.state_dict().items())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_layers": 3}, "multiple of the parent's 2 layers"),
        ({"num_layers": 1}, "multiple of the parent's 2 layers"),
        ({"hidden_size": 64, "num_layers": 4}, "hidden_size 64 (the parent's: 32)"),
    ],
)
def test_growing_refuses_what_would_not_keep_the_parents_shape(tmp_path, changes, message):
    from derivative_animator.model import grow

    pretrain.build_base(micro_config(tmp_path / "parent", steps=1))
    config = micro_config(tmp_path, grow_from=str(tmp_path / "parent" / "base"), **changes)
    shape = {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_heads")}
    with pytest.raises(ValueError, match=re.escape(message)):
        grow.grown_model(
            config.grow_from, config.num_layers, {**shape, "rope_theta": config.rope_theta}
        )
    with pytest.raises(FileNotFoundError, match="build that base first"):
        grow.parent_digest(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="inherits its parent's induction head"):
        micro_config(tmp_path, grow_from="models/derivanim-tiny", copy_circuit=True)


def test_small_grows_the_first_stage_of_tinys_recipe_which_the_shipped_base_continued():
    def stages(name):
        model = compose_config("train", f"model={name}").model
        return base_model.recipe_stages(OmegaConf.to_container(model, resolve=True))

    tiny, (small_first, small) = stages("tiny"), stages("small")
    assert small_first == tiny[0] and small.grow_from == tiny[0].output_dir
    assert small.num_layers == 8 and {stage.num_layers for stage in tiny} == {4}
    assert [stage.grow_from for stage in tiny] == [None] + [s.output_dir for s in tiny[:-1]]
    record = json.loads(
        (paths.PROJECT_ROOT / "models/derivanim-tiny" / base_model.BUILD_INFO).read_text()
    )
    # the shipped base is still current: every stage is the recipe's
    recorded = [stage["config_sha256"] for stage in base_publish.recorded_stages(record)]
    assert recorded == [stage.sha256 for stage in tiny]


def test_a_staged_recipe_builds_each_stage_after_the_one_it_continues_and_cards_all(tmp_path):
    from dataclasses import asdict

    import mlflow

    from derivative_animator import pretrain as pretrain_entry
    from derivative_animator.model import grow

    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    store = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        "model=micro",
        f"logger.tracking_uri={store}",
        f"logger.artifact_location={tmp_path / 'artifacts'}",
        f"model.build.output_dir={third}",
        f"model.build.grow_from={second}",
        "model.build.steps=2",
        "model.build.seed=2",
        # listed out of order: the chain is found by following grow_from
        f"+model.earlier_stages.b={{output_dir: '{second}', grow_from: '{first}', steps: 3}}",
        "+model.earlier_stages.b.seed=1",
        f"+model.earlier_stages.a={{output_dir: '{first}', grow_from: null, steps: 1, seed: 0}}",
        # a stage no build continues is not built
        f"+model.earlier_stages.c={{output_dir: '{tmp_path / 'unused'}', grow_from: null}}",
    ]
    cfg = compose_config("base", *overrides)
    assert pretrain_entry.main(cfg) == 0
    assert not (tmp_path / "unused").exists()
    client = mlflow.MlflowClient(store)
    runs = client.search_runs(
        [client.get_experiment_by_name("derivative-animator-pretrain").experiment_id]
    )
    assert sorted(run.info.run_name for run in runs) == [
        "pretrain-first",
        "pretrain-second",
        "pretrain-third",
    ]
    stage_1, stage_2, grown = base_model.recipe_stages(
        OmegaConf.to_container(cfg.model, resolve=True)
    )
    info = json.loads((third / base_model.BUILD_INFO).read_text())
    assert info["parent_sha256"] == grow.parent_digest(second)
    assert info["parent"]["config_sha256"] == stage_2.sha256 != info["config_sha256"]
    assert info["parent"]["parent"]["config_sha256"] == stage_1.sha256 != stage_2.sha256
    card = base_publish.model_card(info, "micro", {})
    assert "in 3 stages,\nthe first from a fresh model, each later one continuing" in card
    assert "| stage 1 | 1 steps of 4 x 128" in card
    assert "| stage 2 (continuing stage 1) | 3 steps of 4 x 128" in card
    assert "| stage 3 (continuing stage 2) | 2 steps of 4 x 128" in card
    # the parent is its weights, not its path: the same weights elsewhere keep the build current
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        (moved / name).write_bytes((second / name).read_bytes())
    elsewhere = BaseModelConfig(**{**asdict(grown), "grow_from": str(moved)})
    assert elsewhere.sha256 == grown.sha256 and pretrain.build_base(elsewhere).cached
    looped = compose_config("base", *overrides, f"model.earlier_stages.a.grow_from={third}")
    with pytest.raises(ValueError, match="grow from each other in a loop"):
        base_model.recipe_stages(OmegaConf.to_container(looped.model, resolve=True))


@pytest.mark.parametrize(
    "shares",
    [
        {"practice_share": -0.1},
        {"long_share": -0.1},
        {"textbook_share": 0.6, "practice_share": 0.5},
        {"textbook_share": 0.35, "practice_share": 0.5, "long_share": 0.2},
        {"power_share": -0.1},
        {"textbook_share": 0.35, "practice_share": 0.3, "long_share": 0.2, "power_share": 0.2},
    ],
)
def test_the_corpus_shares_are_validated(shares):
    with pytest.raises(ValueError, match="long_share and power_share must be shares"):
        tiny_config(**shares)
    assert tiny_config(practice_share=0.5).sha256 != tiny_config().sha256  # a new recipe
    assert tiny_config(long_share=0.2).sha256 != tiny_config().sha256
    assert tiny_config(power_share=0.1).sha256 != tiny_config().sha256


def test_the_summary_compares_the_first_ten_losses_with_the_last_ten():
    from derivative_animator.model import pretrain

    losses = [1.0] * 10 + [5.0] * 5 + [2.0] * 10  # 25 steps: neither window is the whole run
    assert pretrain.loss_summary(losses) == (1.0, 2.0)
    assert pretrain.loss_summary([3.0, 1.0]) == (2.0, 2.0)  # a run shorter than ten steps
