"""Shipping a finished base: `publish` copies a build's files to where it is shipped
(`models/derivanim-tiny`) with a model card giving its recipe, corpus, tokens, time and each
file's sha256 (`model_card`; tests check the shipped files against it with `card_files`)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from derivative_animator import paths
from derivative_animator.model.base_model import BUILD_INFO

# What a build record keeps for the machine that built it only: not shipped, not a child's.
LOCAL_RECORD_KEYS = ("losses", "code_files", "output_dir", "cached")

SHIPPED_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
CARD = "README.md"


_CARD_FILE_ROW = re.compile(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", re.MULTILINE)


def card_files(card: str) -> dict[str, str]:
    """The files a card lists, with their sha256 (its Files table)."""
    return dict(_CARD_FILE_ROW.findall(card))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def publish(build_dir: Path, publish_dir: Path) -> Path:
    """Copy a finished build to where it is shipped, with a model card giving its recipe,
    corpus, tokens, time and the weights' sha256 (tests check the shipped weights against it)."""
    info = json.loads((build_dir / BUILD_INFO).read_text())
    staging = publish_dir.with_name(f".{publish_dir.name}-publishing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SHIPPED_FILES:
        if (build_dir / name).is_file():
            shutil.copy2(build_dir / name, staging / name)
    shipped_info = {k: v for k, v in info.items() if k not in LOCAL_RECORD_KEYS}
    shipped_info["sha256"] = {
        name: file_sha256(staging / name) for name in sorted(p.name for p in staging.iterdir())
    }
    (staging / BUILD_INFO).write_text(json.dumps(shipped_info, indent=1) + "\n")
    # The card lists every other file of the folder, build_info.json included.
    card_files = {**shipped_info["sha256"], BUILD_INFO: file_sha256(staging / BUILD_INFO)}
    (staging / CARD).write_text(
        model_card(shipped_info, publish_dir.name, dict(sorted(card_files.items())))
    )
    paths.replace_dir(staging, publish_dir)
    return publish_dir


def model_card(info: dict, name: str, files: dict[str, str]) -> str:
    """The card's text; `files`: every file of the folder but the card, with its sha256. A base
    grown from a parent (`info["parent"]`) lists each stage, the parent's first."""
    stages = recorded_stages(info)
    c = info["config"]
    first = stages[0]["config"]
    hours = sum(stage["seconds"] for stage in stages) / 3600
    sha_lines = "\n".join(f"| `{file}` | `{digest}` |" for file, digest in files.items())
    if len(stages) == 1:
        recipe = "`make pretrain` rebuilds it from `conf/model/tiny.yaml` (`build:`)"
    else:
        recipe = (
            f"`make pretrain` rebuilds it from `conf/model/tiny.yaml` in {len(stages)} stages,\n"
            "the first from a fresh model, each later one continuing the one before:\n"
            "`earlier_stages:` in order, then `build:`"
        )
    stage_rows = "\n".join(_stage_row(i + 1, stage) for i, stage in enumerate(stages))
    corpora = "\n".join(_corpus_lines(i + 1, stage, len(stages)) for i, stage in enumerate(stages))
    return f"""# {name}

The embedded base model of DerivativeAnimator: a {info["parameters"] / 1e6:.1f}M-parameter Llama-architecture
causal LM pretrained by this project on Python source and on worked derivatives, so that
LoRA fine-tuning (`make all`) starts from a model that already knows code and calculus.
Load it like any hub model: `AutoModelForCausalLM.from_pretrained("models/{name}")`.

## Recipe
{recipe}. Deterministic given seed and threads; the config hash of this build is
`{info["config_sha256"][:16]}`.

| | |
|---|---|
| shape | {c["num_layers"]} layers, hidden {c["hidden_size"]}, MLP {c["intermediate_size"]}, {c["num_heads"]} heads, vocab {c["vocab_size"]} (byte-level BPE, digits split), rope_theta {c["rope_theta"]:g} |
| copy circuit | {"an induction head written into the fresh model before pretraining" if first["copy_circuit"] else "none"} |
{stage_rows}
| time | {hours:.2f} h of wall time (a build paused, or sharing its cores, counts those hours) |
| final loss | {info["final_loss"]:.3f}; copies {info["copy_accuracy"]:.0%} of repeated code spans |

## Corpus
{corpora}

The {info["held_out_functions"]} held-out functions (the default dataset's validation and test functions and
every benchmark's, `data/benchmarks.py`) are never worked in it{"" if len(stages) == 1 else ", in any stage"}.

## Files
| file | sha256 |
|---|---|
{sha_lines}
"""  # noqa: E501


def recorded_stages(info: dict) -> list[dict]:
    """A build record's stages, the first first: the builds it grew from (`parent`), then it."""
    parent = info.get("parent")
    return [*recorded_stages(parent), info] if parent else [info]


def _stage_row(number: int, stage: dict) -> str:
    c = stage["config"]
    grown = f" (continuing stage {number - 1})" if c.get("grow_from") else ""
    return (
        f"| stage {number}{grown} | {c['steps']} steps of {c['batch_size']} x {c['seq_len']} "
        f"tokens = {stage['trained_tokens']:,} tokens; AdamW lr {c['lr']}, cosine, "
        f"{c['warmup_steps']} warm-up steps; {stage['precision']} on {stage['threads']} CPU "
        f"threads, {stage['tokens_per_second']:,.0f} tokens/s, "
        f"{stage['seconds'] / 3600:.2f} h wall |"
    )


def _corpus_lines(number: int, stage: dict, stages: int) -> str:
    c = stage["config"]
    share = c.get("practice_share", 0)  # builds from before practice in the corpus lack it
    practice = f" {share:.0%} from make all's practice generators," if share else ""
    if c.get("long_share"):  # builds from before long practice lack it
        practice += f" {c['long_share']:.0%} from them at 41 characters and more,"
    if c.get("power_share"):  # and before power practice
        practice += f" {c['power_share']:.0%} from power practice,"
    heading = f"- stage {number}, " if stages > 1 else "- "
    return f"""{heading}{stage["corpus_tokens"]:,} tokens (seed {c["seed"]}): Python source installed on the building machine,
  {", ".join(c["corpus_packages"])} ({stage["corpus_files"]} files, {stage["code_tokens"]:,} tokens),
  and synthetic calculus text from the project's differentiator (`calculus_corpus.py`):
  {stage["calculus_functions"]:,} distinct functions of {c["calculus_draws"]:,} drawn ({c["textbook_share"]:.0%} of the kinds
  textbooks ask about,{practice} the rest from the four curriculum levels), {stage["calculus_documents"]:,} documents,
  {stage["calculus_tokens"]:,} tokens: math headers and rule-by-rule steps in the scenes' notation."""  # noqa: E501
