"""Learning from the checker: group-relative policy optimisation (GRPO-style) of the math header
after supervised fine-tuning (docs/decisions/0015-reinforcement-from-the-judge.md).

Each step: `functions_per_step` generator functions (`dataset.reinforcement_functions`: never a
validation, test or benchmark one), `group_size` headers sampled for each by the generator's own
batch sampler (`SceneGenerator.generate_batch`, headers only, as self-consistency samples them),
each rewarded by the math judge (`reward`), advantages relative to their group, and the loss:
the policy gradient plus `beta` times a per-token KL estimate to the reference, which is the same
model with its adapter off (no second copy).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

from derivative_animator.data.datamodule import IGNORE_INDEX, collate, encode_example
from derivative_animator.data.prompt import DEFAULT_FORMAT, build_prompt
from derivative_animator.data.scenes import docstring_opening
from derivative_animator.math import curriculum
from derivative_animator.math.header import MATH_HEADER_END
from derivative_animator.math.parsing import parse_function
from derivative_animator.model.decoding import (
    HEADER_WRITTEN,
    docstring_written_to,
    header_as_decoding_writes,
)
from derivative_animator.model.finetune import LoRAFineTuner

ADVANTAGE_EPSILON = 1e-4  # a group's std can be ~0 without being equal: no division blow-up


@functools.lru_cache(maxsize=1024)
def decoding_interval(function: str) -> str | None:
    """The interval's values decoding writes after a right f' of `function` (decision 0016:
    found with the f' the model wrote; for a right one, the dataset's interval for f), or None
    where no interval suits f (the header's own values are judged)."""
    from derivative_animator.data.scenes import interval_values

    found = curriculum.analyse(parse_function(function), wider=True)
    return interval_values(found.x_range) if found is not None else None


def reward(header: str, function: str) -> float:
    """1.0 when the header, as inference writes it, has a right f'(x) (the math judge) on a
    plotting interval (`X_MIN, X_MAX`) where f and f' are defined, else 0.0. Inference writes
    the imports and the interval after the docstring (decisions 0014, 0016), so the reward reads
    the sampled header with them rewritten: the model's own interval, which no scene uses, earns
    or costs nothing."""
    from derivative_animator.math.judge import _plotting_interval, header_judge, parse_code

    values = decoding_interval(function)
    if values is not None:
        header = header_as_decoding_writes(header.split(MATH_HEADER_END)[0], lambda _: values)
    if not header_judge(function)(header):
        return 0.0
    return float(_plotting_interval(parse_code(header)) is not None)  # judged: it parses


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(functions, group) rewards -> advantages relative to each function's group: a group
    whose rewards are all equal teaches nothing (zero advantage)."""
    mean, std = rewards.mean(dim=1, keepdim=True), rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + ADVANTAGE_EPSILON)


def token_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(token | tokens before) for every position after the first (labels -100: 0)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    chosen = labels.clamp(min=0).unsqueeze(-1)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, chosen).squeeze(-1)
    return logp * (labels != IGNORE_INDEX)


def policy_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, kl): -advantage x ratio plus beta x the k3 KL estimate, averaged over the generated
    tokens (mask). One update per batch, so the ratio is exp(logp - logp.detach()) = 1 with the
    policy gradient's derivative."""
    mask = mask.float()
    tokens = mask.sum().clamp(min=1)
    ratio = torch.exp(logp - logp.detach())
    gap = ref_logp - logp
    kl = ((torch.exp(gap) - gap - 1) * mask).sum() / tokens  # k3: >= 0, 0 when equal
    gradient = -(advantages.unsqueeze(1) * ratio * mask).sum() / tokens
    return gradient + beta * kl, kl.detach()


class GroupRelativeTrainer(pl.LightningModule):
    """The policy (the SFT model with a fresh LoRA) trained on the judge's reward; the reference
    is the same model with the adapter disabled."""

    def __init__(
        self,
        model,
        tokenizer,
        functions: Callable[[int], list[str]],
        group_size: int,
        temperature: float,
        beta: float,
        lr: float,
        max_new_tokens: int,
    ):
        super().__init__()
        # from_pretrained returns eval mode; sampling switches to eval and back
        self.model, self.tokenizer, self.functions = model.train(), tokenizer, functions
        self.group_size, self.temperature, self.beta = group_size, temperature, beta
        self.lr, self.max_new_tokens = lr, max_new_tokens
        self.reward = reward  # tests script it

    def rows(self, functions: list[str]) -> list[str]:
        """Each function once per header of its group, in function order."""
        return [f for f in functions for _ in range(self.group_size)]

    def sample(self, functions: list[str]) -> list[str]:
        """group_size headers per function, in function order, as inference writes them; a
        finished one gets its end line (`encode` then knows it was finished)."""
        from derivative_animator.model.generate import SceneGenerator

        # as inference writes them: the model's docstring, then decoding's imports and interval
        # (the loss reads only the docstring, `encode`)
        generator = SceneGenerator(self.model, self.tokenizer, DEFAULT_FORMAT, None, Path("."))
        rows = self.rows(functions)
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # Lightning's seeded torch RNG
        samples = generator.generate_batch(
            rows, self.max_new_tokens, self.temperature, seed=seed, headers_only=True
        )
        self.model.train()
        return [s.code + (MATH_HEADER_END if s.stop == HEADER_WRITTEN else "") for s in samples]

    def encode(self, functions: list[str], headers: list[str]) -> dict[str, torch.Tensor]:
        """Prompt + header ids as training encodes them, labels on what the model writes of the
        header at inference: its docstring after the opening (`docstring_opening`, decision
        0016) up to its closing quotes; the imports and interval after them decoding writes
        (decisions 0014, 0016)."""
        rows = self.rows(functions)
        examples = []
        for function, header in zip(rows, headers, strict=True):
            example = encode_example(self.tokenizer, build_prompt(function), header, True)
            if MATH_HEADER_END not in header:  # unfinished: no end-of-text was sampled
                example = {k: v[:-1] for k, v in example.items()}
            start = example["labels"].count(IGNORE_INDEX)  # the prompt's tokens
            opening = docstring_opening(parse_function(function))
            if header.startswith(opening):
                forced = len(self._ids(opening))
                example["labels"][start : start + forced] = [IGNORE_INDEX] * forced
            closed = docstring_written_to(header)
            if closed is not None:  # the docstring's closing line: what follows is written for it
                kept = start + len(self._ids(header[:closed]))
                example["labels"][kept:] = [IGNORE_INDEX] * (len(example["labels"]) - kept)
            examples.append(example)
        pad = self.tokenizer.pad_token_id
        return {k: v.to(self.device) for k, v in collate(examples, pad).items()}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def step_loss(
        self, functions: list[str], headers: list[str], rewards: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one step's sampled headers and their rewards (functions x group)."""
        advantages = group_advantages(rewards.view(len(functions), self.group_size)).flatten()
        batch = self.encode(functions, headers)
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        logp = token_logprobs(self.model, batch)
        with torch.no_grad(), self.model.disable_adapter():
            ref_logp = token_logprobs(self.model, batch)
        loss, kl = policy_loss(logp, ref_logp, advantages.to(logp.device), mask, self.beta)
        return loss, {"kl": float(kl), "tokens": int(mask.sum())}

    def training_step(self, batch, batch_idx):
        started = time.perf_counter()
        functions = self.functions(self.global_step)  # by step: a resumed run draws the same
        headers = self.sample(functions)
        rows = self.rows(functions)
        rewards = torch.tensor([self.reward(h, f) for h, f in zip(headers, rows, strict=True)])
        loss, stats = self.step_loss(functions, headers, rewards)
        by_function = rewards.view(len(functions), self.group_size)
        self.log_dict(
            {
                "rl/reward": float(rewards.mean()),
                "rl/pass_rate": float((by_function.max(dim=1).values > 0).float().mean()),
                "rl/kl": stats["kl"],
                "rl/loss": float(loss.detach()),
                "rl/tokens_per_s": stats["tokens"] / max(time.perf_counter() - started, 1e-9),
            },
            on_step=True,
            prog_bar=True,
            batch_size=len(rows),
        )
        return loss

    def configure_optimizers(self):
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.lr, weight_decay=0.0)

    # Checkpoints hold only what trains (the adapter), as the fine-tuner's do.
    on_save_checkpoint = LoRAFineTuner.on_save_checkpoint
    on_load_checkpoint = LoRAFineTuner.on_load_checkpoint


class Steps(torch.utils.data.Dataset):
    """One item per step (its index): the module draws the step's functions itself."""

    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> int:
        return index
