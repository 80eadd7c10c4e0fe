"""The reinforcement stage: its config, the reward, the group-relative advantages, the KL to the
SFT model, the loss's sign on a micro model, resume, and the entry point's refusals."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config

from derivative_animator import paths, tracking
from derivative_animator.data import dataset
from derivative_animator.data.dataset_schema import make_record
from derivative_animator.math import curriculum
from derivative_animator.math.header import MATH_HEADER_END, math_header_length
from derivative_animator.math.parsing import parse_function
from derivative_animator.model import finetune
from derivative_animator.model.checkpoint_files import DRAFT_CORPUS
from derivative_animator.model.reinforce import (
    GroupRelativeTrainer,
    group_advantages,
    policy_loss,
    reward,
    token_logprobs,
)
from derivative_animator.model.settings import LoraSettings, ModelSettings
from derivative_animator.reinforce import reinforce


def scene_header(function: str) -> str:
    """The math header the dataset's scene for `function` opens with (data/scenes.py)."""
    scene = make_record(curriculum.analyse(parse_function(function)), "tangent", "test").completion
    return scene[: math_header_length(scene)]


RIGHT = scene_header("x^3")
WRONG = RIGHT.replace("f'(x) = 3x^2", "f'(x) = 2x^2")


def test_the_config_composes_and_holds_every_default():
    cfg = compose_config("reinforce", "reinforce.model=some/dir")
    rl = cfg.reinforce
    assert (rl.steps, rl.functions_per_step, rl.group_size) == (200, 4, 8)
    assert (rl.temperature, rl.beta, rl.lr, rl.curriculum_share) == (1.0, 0.04, 3e-4, 0.2)
    assert (rl.textbook_share, rl.wider_intervals) == (0.0, False)
    assert rl.max_new_tokens == compose_config("train").val_math.max_new_tokens
    assert cfg.model.pretrained == "some/dir" and cfg.trainer.max_steps == 200
    assert cfg.lora.enabled and cfg.lora.dropout == 0.0 and rl.checkpoint_every_n_steps == 25
    # no default in code: every setting comes from conf/reinforce
    for function in (GroupRelativeTrainer.__init__, dataset.reinforcement_functions):
        defaults = [
            p for p in inspect.signature(function).parameters.values() if p.default != p.empty
        ]
        assert not defaults, function


def test_the_reward_is_one_only_for_a_right_derivative_as_inference_writes_the_header():
    """Right f' -> 1, wrong -> 0; the interval is the one decoding writes (decision 0016), so a
    right f' after a model's interval where f is undefined, or after none, still earns 1."""
    assert "X_MIN, X_MAX = " in RIGHT and WRONG != RIGHT
    assert reward(RIGHT, "x^3") == 1.0 and reward(RIGHT + MATH_HEADER_END, "x^3") == 1.0
    assert reward(WRONG, "x^3") == 0.0
    no_interval = "\n".join(line for line in RIGHT.split("\n") if "X_MIN" not in line)
    assert reward(no_interval, "x^3") == 1.0
    log_header = scene_header("ln(x)")
    assert reward(log_header, "ln(x)") == 1.0
    undefined = log_header.replace(log_header.split("X_MIN, X_MAX = ")[1].split("\n")[0], "-3, -1")
    assert reward(undefined, "ln(x)") == 1.0
    assert reward(undefined.replace("f'(x) = 1/x", "f'(x) = 1/x^2"), "ln(x)") == 0.0


