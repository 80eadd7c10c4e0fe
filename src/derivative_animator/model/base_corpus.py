"""The base model's pretraining corpus, built once per build and kept in its staging dir:
Python source installed here (`collect_corpus`), worked derivatives from the project's
differentiator (`data.calculus_corpus`, the held-out functions left out), the byte-level BPE
tokenizer trained on both (`train_tokenizer`), and the one packed token stream pretraining
reads (`prepare_corpus`)."""

from __future__ import annotations

import importlib.util
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from derivative_animator import paths
from derivative_animator.model.base_model import BaseModelConfig, BuildReport

EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"
CORPUS_FILE = (
    "corpus.pt"  # in the staging dir: the packed tokens, the corpus's counts, its code files
)


def collect_corpus(packages: tuple[str, ...], max_chars: int) -> list[tuple[str, str]]:
    """(relative path, text) of the packages' .py files in sorted order, tests left out."""
    files: list[tuple[str, str]] = []
    total = 0
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f"corpus package {package!r} is not installed; remove it from "
                "model.build.corpus_packages"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.parts or "test_" in path.name:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if total + len(text) > max_chars:
                return files
            files.append((f"{package}/{path.relative_to(root)}", text))
            total += len(text)
    return files


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE on the corpus; digits split one by one."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Code-aware pieces: identifiers keep their underscores (font_size, f_expr), every
    # digit stands alone (with its leading space), punctuation runs, whitespace runs.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r" ?[A-Za-z_]+| ?[0-9]| ?[^\sA-Za-z_0-9]+|\s+(?!\S)|\s+"), behavior="isolated"
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1_000_000,
    )


def held_out_sha256(config: BaseModelConfig) -> str:
    """The digest of the canonical forms the build's calculus corpus leaves out."""
    from derivative_animator.data import benchmarks, calculus_corpus

    held_out = (
        calculus_corpus.held_out_keys(paths.resolve(config.held_out_data))
        if config.calculus_draws
        else set()
    )
    return benchmarks.keys_sha256(held_out)


def prepare_corpus(config: BaseModelConfig, staging: Path, report: BuildReport):
    """(tokenizer, packed token ids): built once, then read back from the staging dir, so a
    resumed pretraining trains on the very same tokens. Built in a child process, so the process
    that pretrains holds none of the build's millions of Python objects (one stage pretrained
    1.6x slower in the process that built its corpus than resumed in a fresh one:
    docs/experiments.md, 2026-12-07 evening)."""
    from transformers import PreTrainedTokenizerFast

    corpus_file = staging / CORPUS_FILE
    if not corpus_file.is_file():
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn) as child:
            child.submit(write_corpus, config, staging).result()
    saved = torch.load(corpus_file)
    for key, value in saved["report"].items():
        setattr(report, key, value)
    return PreTrainedTokenizerFast.from_pretrained(staging / "tokenizer"), saved["tokens"]


def write_corpus(config: BaseModelConfig, staging: Path) -> None:
    """Build the corpus (code and calculus text), train or inherit the tokenizer, and save both
    with the packed token stream and its counts in the staging dir."""
    from rich.progress import Progress
    from transformers import PreTrainedTokenizerFast

    from derivative_animator.data import benchmarks, calculus_corpus

    report = BuildReport(output_dir=str(staging), cached=False)  # the counts corpus.pt keeps
    corpus_file = staging / CORPUS_FILE

    code = collect_corpus(config.corpus_packages, config.corpus_max_chars)
    held_out = (
        calculus_corpus.held_out_keys(paths.resolve(config.held_out_data))
        if config.calculus_draws
        else set()
    )
    with Progress() as progress:
        task = progress.add_task("writing worked derivatives", total=config.calculus_draws)
        calculus = calculus_corpus.documents(
            config.calculus_draws,
            config.seed,
            held_out,
            config.textbook_share,
            config.practice_share,
            progress=lambda: progress.advance(task),
            long_share=config.long_share,
            power_share=config.power_share,
        )
    code_texts = [text for _, text in code]
    if config.grow_from:  # a grown base keeps its parent's tokens
        tokenizer = PreTrainedTokenizerFast.from_pretrained(paths.resolve(config.grow_from))
    else:
        tokenizer = train_tokenizer(code_texts + calculus, config.vocab_size)
    # One stream: code files and calculus documents in a seeded order, each ended by EOS.
    code_ids = tokenizer(code_texts, add_special_tokens=False)["input_ids"]
    calculus_ids = tokenizer(calculus, add_special_tokens=False)["input_ids"] if calculus else []
    documents = code_ids + calculus_ids
    order = torch.randperm(
        len(documents), generator=torch.Generator().manual_seed(config.seed)
    ).tolist()
    stream: list[int] = []
    for i in order:
        stream.extend(documents[i])
        stream.append(tokenizer.eos_token_id)
    tokens = torch.tensor(stream, dtype=torch.long)
    report.corpus_files, report.corpus_chars = (
        len(code),
        sum(map(len, code_texts)) + sum(map(len, calculus)),
    )
    report.code_tokens = sum(map(len, code_ids))
    report.calculus_documents, report.calculus_tokens = len(calculus), sum(map(len, calculus_ids))
    report.calculus_functions = sum(doc.count("\nf(x) = ") for doc in calculus)
    report.held_out_functions = len(held_out)
    report.held_out_sha256 = benchmarks.keys_sha256(held_out)
    tokenizer.save_pretrained(staging / "tokenizer")
    saved = {
        "tokens": tokens,
        "report": {
            k: getattr(report, k)
            for k in (
                "corpus_files",
                "corpus_chars",
                "code_tokens",
                "calculus_functions",
                "calculus_documents",
                "calculus_tokens",
                "held_out_functions",
                "held_out_sha256",
            )
        },
        "code_files": [name for name, _ in code],
    }
    paths.write_atomic(corpus_file, lambda out: torch.save(saved, out))  # no half-written corpus
