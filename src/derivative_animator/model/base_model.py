"""The embedded default model: a small Llama-architecture code LM the project pretrains itself.

No model hub is needed. `build_base(config)` (`make pretrain`):
1. collects real Python source installed here (Manim's and sympy's own code) and
   synthetic calculus text from the project's differentiator (`calculus_corpus`: worked
   derivatives in the scenes' notation, the validation and test functions left out);
2. trains a byte-level BPE tokenizer on it, digits kept apart (a model sees 12 as 1, 2:
   easier to copy and to compute with);
3. pretrains a LlamaForCausalLM on that corpus (bf16 autocast where the CPU has it),
   seeded, checkpointing every few minutes: an interrupted pretraining continues where it
   stopped, with the batches it would have seen (`batch_at`), in the same MLflow run;
4. saves model and tokenizer with `save_pretrained` under `output_dir`, and, given
   `publish_dir`, copies them there with a model card (recipe, corpus, tokens, time,
   sha256): the shipped base under `models/`, which LoRA fine-tunes exactly as it would
   DeepSeek-Coder, through `from_pretrained`.

A finished build is cached: a directory whose `build_info.json` carries the same config
hash is reused as it is.

    python -m derivative_animator.model.base_model                 # make pretrain
    python -m derivative_animator.model.base_model model=micro     # seconds, for tests
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from derivative_animator import paths

BUILD_INFO = "build_info.json"
BUILD_VERSION = 4  # bump when the code changes what a build produces (it invalidates caches)
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"


@dataclass(frozen=True)
class BaseModelConfig:
    """How to build the embedded model: the recipe. conf/model/*.yaml `build:` holds every value
    (no defaults here). Validated on construction."""

    output_dir: str
    corpus_packages: tuple[str, ...]
    corpus_max_chars: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    copy_circuit: bool  # start with a built-in induction head (see install_copy_circuit)
    rope_theta: float
    calculus_draws: int  # random functions drawn for the calculus text (the distinct ones are worked)
    textbook_share: float  # of them, the kinds textbooks ask about (the rest: curriculum levels)
    held_out_data: str | None  # a dataset dir whose validation and test functions stay out
    seed: int
    bf16: bool | str  # auto: only where the CPU computes bf16 fast
    threads: int  # 0: torch's default
    checkpoint_every: int  # steps between resumable checkpoints
    snapshot_every: int  # steps between loadable snapshots (<output_dir>-snapshots/step-N), for the compute-quality curve
    publish_dir: str | None  # where the finished model is shipped, with its card

    def __post_init__(self):
        object.__setattr__(self, "corpus_packages", tuple(self.corpus_packages))
        if self.hidden_size % self.num_heads:
            raise ValueError("model.build.hidden_size must be a multiple of model.build.num_heads")
        if min(self.vocab_size, self.hidden_size, self.num_layers, self.steps, self.seq_len, self.checkpoint_every) <= 0:
            raise ValueError("model.build sizes, steps and checkpoint_every must be positive")
        if self.calculus_draws and not self.held_out_data:
            raise ValueError("model.build.held_out_data must name the dataset whose validation and test "
                             "functions the calculus corpus leaves out")
        if self.copy_circuit:
            CopyCircuitLayout.for_model(self.hidden_size, self.num_heads, self.num_layers)
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("model.build.seq_len cannot exceed max_position_embeddings")

    @property
    def sha256(self) -> str:
        ignored = ("output_dir", "threads", "checkpoint_every", "snapshot_every", "publish_dir", "held_out_data")
        content = {k: v for k, v in asdict(self).items() if k not in ignored}
        content["build_version"] = BUILD_VERSION
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass
class BuildReport:
    output_dir: str
    cached: bool
    seconds: float = 0.0
    corpus_files: int = 0
    corpus_chars: int = 0
    code_tokens: int = 0
    calculus_functions: int = 0
    calculus_documents: int = 0
    calculus_tokens: int = 0
    held_out_functions: int = 0
    held_out_sha256: str = ""  # of the held-out canonical forms (validation, test, benchmarks): what a test checks
    parameters: int = 0
    trained_tokens: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    tokens_per_second: float | None = None
    copy_accuracy: float | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def corpus_tokens(self) -> int:
        return self.code_tokens + self.calculus_tokens


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


def batch_at(tokens: torch.Tensor, config: BaseModelConfig, step: int) -> torch.Tensor:
    """The training batch of a step: seq_len-token windows of the packed corpus, each window
    once per epoch in an order seeded by (seed, epoch). A pure function of the step, so a
    resumed pretraining sees exactly the batches it would have seen."""
    n_windows = (len(tokens) - 1) // config.seq_len
    per_epoch = n_windows // config.batch_size
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
    starts = order[index * config.batch_size:(index + 1) * config.batch_size] * config.seq_len
    return torch.stack([tokens[i:i + config.seq_len] for i in starts.tolist()])


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


STATE_FILE = "pretraining_state.pt"  # in the staging dir: model, optimizer, step, losses


def _prepare_corpus(config: BaseModelConfig, staging: Path, report: BuildReport):
    """(tokenizer, packed token ids): built once, then read back from the staging dir, so a
    resumed pretraining trains on the very same tokens."""
    from transformers import PreTrainedTokenizerFast

    from derivative_animator.data import benchmarks, calculus_corpus

    corpus_file = staging / "corpus.pt"
    if corpus_file.is_file():
        saved = torch.load(corpus_file)
        for key, value in saved["report"].items():
            setattr(report, key, value)
        return PreTrainedTokenizerFast.from_pretrained(staging / "tokenizer"), saved["tokens"]

    from rich.progress import Progress

    code = collect_corpus(config.corpus_packages, config.corpus_max_chars)
    held_out = calculus_corpus.held_out_keys(paths.resolve(config.held_out_data)) if config.calculus_draws else set()
    with Progress() as progress:
        task = progress.add_task("writing worked derivatives", total=config.calculus_draws)
        calculus = calculus_corpus.documents(config.calculus_draws, config.seed, held_out,
                                             config.textbook_share, progress=lambda: progress.advance(task))
    code_texts = [text for _, text in code]
    tokenizer = train_tokenizer(code_texts + calculus, config.vocab_size)
    # One stream: code files and calculus documents in a seeded order, each ended by EOS.
    code_ids = tokenizer(code_texts, add_special_tokens=False)["input_ids"]
    calculus_ids = tokenizer(calculus, add_special_tokens=False)["input_ids"] if calculus else []
    documents = code_ids + calculus_ids
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(config.seed)).tolist()
    stream: list[int] = []
    for i in order:
        stream.extend(documents[i])
        stream.append(tokenizer.eos_token_id)
    tokens = torch.tensor(stream, dtype=torch.long)
    report.corpus_files, report.corpus_chars = len(code), sum(map(len, code_texts)) + sum(map(len, calculus))
    report.code_tokens = sum(map(len, code_ids))
    report.calculus_documents, report.calculus_tokens = len(calculus), sum(map(len, calculus_ids))
    report.calculus_functions = sum(doc.count("\nf(x) = ") for doc in calculus)
    report.held_out_functions = len(held_out)
    report.held_out_sha256 = benchmarks.keys_sha256(held_out)
    tokenizer.save_pretrained(staging / "tokenizer")
    torch.save({"tokens": tokens, "report": {k: getattr(report, k) for k in (
        "corpus_files", "corpus_chars", "code_tokens", "calculus_functions", "calculus_documents", "calculus_tokens",
        "held_out_functions", "held_out_sha256")},
        "code_files": [name for name, _ in code]}, corpus_file)
    return tokenizer, tokens


def _mlflow_run(config: BaseModelConfig, logger_cfg, run_id: str | None):
    """(client, run id) of this pretraining's MLflow run (continued on resume), or (None, None)."""
    if logger_cfg is None:
        return None, None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=logger_cfg.tracking_uri)
    if run_id is None:
        name = logger_cfg.experiment_name
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            name, artifact_location=logger_cfg.artifact_location)
        run = client.create_run(experiment_id, run_name=f"pretrain-{Path(config.output_dir).name}",
                                tags={"stage": "pretrain"})
        run_id = run.info.run_id
        for key, value in asdict(config).items():
            client.log_param(run_id, f"build/{key}", str(value)[:500])
    else:
        client.update_run(run_id, status="RUNNING")
    return client, run_id


def held_out_sha256(config: BaseModelConfig) -> str:
    """The digest of the canonical forms the build's calculus corpus leaves out."""
    from derivative_animator.data import benchmarks, calculus_corpus

    held_out = calculus_corpus.held_out_keys(paths.resolve(config.held_out_data)) if config.calculus_draws else set()
    return benchmarks.keys_sha256(held_out)


def build_base(config: BaseModelConfig, force: bool = False, logger_cfg=None) -> BuildReport:
    """Pretrain (or continue pretraining) the base model described by `config`; see the module doc."""
    from rich.progress import Progress
    from transformers import get_cosine_schedule_with_warmup

    from derivative_animator.environment import cpu_has_fast_bf16

    out = paths.resolve(config.output_dir)
    info_path = out / BUILD_INFO
    # A build is current for its recipe and for what its corpus left out (splits and benchmarks change).
    held_out = held_out_sha256(config)
    if not force and info_path.is_file() and {k: json.loads(info_path.read_text()).get(k) for k in (
            "config_sha256", "held_out_sha256")} == {"config_sha256": config.sha256, "held_out_sha256": held_out}:
        report = BuildReport(output_dir=str(out), cached=True)
        if config.publish_dir:
            publish(out, paths.resolve(config.publish_dir))
        return report

    start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    staging = out.with_name(f".{out.name}-building")
    identity = f"{config.sha256} {held_out}"
    if force or not (staging / "config_sha256").is_file() or (staging / "config_sha256").read_text() != identity:
        shutil.rmtree(staging, ignore_errors=True)  # another recipe's (or held-out set's) partial build: start over
        staging.mkdir(parents=True)
        (staging / "config_sha256").write_text(identity)
    report = BuildReport(output_dir=str(out), cached=False)
    tokenizer, tokens = _prepare_corpus(config, staging, report)
    if len(tokens) < config.seq_len * config.batch_size + 1:
        raise ValueError("the corpus is too small for one batch; add corpus packages or calculus functions")

    torch.manual_seed(config.seed)
    model = make_model(config, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    state_file, step, run_id, elapsed = staging / STATE_FILE, 0, None, 0.0
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, run_id, elapsed, report.losses = state["step"], state["mlflow_run_id"], state["train_seconds"], state["losses"]
    earlier_seconds = elapsed  # training time of interrupted processes (this one's is counted from `start`)
    client, run_id = _mlflow_run(config, logger_cfg, run_id)
    report.parameters = sum(p.numel() for p in model.parameters())

    def save_state():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "step": step, "mlflow_run_id": run_id, "train_seconds": elapsed, "losses": report.losses}
        paths.write_atomic(state_file, lambda out: torch.save(state, out))  # a kill mid-save keeps the last one

    use_bf16 = cpu_has_fast_bf16() if config.bf16 == "auto" else bool(config.bf16)
    tokens_per_step = config.batch_size * config.seq_len
    try:
        with Progress() as progress:
            task = progress.add_task("pretraining the base model", total=config.steps, completed=step)
            while step < config.steps:
                began = time.perf_counter()
                batch = batch_at(tokens, config, step)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    loss = model(input_ids=batch, labels=batch).loss
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"base model loss became {loss.item()} at step {step}; lower model.build.lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                elapsed += time.perf_counter() - began
                report.losses.append(round(loss.item(), 4))
                progress.update(task, completed=step, description=f"pretraining the base model (loss {loss.item():.3f})")
                if client and (step % 10 == 0 or step == config.steps):
                    client.log_metric(run_id, "pretrain/loss", sum(report.losses[-10:]) / len(report.losses[-10:]), step=step)
                    client.log_metric(run_id, "pretrain/tokens", step * tokens_per_step, step=step)
                if step % config.checkpoint_every == 0 and step < config.steps:
                    save_state()
                if config.snapshot_every and step % config.snapshot_every == 0 and step < config.steps:
                    snapshot = out.with_name(f"{out.name}-snapshots") / f"step-{step}"
                    model.save_pretrained(snapshot)
                    tokenizer.save_pretrained(snapshot)
    except BaseException:  # make pretrain again continues from the last checkpoint
        if client:
            client.set_terminated(run_id, "KILLED")
        raise
    report.first_loss, report.final_loss = report.losses[0], sum(report.losses[-10:]) / min(10, len(report.losses))
    report.trained_tokens = config.steps * tokens_per_step
    report.tokens_per_second = round(report.trained_tokens / max(elapsed, 1e-9), 1)
    report.copy_accuracy = copy_accuracy(model, tokens, min(config.seq_len, 256))
    report.seconds = round(earlier_seconds + time.perf_counter() - start, 1)  # this process, and any before it

    final = out.with_name(f".{out.name}-final")
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    info = {"config": asdict(config), "config_sha256": config.sha256, **asdict(report),
            "corpus_tokens": report.corpus_tokens, "precision": "bf16-mixed" if use_bf16 else "32-true",
            "threads": torch.get_num_threads(), "mlflow_run_id": run_id,
            "code_files": torch.load(staging / "corpus.pt")["code_files"]}
    (final / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")
    paths.replace_dir(final, out)
    shutil.rmtree(staging, ignore_errors=True)
    if client:
        for key in ("final_loss", "tokens_per_second", "copy_accuracy", "trained_tokens", "corpus_tokens",
                    "calculus_tokens", "code_tokens", "seconds"):
            client.log_metric(run_id, f"pretrain/{key}", float(getattr(report, key)))
        client.log_artifact(run_id, str(info_path))
        client.set_terminated(run_id, "FINISHED")
    if config.publish_dir:
        publish(out, paths.resolve(config.publish_dir))
    return report


SHIPPED_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
CARD = "README.md"


_CARD_FILE_ROW = re.compile(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", re.MULTILINE)


def card_files(card: str) -> dict[str, str]:
    """The files a card lists, with their sha256 (its Files table)."""
    return dict(_CARD_FILE_ROW.findall(card))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    shipped_info = {k: v for k, v in info.items() if k not in ("losses", "code_files", "output_dir", "cached")}
    shipped_info["sha256"] = {name: file_sha256(staging / name) for name in sorted(p.name for p in staging.iterdir())}
    (staging / BUILD_INFO).write_text(json.dumps(shipped_info, indent=1) + "\n")
    # The card lists every other file of the folder, build_info.json included.
    card_files = {**shipped_info["sha256"], BUILD_INFO: file_sha256(staging / BUILD_INFO)}
    (staging / CARD).write_text(model_card(shipped_info, publish_dir.name, dict(sorted(card_files.items()))))
    paths.replace_dir(staging, publish_dir)
    return publish_dir


def model_card(info: dict, name: str, files: dict[str, str]) -> str:
    """The card's text; `files`: every file of the folder but the card, with its sha256."""
    c = info["config"]
    hours = info["seconds"] / 3600
    sha_lines = "\n".join(f"| `{file}` | `{digest}` |" for file, digest in files.items())
    return f"""# {name}

The embedded base model of DerivativeAnimator: a {info['parameters'] / 1e6:.1f}M-parameter Llama-architecture
causal LM pretrained by this project on Python source and on worked derivatives, so that
LoRA fine-tuning (`make all`) starts from a model that already knows code and calculus.
Load it like any hub model: `AutoModelForCausalLM.from_pretrained("models/{name}")`.

## Recipe
`make pretrain` rebuilds it from `conf/model/tiny.yaml` (`build:`), deterministic given
seed and threads; the config hash of this build is `{info['config_sha256'][:16]}`.

| | |
|---|---|
| shape | {c['num_layers']} layers, hidden {c['hidden_size']}, MLP {c['intermediate_size']}, {c['num_heads']} heads, vocab {c['vocab_size']} (byte-level BPE, digits split), rope_theta {c['rope_theta']:g} |
| copy circuit | {'an induction head written into the fresh model before pretraining' if c['copy_circuit'] else 'none'} |
| steps | {c['steps']} of {c['batch_size']} x {c['seq_len']} tokens = {info['trained_tokens']:,} tokens; AdamW lr {c['lr']}, cosine, {c['warmup_steps']} warm-up steps |
| precision | {info['precision']} on {info['threads']} CPU threads, {info['tokens_per_second']:,.0f} tokens/s |
| time | {hours:.2f} h |
| final loss | {info['final_loss']:.3f}; copies {info['copy_accuracy']:.0%} of repeated code spans |

## Corpus ({info['corpus_tokens']:,} tokens)
- Python source installed on the building machine: {', '.join(c['corpus_packages'])}
  ({info['corpus_files']} files, {info['code_tokens']:,} tokens);
- synthetic calculus text from the project's differentiator (`calculus_corpus.py`):
  {info['calculus_functions']:,} distinct functions of {c['calculus_draws']:,} drawn ({c['textbook_share']:.0%} of the kinds
  textbooks ask about, the rest from the four curriculum levels), {info['calculus_documents']:,} documents,
  {info['calculus_tokens']:,} tokens: math headers and rule-by-rule steps in the scenes' notation.
  The {info['held_out_functions']} held-out functions (the default dataset's validation and test functions and
  every benchmark's, `data/benchmarks.py`) are never worked in it.

## Files
| file | sha256 |
|---|---|
{sha_lines}
"""


def main(cfg) -> int:
    from omegaconf import OmegaConf
    from rich.console import Console

    config = BaseModelConfig(**OmegaConf.to_container(cfg.model.build, resolve=True))
    report = build_base(config, force=cfg.get("force", False), logger_cfg=cfg.get("logger"))
    console = Console(stderr=True)
    if report.cached:
        console.print(f"base model up to date: {report.output_dir}")
    else:
        console.print(
            f"built {report.output_dir}: {report.parameters / 1e6:.1f}M parameters, "
            f"{report.corpus_tokens:,} corpus tokens ({report.calculus_tokens:,} calculus), {report.trained_tokens:,} trained, "
            f"loss {report.first_loss:.2f} -> {report.final_loss:.2f}, copies {report.copy_accuracy:.0%} of "
            f"repeated spans, {report.tokens_per_second:.0f} tokens/s, {report.seconds:.0f} s"
        )
    if config.publish_dir:
        console.print(f"published to {paths.resolve(config.publish_dir)}")
    return 0


if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "base"))
