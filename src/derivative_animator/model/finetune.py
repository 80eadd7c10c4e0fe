"""LoRA fine-tuning, top to bottom: load the base, add adapters, train, merge, save.

- `load_base(settings)`: tokenizer + AutoModelForCausalLM from a local dir or the hub (a
  `settings.ModelSettings`), with a clear error when a hub model cannot be fetched;
- `add_lora(model, settings)`: PEFT adapters on every linear projection, or none (a
  `settings.LoraSettings`);
- `LoRAFineTuner`: the LightningModule (AdamW, warm-up + cosine decay; logs train/loss,
  val/loss, val/perplexity, tokens/s of real (non-padding) tokens, lr);
- `save_checkpoint(...)`: merge the adapters into the base (idempotent), save the merged
  model, tokenizer, adapter, prompt format and resolved config: what inference loads.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from derivative_animator import paths
from derivative_animator.data.datamodule import IGNORE_INDEX
from derivative_animator.data.prompt import DEFAULT_FORMAT, PromptFormat
from derivative_animator.model.checkpoint_files import (
    ADAPTER_DIR,
    DRAFT_CORPUS,
    MERGED_DIR,
    RUN_INFO,
    TRAINED_CONFIG,
)
from derivative_animator.model.settings import DTYPES, LoraSettings, ModelSettings


class ModelLoadError(ValueError):
    """The base model cannot be loaded (missing build, no network for a hub id, ...)."""


def _dtype(name: str) -> torch.dtype:
    return {dtype: getattr(torch, dtype) for dtype in DTYPES}[name]


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick look before from_pretrained, whose retries take a minute without network."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def load_base(settings: ModelSettings):
    """(tokenizer, model) for settings.pretrained: a local directory or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(settings.pretrained)
    local = paths.resolve(source)
    if local.is_dir():
        source = str(local)
    elif source.startswith((".", "/", "outputs")):
        raise ModelLoadError(f"model directory {local} not found; build it with `make pretrain`")
    elif not _in_hf_cache(source) and not _hub_reachable():
        raise ModelLoadError(
            f"cannot load model '{source}': it is not in the local Hugging Face cache and the hub "
            "is unreachable. Download it where there is network "
            f"(`huggingface-cli download {source}`), "
            f"copy it here, then pass model.pretrained=/path/to/local/copy"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype(settings.dtype))
    except OSError as err:
        raise ModelLoadError(
            f"cannot load model '{source}': not in the local Hugging Face cache and the hub is "
            f"unreachable ({str(err).splitlines()[0][:120]}). Download it where there is network "
            f"(`huggingface-cli download {source}`) and copy it here, then pass "
            f"model.pretrained=/path/to/local/copy"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return tokenizer, model


def add_lora(model, settings: LoraSettings):
    """Wrap model with LoRA adapters; lora.enabled=false trains every weight instead."""
    if not settings.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    config = LoraConfig(
        r=int(settings.r),
        lora_alpha=float(settings.alpha),
        lora_dropout=float(settings.dropout),
        task_type="CAUSAL_LM",
        target_modules=list(targets) if isinstance(targets, tuple) else targets,
        modules_to_save=list(settings.modules_to_save or []) or None,
    )
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    if (
        checkpointing
        if checkpointing is not None
        else getattr(model, "is_gradient_checkpointing", False)
    ):
        model.enable_input_require_grads()
    return get_peft_model(model, config)


class LoRAFineTuner(pl.LightningModule):
    def __init__(
        self,
        model,
        lr: float,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        fused_optimizer: bool = False,
    ):
        super().__init__()
        self.model = (
            model.train() if hasattr(model, "train") else model
        )  # from_pretrained returns eval mode
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.fused_optimizer = fused_optimizer
        self._step_started: float | None = None
        self.save_hyperparameters(ignore=["model"])

    def forward(self, **batch):
        return self.model(**batch)

    def response_loss(self, batch) -> torch.Tensor:
        """Mean cross-entropy over the labelled (response) tokens, the model's own loss,
        with the output head run only from the first labelled position on: a prompt's
        logits feed no loss, and the head is a large share of a small model's compute."""
        labels = batch.get("labels")
        labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero() if labels is not None else []
        if len(labelled) == 0 or int(labelled[0]) == 0:
            return self.model(**batch).loss
        keep = (
            labels.shape[1] - int(labelled[0]) + 1
        )  # from the position predicting the first label
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs, logits_to_keep=keep).logits[:, :-1]
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels[:, -keep + 1 :].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )

    def _real_tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def on_train_batch_start(self, batch, batch_idx):
        self._step_started = time.perf_counter()

    def training_step(self, batch, batch_idx):
        loss = self.response_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step}: lower optim.lr, "
                "or train in full precision (trainer.precision=32-true)"
            )
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=len(batch["input_ids"]),
        )
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._step_started is not None:
            elapsed = time.perf_counter() - self._step_started
            self.log(
                "train/tokens_per_s", self._real_tokens(batch) / max(elapsed, 1e-9), on_step=True
            )
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)

    def on_validation_epoch_start(self):
        self._val_loss_sum, self._val_tokens = 0.0, 0

    def validation_step(self, batch, batch_idx):
        loss = self.response_loss(batch)
        # Token-weighted mean over the split, not a mean of batch means.
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self._val_loss_sum += float(loss) * tokens
        self._val_tokens += tokens

    def on_validation_epoch_end(self):
        if self._val_tokens:
            loss = self._val_loss_sum / self._val_tokens
            self.log("val/loss", loss, prog_bar=True, sync_dist=True)
            self.log("val/perplexity", math.exp(min(loss, 50)), sync_dist=True)

    def configure_optimizers(self):
        from transformers.optimization import _get_cosine_schedule_with_warmup_lr_lambda as cosine

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # optim.fused: one pass over the weights instead of foreach's chain of ops, the same
        # update up to rounding (~1e-7). Never under mixed precision: Lightning will not clip
        # gradients for an optimizer that unscales them itself (seen on a GPU, bf16-mixed).
        fused = (
            self.fused_optimizer
            and "mixed" not in str(self.trainer.precision)
            and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in trainable)
        )
        optimizer = torch.optim.AdamW(
            trainable, lr=self.lr, weight_decay=self.weight_decay, fused=fused
        )
        total: list[int] = []

        def cosine_with_warmup(step: int) -> float:
            # transformers' cosine schedule, its length asked of Lightning once training runs: asked
            # here, it builds the train loader before a resumed run restores the loader's place in
            # the epoch, and the run would start that epoch over. Step 0 (the scheduler's own
            # first call, here) is the warmup's 0 either way.
            if step == 0 and self.warmup_ratio > 0:
                return 0.0
            if not total:
                total.append(max(1, int(self.trainer.estimated_stepping_batches)))
            return cosine(
                step,
                num_warmup_steps=int(self.warmup_ratio * total[0]),
                num_training_steps=total[0],
                num_cycles=0.5,
            )

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # Checkpoints hold only what trains (the adapters): a 1.3B base is not copied each save.
    def on_save_checkpoint(self, checkpoint):
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }

    def on_load_checkpoint(self, checkpoint):
        checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}


