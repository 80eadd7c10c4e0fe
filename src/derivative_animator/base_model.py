"""The embedded default model: a small Llama-architecture code LM built on this machine.

No model hub is needed. `build_base(config)`:
1. collects real Python source installed here (Manim's and parts of sympy's own code),
   in a fixed order;
2. trains a byte-level BPE tokenizer on it, digits kept apart (a model sees 12 as 1, 2:
   easier to copy and to compute with);
3. pretrains a LlamaForCausalLM on that corpus for a fixed number of steps (bf16
   autocast on CPU), seeded, so the same config gives the same model;
4. saves model and tokenizer with `save_pretrained` under `outputs/base/<name>`, so
   LoRA then fine-tunes it exactly as it would DeepSeek-Coder, through `from_pretrained`.

A build is cached: a directory whose `build_info.json` carries the same config hash is
reused as it is.

    python -m derivative_animator.base_model            # make base
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from derivative_animator import paths

BUILD_INFO = "build_info.json"
BUILD_VERSION = 3  # bump when the code changes what a build produces (it invalidates caches)
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"


@dataclass(frozen=True)
class BaseModelConfig:
    """How to build the embedded model. Validated on construction."""

    output_dir: str = "outputs/base/tiny"
    corpus_packages: tuple[str, ...] = ("manim", "sympy.core", "sympy.functions", "sympy.printing",
                                        "sympy.simplify", "sympy.calculus", "sympy.plotting")
    corpus_max_chars: int = 8_000_000
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 2048
    seq_len: int = 512
    batch_size: int = 16
    copy_circuit: bool = True  # start with a built-in induction head (see install_copy_circuit)
    rope_theta: float = 1e12  # large: most rotary pairs turn slowly enough to match content
    steps: int = 300
    lr: float = 2e-3
    warmup_steps: int = 30
    seed: int = 0
    bf16: bool | str = "auto"  # auto: only where the CPU computes bf16 fast
    threads: int = 0  # 0: torch's default

    def __post_init__(self):
        object.__setattr__(self, "corpus_packages", tuple(self.corpus_packages))
        if self.hidden_size % self.num_heads:
            raise ValueError("model.build.hidden_size must be a multiple of model.build.num_heads")
        if min(self.vocab_size, self.hidden_size, self.num_layers, self.steps, self.seq_len) <= 0:
            raise ValueError("model.build sizes and steps must be positive")
        if self.copy_circuit:
            CopyCircuitLayout.for_model(self.hidden_size, self.num_heads, self.num_layers)
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("model.build.seq_len cannot exceed max_position_embeddings")

    @property
    def sha256(self) -> str:
        content = {k: v for k, v in asdict(self).items() if k not in ("output_dir", "threads")}
        content["build_version"] = BUILD_VERSION
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass
class BuildReport:
    output_dir: str
    cached: bool
    seconds: float = 0.0
    corpus_files: int = 0
    corpus_chars: int = 0
    corpus_tokens: int = 0
    parameters: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    tokens_per_second: float | None = None
    copy_accuracy: float | None = None
    losses: list[float] = field(default_factory=list)


def collect_corpus(packages: tuple[str, ...], max_chars: int) -> list[tuple[str, str]]:
    """(relative path, text) of the packages' .py files in sorted order, tests left out."""
    files: list[tuple[str, str]] = []
    total = 0
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"corpus package {package!r} is not installed; remove it from model.build.corpus_packages")
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
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[A-Za-z_]+| ?[0-9]| ?[^\sA-Za-z_0-9]+|\s+(?!\S)|\s+"),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, model_max_length=1_000_000)