def test_advantages_are_relative_to_their_group():
    advantages = group_advantages(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(advantages[0], torch.zeros(4))  # all equal: nothing to learn
    assert advantages[1, 0] > 0 > advantages[1, 1]
    assert abs(float(advantages[1].sum())) < 1e-5
    assert torch.allclose(advantages[1, 1:], advantages[1, 1].expand(3))


def test_the_kl_term_is_zero_for_the_reference_and_positive_otherwise():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    mask = torch.tensor([[True, True, False]])
    _, same = policy_loss(logp, logp.clone(), torch.zeros(1), mask, beta=0.04)
    assert float(same) == 0.0
    other = torch.log(torch.tensor([[0.4, 0.3, 0.1]]))
    loss, kl = policy_loss(logp, other, torch.zeros(1), mask, beta=0.04)
    assert float(kl) > 0 and float(loss) == pytest.approx(0.04 * float(kl))
    masked_only = torch.log(torch.tensor([[0.5, 0.2, 0.1]]))  # differs where masked only
    assert float(policy_loss(logp, masked_only, torch.zeros(1), mask, beta=0.04)[1]) == 0.0


def micro_module(checkpoint, group_size: int = 2, lr: float = 1e-3) -> GroupRelativeTrainer:
    torch.manual_seed(0)
    tokenizer, model = finetune.load_base(
        ModelSettings(pretrained=str(checkpoint), dtype="float32", gradient_checkpointing=False)
    )
    lora = compose_config("reinforce", "model=micro").lora
    model = finetune.add_lora(model, LoraSettings.from_config(lora))
    return GroupRelativeTrainer(
        model,
        tokenizer,
        lambda step: ["x^3"],
        group_size=group_size,
        temperature=1.0,
        beta=0.04,
        lr=lr,
        max_new_tokens=8,
    )


def header_logprob(module, header: str) -> float:
    module.model.eval()  # no dropout: the same number before and after
    with torch.no_grad():
        batch = module.encode(["x^3"], [header, header])
        return float(token_logprobs(module.model, batch)[0].sum())


def test_the_loss_reads_the_model_s_docstring_not_what_decoding_writes_around_it(micro_checkpoint):
    from derivative_animator.data.datamodule import IGNORE_INDEX
    from derivative_animator.data.scenes import docstring_opening

    module = micro_module(micro_checkpoint)
    labels = module.encode(["x^3"], [RIGHT, RIGHT])["labels"][0].tolist()
    opening = module.tokenizer(docstring_opening(parse_function("x^3")), add_special_tokens=False)
    docstring = RIGHT[: RIGHT.index('\n"""\n') + 5]  # what decoding writes after it is not learnt
    header = module.tokenizer(docstring, add_special_tokens=False)["input_ids"]
    learnt = [label for label in labels if label != IGNORE_INDEX]
    assert learnt == header[len(opening["input_ids"]) :] and len(learnt) >= 5
    assert module.tokenizer.decode(learnt).endswith('"""\n')


def test_the_policy_starts_at_the_reference_and_the_kl_grows_as_it_moves(micro_checkpoint):
    module = micro_module(micro_checkpoint)
    _, stats = module.step_loss(["x^3"], [RIGHT, WRONG], torch.tensor([1.0, 0.0]))
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh LoRA changes nothing
    with torch.no_grad():
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    _, moved = module.step_loss(["x^3"], [RIGHT, WRONG], torch.tensor([1.0, 0.0]))
    assert moved["kl"] > 1e-4


def test_one_step_raises_the_rewarded_header_above_the_other(micro_checkpoint):
    module = micro_module(micro_checkpoint)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    before = header_logprob(module, RIGHT), header_logprob(module, WRONG)
    module.model.train()
    loss, _ = module.step_loss(["x^3"], [RIGHT, WRONG], torch.tensor([1.0, 0.0]))
    loss.backward()
    optimizer.step()
    after = header_logprob(module, RIGHT), header_logprob(module, WRONG)
    assert after[0] > before[0]  # the rewarded header is likelier
    # and likelier than the other (they share most tokens: both may rise, the right one more)
    assert after[0] - after[1] > before[0] - before[1]


def test_a_step_samples_its_group_and_logs_reward_pass_rate_and_kl(micro_checkpoint):
    module = micro_module(micro_checkpoint, group_size=3)
    headers = module.sample(["x^3", "sin(x)"])
    assert len(headers) == 6 and module.model.training  # sampling leaves the policy training
    scripted = iter([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # one right header, for x^3
    module.reward = lambda header, function: next(scripted)
    logged = {}
    module.log_dict = lambda values, **kwargs: logged.update(values)
    module.functions = lambda step: ["x^3", "sin(x)"]
    assert torch.isfinite(module.training_step(0, 0))
    assert logged["rl/reward"] == pytest.approx(1 / 6) and logged["rl/pass_rate"] == 0.5
    assert {"rl/kl", "rl/loss", "rl/tokens_per_s"} <= logged.keys()


class RecordSteps(pl.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, *args):
        self.steps.append(trainer.global_step)


def test_an_interrupted_run_resumes_at_its_saved_step(
    tmp_path, micro_checkpoint, micro_data, crash_at_step
):
    import mlflow

    cfg = compose_config(
        "reinforce",
        "model=micro",
        f"reinforce.model={micro_checkpoint}",
        f"data.dir={micro_data}",
        f"run_dir={tmp_path / 'run'}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.artifact_location={tmp_path}/artifacts",
        "logger.log_model=false",
        "reinforce.steps=3",
        "reinforce.functions_per_step=1",
        "reinforce.group_size=2",
        "reinforce.max_new_tokens=8",
        "reinforce.checkpoint_every_n_steps=1",
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        reinforce(cfg, extra_callbacks=[crash_at_step(2)])
    run_dir = tmp_path / "run"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert saved == 1  # the crash came before step 2's checkpoint
    steps = RecordSteps()
    reinforce(compose_config("reinforce", f"resume={run_dir}"), extra_callbacks=[steps])
    assert steps.steps == [1, 2]  # continues at the saved step, none skipped or repeated
    info = json.loads((run_dir / "checkpoint" / "merged" / "run_info.json").read_text())
    assert info["global_step"] == 3
    # it drafts from the scenes its SFT checkpoint drafts from, not from every train record
    assert (run_dir / "checkpoint" / "merged" / DRAFT_CORPUS).read_text() == (
        micro_checkpoint / DRAFT_CORPUS
    ).read_text()
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(
        info["mlflow_run_id"]
    )
    assert run.info.status == "FINISHED" and "rl/reward" in run.data.metrics
    assert run.data.tags["stage"] == "reinforce" and run.info.run_name.startswith("reinforce-lora")
    # what the registry says of it (a version is described whenever the model is registered)
    recipe = tracking.model_tags(run_dir / "checkpoint" / "merged")["recipe"]
    assert recipe.startswith("reinforce lr=") and "steps=3" in recipe and "group_size=2" in recipe


@pytest.mark.parametrize(
    "given, said",
    [
        ([], "reinforce.model is required"),
        (["reinforce.model=no/such/dir"], "is not a model checkpoint"),
    ],
)
def test_the_entry_point_refuses_a_missing_or_invalid_model_in_one_line(given, said):
    done = subprocess.run(
        [sys.executable, "-m", "derivative_animator.reinforce", *given],
        capture_output=True,
        text=True,
        cwd=paths.PROJECT_ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and said in done.stderr