def merge(model):
    """The plain model with adapters folded in. Idempotent: a merged or plain model
    comes back unchanged."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def save_checkpoint(
    model,
    tokenizer,
    out_dir: Path,
    resolved_config: dict,
    run_info: dict,
    prompt_format: PromptFormat = DEFAULT_FORMAT,
    draft_corpus: list[str] | None = None,
) -> Path:
    """Save adapter (if any) and merged model + tokenizer + prompt format + config, and
    the training scenes the inference drafter looks tokens up in."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir / ADAPTER_DIR)
    merged = merge(model)
    merged_dir = out_dir / MERGED_DIR
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    prompt_format.save(merged_dir)
    (merged_dir / TRAINED_CONFIG).write_text(
        json.dumps(resolved_config, indent=2, default=str) + "\n"
    )
    (merged_dir / RUN_INFO).write_text(json.dumps(run_info, indent=2) + "\n")
    if draft_corpus is not None:
        (merged_dir / DRAFT_CORPUS).write_text(json.dumps(draft_corpus))
    return merged_dir


class ValidationMath(pl.Callback):
    """At each validation (not the sanity check): the model writes a greedy math header for
    every validation function, and the project's math check scores its derivative. Logs
    val/math and val/math_level<n> in percent: a loss can fall while the derivatives stay
    wrong, and this is what a sweep should rank runs by."""

    def __init__(self, tokenizer, records, max_new_tokens: int = 200):
        self.tokenizer, self.records, self.max_new_tokens = tokenizer, list(records), max_new_tokens

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking or not self.records:
            return
        for name, value in self.score(module.model).items():
            module.log(name.replace("math", "val/math", 1), value, prog_bar=name == "math")

    def score(self, model) -> dict[str, float]:
        """{"math": percent right, "math_level<n>": ...} of the greedy headers `model` writes
        (with the bracket guard, as evaluation's raw greedy scenes: the same headers)."""
        from derivative_animator.math.judge import header_judge
        from derivative_animator.model.generate import SceneGenerator

        training = model.training
        generator = SceneGenerator(model, self.tokenizer, DEFAULT_FORMAT, None, Path("."))
        right: dict[int, list[bool]] = {}
        for record in self.records:
            judge, verdict = header_judge(record.function), []

            def stop_at_header(header, judge=judge, verdict=verdict):
                verdict.append(judge(header))
                return False  # the header is all this needs

            generator.generate(record.function, self.max_new_tokens, accept_header=stop_at_header)
            right.setdefault(record.level, []).append(bool(verdict and verdict[0]))
        model.train(training)
        every = [ok for oks in right.values() for ok in oks]
        scores = {"math": 100.0 * sum(every) / len(every)}
        scores.update(
            {
                f"math_level{level}": 100.0 * sum(oks) / len(oks)
                for level, oks in sorted(right.items())
            }
        )
        return scores