def make_model(config: BaseModelConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,  # untied, like DeepSeek-Coder
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    model = LlamaForCausalLM(model_config)
    if config.copy_circuit:
        install_copy_circuit(model, config.seed)
    return model


POSITION_PAIRS = 10  # fast-turning rotary pairs that locate earlier positions; the slow rest match content


@dataclass(frozen=True)
class CopyCircuitLayout:
    """The residual dimensions the built-in induction head reserves (see install_copy_circuit)."""

    head_dim: int
    match: int  # dimensions compared per token when matching context: the slow rotary pairs
    content: range  # the token itself (embedding)
    previous: range  # the token one back (written by layer 0, head 0)
    before_previous: range  # the token two back (layer 0, head 1)
    copied: range  # the token that followed the same two tokens earlier (layer 1, head 0)
    bias: int  # a constant: position-only queries and keys read it

    @classmethod
    def for_model(cls, hidden_size: int, num_heads: int, num_layers: int) -> CopyCircuitLayout:
        head_dim = hidden_size // num_heads
        match = head_dim // 2 - POSITION_PAIRS
        content = min(64, head_dim)
        reserved = 2 * content + 2 * match + 1
        if num_layers < 2 or num_heads < 2 or match < 8 or hidden_size < reserved + 32:
            raise ValueError(
                "model.build.copy_circuit needs 2+ layers, 2+ heads of 36+ dimensions and room for "
                f"{reserved + 32} hidden dimensions; set model.build.copy_circuit=false for smaller models")
        previous = range(content, content + match)
        before = range(previous.stop, previous.stop + match)
        copied = range(before.stop, before.stop + content)
        return cls(head_dim, match, range(content), previous, before, copied, hidden_size - 1)

    @property
    def reserved(self) -> list[int]:
        return [*self.content, *self.previous, *self.before_previous, *self.copied, self.bias]


def _offset_query(inv_freq: torch.Tensor, offset: int, n_positions: int) -> tuple[list[float], list[float]]:
    """Rotary query components (real, imaginary per fast pair) against a constant key of 1
    whose attention score peaks at `offset` positions back, by a margin of 1 over every other
    distance up to n_positions: the smallest such query (L1), by linear programming."""
    import numpy as np
    from scipy.optimize import linprog

    theta = inv_freq[:POSITION_PAIRS].double().numpy()
    def features(d):
        return np.concatenate([np.cos(np.outer(d, theta)), -np.sin(np.outer(d, theta))], axis=1)

    others = np.array([d for d in range(n_positions) if d != offset])
    gaps = features(others) - features(np.array([offset]))  # score(other) - score(offset) <= -1
    n = 2 * POSITION_PAIRS
    result = linprog(np.ones(2 * n), A_ub=np.concatenate([gaps, -gaps], axis=1), b_ub=-np.ones(len(others)),
                     bounds=[(0, None)] * (2 * n), method="highs")
    if result.status != 0:
        raise RuntimeError(f"no rotary query peaks at offset {offset}: {result.message}")
    query = result.x[:n] - result.x[n:]
    return query[:POSITION_PAIRS].tolist(), query[POSITION_PAIRS:].tolist()


@torch.no_grad()
def install_copy_circuit(model, seed: int = 0) -> None:
    """Write an induction head into a freshly initialised Llama, before pretraining.

    Fine-tuning must copy the prompt's function into code, and a model pretrained for
    minutes cannot learn copying: measured here, header-only fine-tuning copied 1 of 40
    functions after 800 steps, and copy practice in pretraining reached 15% of repeated
    spans. Induction heads emerge only after far more tokens than two cores can afford, so
    the base model starts with one, built from its known two-layer mechanism:

    - each token embeds a random unit identity vector (`content`) and a constant (`bias`);
    - layer 0, heads 0 and 1 attend by position only (queries and keys read the constant;
      rotary phases chosen so the score peaks 1 and 2 tokens back) and copy those tokens'
      identities into `previous` and `before_previous`;
    - layer 1, head 0 matches the current and previous tokens against every position's
      `previous` and `before_previous` (on slow rotary pairs, which barely turn over 2,048
      positions) and copies the identity of the matching position into `copied`;
    - the output head scores each token by its identity against `copied`.

    Every other weight keeps its random initialisation, and pretraining and fine-tuning
    train all of them, the circuit included. Its parts sit in reserved residual dimensions
    that the other layers' outputs start without writing to.
    """
    config = model.config
    layout = CopyCircuitLayout.for_model(config.hidden_size, config.num_attention_heads, config.num_hidden_layers)
    hd, half, n_content = layout.head_dim, layout.head_dim // 2, len(layout.content)
    generator = torch.Generator().manual_seed(seed)
    identity = torch.randn(config.vocab_size, n_content, generator=generator)
    identity /= identity.norm(dim=1, keepdim=True)
    reserved = layout.reserved
    inv_freq = model.model.rotary_emb.inv_freq.float()

    embed = model.model.embed_tokens.weight
    embed[:, reserved] = 0
    # about half the mean square goes to the identity, a quarter to the constant: after
    # RMSNorm both stay near these sizes whatever the other dimensions hold
    embed[:, list(layout.content)] = identity * math.sqrt(config.hidden_size / 2)
    embed[:, layout.bias] = math.sqrt(config.hidden_size / 4)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[reserved] = 0
        layer.mlp.down_proj.weight[reserved] = 0

    def clear_head(attention, head):
        rows = slice(head * hd, (head + 1) * hd)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.weight[rows] = 0
        attention.o_proj.weight[:, rows] = 0
        return head * hd

    first = model.model.layers[0].self_attn
    for head, (offset, target) in enumerate([(1, layout.previous), (2, layout.before_previous)]):
        base = clear_head(first, head)
        real, imaginary = _offset_query(inv_freq, offset, config.max_position_embeddings)
        for pair in range(POSITION_PAIRS):
            first.q_proj.weight[base + pair, layout.bias] = real[pair]
            first.q_proj.weight[base + half + pair, layout.bias] = imaginary[pair]
            first.k_proj.weight[base + pair, layout.bias] = 1.0
        for i, dim in enumerate(target):
            first.v_proj.weight[base + i, layout.content[i]] = 1.0
            first.o_proj.weight[dim, base + i] = 1.0

    second = model.model.layers[1].self_attn
    base = clear_head(second, 0)
    slow = [*range(POSITION_PAIRS, half), *range(half + POSITION_PAIRS, hd)]
    for i in range(layout.match):
        second.q_proj.weight[base + slow[i], layout.content[i]] = 1.0
        second.k_proj.weight[base + slow[i], layout.previous[i]] = 1.0
        second.q_proj.weight[base + slow[layout.match + i], layout.previous[i]] = 1.0
        second.k_proj.weight[base + slow[layout.match + i], layout.before_previous[i]] = 1.0
    for i, dim in enumerate(layout.copied):
        second.v_proj.weight[base + i, layout.content[i]] = 1.0
        second.o_proj.weight[dim, base + i] = 1.0

    model.lm_head.weight[:, reserved] = 0
    model.lm_head.weight[:, list(layout.copied)] = identity


def _batches(tokens: torch.Tensor, config: BaseModelConfig, generator: torch.Generator):
    """Random windows of seq_len tokens from the packed corpus, forever."""
    n_windows = (len(tokens) - 1) // config.seq_len
    while True:
        order = torch.randperm(n_windows, generator=generator)
        for start in range(0, n_windows - config.batch_size + 1, config.batch_size):
            index = order[start:start + config.batch_size] * config.seq_len
            yield torch.stack([tokens[i:i + config.seq_len] for i in index.tolist()])


def _copy_row(tokens: torch.Tensor, seq_len: int, generator: torch.Generator):
    """Code spans each followed by a few tokens of other code and then the span again: the
    test of copying from context that `copy_accuracy` scores.

    Returns the row and a mask of the positions a copier can predict (a repeat after its
    first token).
    """
    pieces, masks, length = [], [], 0
    while length < seq_len:
        span_len = int(torch.randint(6, 40, (1,), generator=generator))
        gap_len = int(torch.randint(2, 30, (1,), generator=generator))
        span_at, gap_at = torch.randint(0, len(tokens) - 64, (2,), generator=generator).tolist()
        span = tokens[span_at:span_at + span_len]
        repeat_mask = torch.ones(span_len, dtype=torch.bool)
        repeat_mask[0] = False
        pieces += [span, tokens[gap_at:gap_at + gap_len], span]
        masks += [torch.zeros(span_len + gap_len, dtype=torch.bool), repeat_mask]
        length += 2 * span_len + gap_len
    return torch.cat(pieces)[:seq_len], torch.cat(masks)[:seq_len]


@torch.no_grad()
def copy_accuracy(model, tokens: torch.Tensor, seq_len: int, rows: int = 16, seed: int = 1) -> float:
    """Share of repeated-span tokens the model predicts exactly (greedy): its skill at
    copying from context, which fine-tuning needs to move the prompt's function into code."""
    generator = torch.Generator().manual_seed(seed)
    batch = [_copy_row(tokens, seq_len, generator) for _ in range(rows)]
    inputs = torch.stack([row for row, _ in batch])
    mask = torch.stack([m for _, m in batch])[:, 1:]
    was_training = model.training
    model.eval()
    predicted = model(input_ids=inputs).logits[:, :-1].argmax(-1)
    model.train(was_training)
    return round(float((predicted == inputs[:, 1:])[mask].float().mean()), 4)


def build_base(config: BaseModelConfig, force: bool = False) -> BuildReport:
    from rich.progress import Progress
    from transformers import get_cosine_schedule_with_warmup

    out = paths.resolve(config.output_dir)
    info_path = out / BUILD_INFO
    if not force and info_path.is_file() and json.loads(info_path.read_text()).get("config_sha256") == config.sha256:
        return BuildReport(output_dir=str(out), cached=True)

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    corpus = collect_corpus(config.corpus_packages, config.corpus_max_chars)
    texts = [text for _, text in corpus]
    tokenizer = train_tokenizer(texts, config.vocab_size)
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    tokens = torch.tensor(ids, dtype=torch.long)
    if len(tokens) < config.seq_len * config.batch_size + 1:
        raise ValueError("the corpus is too small for one batch; add corpus packages")

    model = make_model(config, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    batches = _batches(tokens, config, generator)
    report = BuildReport(output_dir=str(out), cached=False, corpus_files=len(corpus),
                         corpus_chars=sum(map(len, texts)), corpus_tokens=len(tokens),
                         parameters=sum(p.numel() for p in model.parameters()))
    from derivative_animator.environment import cpu_has_fast_bf16

    use_bf16 = cpu_has_fast_bf16() if config.bf16 == "auto" else bool(config.bf16)
    train_start = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("pretraining the base model", total=config.steps)
        for step in range(config.steps):
            batch = next(batches)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(input_ids=batch, labels=batch).loss
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"base model loss became {loss.item()} at step {step}; lower model.build.lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            report.losses.append(round(loss.item(), 4))
            progress.update(task, advance=1, description=f"pretraining the base model (loss {loss.item():.3f})")
    elapsed = time.perf_counter() - train_start
    report.first_loss, report.final_loss = report.losses[0], sum(report.losses[-10:]) / min(10, len(report.losses))
    report.tokens_per_second = round(config.steps * config.batch_size * config.seq_len / elapsed, 1)
    report.copy_accuracy = copy_accuracy(model, tokens, min(config.seq_len, 256))
    report.seconds = round(time.perf_counter() - start, 1)

    staging = out.with_name(f".{out.name}-building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    info = {"config": asdict(config), "config_sha256": config.sha256, **asdict(report),
            "corpus": [name for name, _ in corpus]}
    (staging / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return report


def main(cfg) -> int:
    from omegaconf import OmegaConf
    from rich.console import Console

    config = BaseModelConfig(**OmegaConf.to_container(cfg.model.build, resolve=True))
    report = build_base(config, force=cfg.get("force", False))
    console = Console(stderr=True)
    if report.cached:
        console.print(f"base model up to date: {report.output_dir}")
    else:
        console.print(
            f"built {report.output_dir}: {report.parameters / 1e6:.1f}M parameters, "
            f"{report.corpus_files} files / {report.corpus_tokens} tokens of Python, loss "
            f"{report.first_loss:.2f} -> {report.final_loss:.2f}, copies {report.copy_accuracy:.0%} of "
            f"repeated spans, {report.tokens_per_second:.0f} tokens/s, "
            f"{report.seconds:.0f} s"
        )
    return 0


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "base"))
