"""Pretraining the base model (`make pretrain`): `build_base(config)` prepares the corpus
(`base_corpus`), pretrains a fresh `base_model.make_model` on it (bf16 autocast where the CPU
has it), seeded, checkpointing every few minutes: an interrupted pretraining continues where
it stopped, with the batches it would have seen (`batch_at`), in the same MLflow run. It saves
model and tokenizer under `output_dir` with `build_info.json`, and publishes them
(`base_publish`) given `publish_dir`.

A finished build is cached: a directory whose `build_info.json` carries the same config
hash is reused as it is.

    python -m derivative_animator.pretrain                 # make pretrain (the entry point)
    python -m derivative_animator.pretrain model=micro     # seconds, for tests
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from derivative_animator import paths
from derivative_animator.model.base_corpus import CORPUS_FILE, held_out_sha256, prepare_corpus
from derivative_animator.model.base_model import (
    BUILD_INFO,
    BaseModelConfig,
    BuildReport,
    make_model,
)
from derivative_animator.model.base_publish import LOCAL_RECORD_KEYS, publish
from derivative_animator.model.copy_circuit import copy_accuracy
from derivative_animator.model.grow import parent_digest

STATE_FILE = "pretraining_state.pt"  # in the staging dir: model, optimizer, step, losses


@contextlib.contextmanager
def sigterm_noted() -> Iterator[dict]:
    """SIGTERM (a session's end, `kill`) only noted, so the loop can finish its step, save
    and mark its MLflow run KILLED; the default action would end the process mid-step."""
    noted = {"sigterm": False}
    if threading.current_thread() is not threading.main_thread():  # handlers live there only
        yield noted
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: noted.update(sigterm=True))
    try:
        yield noted
    finally:  # None: a handler not set from Python, which cannot be put back from here
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def batch_at(tokens: torch.Tensor, config: BaseModelConfig, step: int) -> torch.Tensor:
    """The training batch of a step: seq_len-token windows of the packed corpus, each window
    once per epoch in an order seeded by (seed, epoch). A pure function of the step, so a
    resumed pretraining sees exactly the batches it would have seen."""
    n_windows = (len(tokens) - 1) // config.seq_len
    per_epoch = n_windows // config.batch_size
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(
        n_windows, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    )
    starts = order[index * config.batch_size : (index + 1) * config.batch_size] * config.seq_len
    return torch.stack([tokens[i : i + config.seq_len] for i in starts.tolist()])


def loss_summary(losses: list[float]) -> tuple[float, float]:
    """(mean of the first ten losses, mean of the last ten): one batch alone is noise (a stage
    read 0.34 -> 0.42 whose hundreds of steps all averaged 0.37-0.43)."""
    first, last = losses[:10], losses[-10:]
    return sum(first) / len(first), sum(last) / len(last)


def build_base(
    config: BaseModelConfig, force: bool = False, open_run: Callable | None = None
) -> BuildReport:
    """Pretrain (or continue pretraining) the base model described by `config`; see the module
    doc. `open_run(run id or None) -> (MLflow client, run id)` starts or continues its run
    (`tracking.pretraining_run`, given by the entry point); None: no MLflow."""
    from rich.progress import Progress
    from transformers import get_cosine_schedule_with_warmup

    from derivative_animator.environment import cpu_has_fast_bf16

    out = paths.resolve(config.output_dir)
    info_path = out / BUILD_INFO
    # A build is current for its recipe and for what its corpus left out (splits and benchmarks
    # change).
    held_out = held_out_sha256(config)
    parent = parent_digest(config.grow_from) if config.grow_from else None
    current = {"config_sha256": config.sha256, "held_out_sha256": held_out, "parent_sha256": parent}
    if (
        not force
        and info_path.is_file()
        and {k: json.loads(info_path.read_text()).get(k) for k in current} == current
    ):
        report = BuildReport(output_dir=str(out), cached=True)
        if config.publish_dir:
            publish(out, paths.resolve(config.publish_dir))
        return report

    start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    staging = out.with_name(f".{out.name}-building")
    identity = f"{config.sha256} {held_out}" + (f" {parent}" if parent else "")
    if (
        force
        or not (staging / "config_sha256").is_file()
        or (staging / "config_sha256").read_text() != identity
    ):
        shutil.rmtree(
            staging, ignore_errors=True
        )  # another recipe's (or held-out set's) partial build: start over
        staging.mkdir(parents=True)
        (staging / "config_sha256").write_text(identity)
    report = BuildReport(output_dir=str(out), cached=False)
    tokenizer, tokens = prepare_corpus(config, staging, report)
    if len(tokens) < config.seq_len * config.batch_size + 1:
        raise ValueError(
            "the corpus is too small for one batch; add corpus packages or calculus functions"
        )

    torch.manual_seed(config.seed)
    model = make_model(config, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    state_file, step, run_id, elapsed = staging / STATE_FILE, 0, None, 0.0
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, run_id, elapsed, report.losses = (
            state["step"],
            state["mlflow_run_id"],
            state["train_seconds"],
            state["losses"],
        )
    earlier_seconds = (
        elapsed  # training time of interrupted processes (this one's is counted from `start`)
    )
    client, run_id = open_run(run_id) if open_run else (None, None)
    report.parameters = sum(p.numel() for p in model.parameters())

    def save_state():
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "step": step,
            "mlflow_run_id": run_id,
            "train_seconds": elapsed,
            "losses": report.losses,
        }
        paths.write_atomic(
            state_file, lambda out: torch.save(state, out)
        )  # a kill mid-save keeps the last one

    use_bf16 = cpu_has_fast_bf16() if config.bf16 == "auto" else bool(config.bf16)
    tokens_per_step = config.batch_size * config.seq_len
    try:
        with Progress() as progress, sigterm_noted() as noted:
            task = progress.add_task(
                "pretraining the base model", total=config.steps, completed=step
            )
            while step < config.steps:
                began = time.perf_counter()
                batch = batch_at(tokens, config, step)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    loss = model(input_ids=batch, labels=batch).loss
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"base model loss became {loss.item()} at step {step}; lower model.build.lr"
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                elapsed += time.perf_counter() - began
                report.losses.append(round(loss.item(), 4))
                progress.update(
                    task,
                    completed=step,
                    description=f"pretraining the base model (loss {loss.item():.3f})",
                )
                if client and (step % 10 == 0 or step == config.steps):
                    client.log_metric(
                        run_id,
                        "pretrain/loss",
                        sum(report.losses[-10:]) / len(report.losses[-10:]),
                        step=step,
                    )
                    client.log_metric(run_id, "pretrain/tokens", step * tokens_per_step, step=step)
                if step % config.checkpoint_every == 0 and step < config.steps:
                    save_state()
                if (
                    config.snapshot_every
                    and step % config.snapshot_every == 0
                    and step < config.steps
                ):
                    snapshot = out.with_name(f"{out.name}-snapshots") / f"step-{step}"
                    model.save_pretrained(snapshot)
                    tokenizer.save_pretrained(snapshot)
                if noted["sigterm"] and step < config.steps:  # after the last step: it finishes
                    save_state()  # nothing trained is lost: make pretrain continues from here
                    raise SystemExit(128 + signal.SIGTERM)
    except BaseException:  # make pretrain again continues from the last checkpoint
        if client:
            client.set_terminated(run_id, "KILLED")
        raise
    report.first_loss, report.final_loss = loss_summary(report.losses)
    report.trained_tokens = config.steps * tokens_per_step
    report.tokens_per_second = round(report.trained_tokens / max(elapsed, 1e-9), 1)
    report.copy_accuracy = copy_accuracy(model, tokens, min(config.seq_len, 256))
    report.seconds = round(
        earlier_seconds + time.perf_counter() - start, 1
    )  # this process, and any before it

    final = out.with_name(f".{out.name}-final")
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    info = {
        "config": asdict(config),
        "config_sha256": config.sha256,
        **asdict(report),
        "corpus_tokens": report.corpus_tokens,
        "precision": "bf16-mixed" if use_bf16 else "32-true",
        "threads": torch.get_num_threads(),
        "mlflow_run_id": run_id,
        "parent_sha256": parent,
        "parent": _parent_record(config.grow_from) if config.grow_from else None,
        "code_files": torch.load(staging / CORPUS_FILE)["code_files"],
    }
    (final / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")
    paths.replace_dir(final, out)
    shutil.rmtree(staging, ignore_errors=True)
    if client:
        for key in (
            "final_loss",
            "tokens_per_second",
            "copy_accuracy",
            "trained_tokens",
            "corpus_tokens",
            "calculus_tokens",
            "code_tokens",
            "seconds",
        ):
            client.log_metric(run_id, f"pretrain/{key}", float(getattr(report, key)))
        client.log_artifact(run_id, str(info_path))
        client.set_terminated(run_id, "FINISHED")
    if config.publish_dir:
        publish(out, paths.resolve(config.publish_dir))
    return report


def _parent_record(parent_dir: str | Path) -> dict | None:
    """What the parent's build recorded (its recipe, corpus, tokens, time), for the grown
    build's record and card; None for a parent built elsewhere, without build_info.json."""
    info = paths.resolve(parent_dir) / BUILD_INFO
    if not info.is_file():
        return None
    record = json.loads(info.read_text())
    return {k: v for k, v in record.items() if k not in (*LOCAL_RECORD_KEYS, "sha256")}
