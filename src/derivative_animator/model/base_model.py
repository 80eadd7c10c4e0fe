"""The embedded default model: a small Llama-architecture code LM the project pretrains itself.

No model hub is needed. This module holds its recipe (`BaseModelConfig`: conf/model/*.yaml
`build:`), what a build reports (`BuildReport`, kept in `build_info.json`) and the model
(`make_model`). `pretrain.build_base(config)` (`make pretrain`) builds it:
1. collects real Python source installed here (Manim's and sympy's own code) and
   synthetic calculus text from the project's differentiator (`calculus_corpus`: worked
   derivatives in the scenes' notation, the validation and test functions left out), and
2. trains a byte-level BPE tokenizer on it, digits kept apart (a model sees 12 as 1, 2:
   easier to copy and to compute with): `base_corpus.py`;
3. pretrains a LlamaForCausalLM on that corpus, starting with an induction head written in
   (`copy_circuit.py`), resumable where it stopped: `pretrain.py`;
4. saves model and tokenizer with `save_pretrained` under `output_dir`, and, given
   `publish_dir`, copies them there with a model card (`base_publish.py`): the shipped base
   under `models/`, which LoRA fine-tunes exactly as it would DeepSeek-Coder, through
   `from_pretrained`.

    python -m derivative_animator.pretrain                       # make pretrain
    python -m derivative_animator.pretrain model=micro           # seconds, for tests
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from derivative_animator.model.copy_circuit import CopyCircuitLayout, install_copy_circuit

BUILD_INFO = "build_info.json"
BUILD_VERSION = 4  # bump when the code changes what a build produces (it invalidates caches)


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
    calculus_draws: (
        int  # random functions drawn for the calculus text (the distinct ones are worked)
    )
    textbook_share: float  # of them, the kinds textbooks ask about (the rest: curriculum levels)
    practice_share: float  # of them, make all's practice kinds (expression trees, combinations)
    long_share: float  # of them, practice kinds of 41 characters and more (calculus_corpus)
    power_share: float  # of them, power practice (textbook_kinds.power_candidate)
    held_out_data: str | None  # a dataset dir whose validation and test functions stay out
    seed: int
    bf16: bool | str  # auto: only where the CPU computes bf16 fast
    threads: int  # 0: torch's default
    checkpoint_every: int  # steps between resumable checkpoints
    # steps between loadable snapshots (<output_dir>-snapshots/step-N), for the compute-quality
    # curve
    snapshot_every: int
    publish_dir: str | None  # where the finished model is shipped, with its card
    # a base model dir to grow deeper (model/grow.py): its tokenizer and weights, its layers
    # repeated to num_layers; None: a fresh model with its own tokenizer
    grow_from: str | None

    def __post_init__(self):
        object.__setattr__(self, "corpus_packages", tuple(self.corpus_packages))
        if self.hidden_size % self.num_heads:
            raise ValueError("model.build.hidden_size must be a multiple of model.build.num_heads")
        if (
            min(
                self.vocab_size,
                self.hidden_size,
                self.num_layers,
                self.steps,
                self.seq_len,
                self.checkpoint_every,
            )
            <= 0
        ):
            raise ValueError("model.build sizes, steps and checkpoint_every must be positive")
        shares = (self.textbook_share, self.practice_share, self.long_share, self.power_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError(
                "model.build.textbook_share, practice_share, long_share and power_share must be "
                "shares: each >= 0, together <= 1"
            )
        if self.calculus_draws and not self.held_out_data:
            raise ValueError(
                "model.build.held_out_data must name the dataset whose validation and test "
                "functions the calculus corpus leaves out"
            )
        if self.grow_from and self.copy_circuit:
            raise ValueError(
                "model.build.copy_circuit must be false with grow_from: the grown base inherits "
                "its parent's induction head"
            )
        if self.copy_circuit:
            CopyCircuitLayout.for_model(self.hidden_size, self.num_heads, self.num_layers)
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("model.build.seq_len cannot exceed max_position_embeddings")

    @property
    def sha256(self) -> str:
        ignored = (
            "output_dir",
            "threads",
            "checkpoint_every",
            "snapshot_every",
            "publish_dir",
            "held_out_data",
        )
        content = {k: v for k, v in asdict(self).items() if k not in ignored}
        # The parent is named by its weights' digest (build_info's parent_sha256), not its path:
        # the same parent weights grown under another directory name is the same recipe.
        if content.pop("grow_from") is not None:
            content["grown"] = True  # recipes from before growing keep their hash
        for share in ("practice_share", "long_share", "power_share"):  # and those before them
            if content[share] == 0:
                del content[share]
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
    held_out_sha256: str = (
        ""  # of the held-out canonical forms (validation, test, benchmarks): what a test checks
    )
    parameters: int = 0
    trained_tokens: int = 0
    first_loss: float | None = None  # the mean of the stage's first ten steps
    final_loss: float | None = None  # and of its last ten
    tokens_per_second: float | None = None
    copy_accuracy: float | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def corpus_tokens(self) -> int:
        return self.code_tokens + self.calculus_tokens


def recipe_stages(model: dict) -> list[BaseModelConfig]:
    """The builds that make a model config's base, in order: `model.build` last, before it the
    stage its `grow_from` names, and so on back to a fresh model or a base built elsewhere.
    Stages come from `model.earlier_stages` (name -> keys that override `build`'s), matched by
    `output_dir`. `model`: the resolved `model` group."""
    build = model["build"]
    earlier = {
        stage["output_dir"]: {**build, **stage}
        for stage in (model.get("earlier_stages") or {}).values()
    }
    chain = [build]
    while chain[0]["grow_from"] in earlier:
        chain.insert(0, earlier.pop(chain[0]["grow_from"]))
    if chain[0]["grow_from"] in {stage["output_dir"] for stage in chain}:
        raise ValueError(
            f"model.earlier_stages grow from each other in a loop at {chain[0]['grow_from']!r}: "
            "the first stage's grow_from must be null or a base built elsewhere"
        )
    return [BaseModelConfig(**stage) for stage in chain]


def make_model(config: BaseModelConfig, tokenizer):
    """The model pretraining starts from: fresh (with the copy circuit written in), or the
    `grow_from` base grown to `num_layers` (model/grow.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if config.grow_from:
        from derivative_animator.model.grow import grown_model

        shape = {
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_heads": config.num_heads,
            "rope_theta": config.rope_theta,
        }
        return grown_model(config.grow_from, config.num_layers, shape)

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,  # untied, like DeepSeek-Coder
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    model = LlamaForCausalLM(model_config)
    if config.copy_circuit:
        install_copy_circuit(model, config.seed)
    return model
