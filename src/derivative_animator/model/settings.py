"""The model layer's settings, each one typed object built from its composed config group (the
one home of their defaults: the fields here have none), validated on construction:

- `GenerationSettings` (conf/generate): how a checkpoint writes scenes, and the one seed and
  temperature policy that `derivanim generate`, the page and the evaluator all sample by;
- `ModelSettings` (conf/model): the base model a run starts from (`finetune.load_base`);
- `LoraSettings` (conf/lora): the adapters it trains (`finetune.add_lora`);
- `ApiSettings` (eval.api): a model behind an OpenAI-compatible endpoint (`hosted.connect`).

    settings = GenerationSettings.from_config(cfg.generate)     # a Hydra entry point
    settings = GenerationSettings.defaults()                    # the CLI, the page

The policy: the first scene at `temperature` (greedy) with `seed`; the k math headers that
self-consistency votes with and verification completes, in one batch at
`self_consistency.temperature` with `seed + HEADER_SEED_OFFSET`; the n-th sampled header
completed at `temperature` with `seed + n`; the evaluator's extra pass@k sample i at
`sample_temperature` with `seed + i`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

HEADER_SEED_OFFSET = 1000  # header samples never share a seed with a scene sample
DTYPES = ("float32", "bfloat16", "float16")  # model.dtype: the weights' (finetune.load_base)


def plain(group: Mapping) -> dict:
    """A composed config group (a DictConfig, resolved) or a plain mapping, as a dict."""
    from omegaconf import DictConfig, OmegaConf

    return dict(
        OmegaConf.to_container(group, resolve=True) if isinstance(group, DictConfig) else group
    )


# Manim's qualities a user's video may have (`generate.video_quality`), by the height they render at
VIDEO_QUALITIES = {"l": "480p", "m": "720p", "h": "1080p"}


def _refuse_out_of_range(*rules: tuple[bool, str]) -> None:
    """The first rule broken, as one line naming the setting, its range and the value given."""
    for ok, message in rules:
        if not ok:
            raise ValueError(message)


@dataclass(frozen=True)
class Sampling:
    temperature: float
    seed: int


@dataclass(frozen=True)
class SelfConsistencySettings:
    # math headers sampled in one batch: self-consistency's voters, verification's candidates
    k: int
    temperature: float
    # the first scene takes the header most samples agree on (derivanim generate
    # --self-consistency)
    vote: bool

    def __post_init__(self):
        _refuse_out_of_range(
            (self.k >= 1, f"generate.self_consistency.k must be 1 or more, got {self.k}"),
            (
                self.temperature > 0,
                "generate.self_consistency.temperature must be above 0 (its headers are "
                f"sampled), got {self.temperature}",
            ),
        )


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float
    sample_temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    bracket_guard: bool
    shared_code: bool
    copy_function: bool
    choose_interval: bool
    attempts: (
        int  # verified generation: the first scene, then at most attempts - 1 completed headers
    )
    syntax_rollbacks: int
    repair: bool
    video_quality: str
    self_consistency: SelfConsistencySettings

    def __post_init__(self):
        _refuse_out_of_range(
            (
                self.temperature >= 0,
                f"generate.temperature must be 0 (greedy) or more, got {self.temperature}",
            ),
            (
                self.sample_temperature >= 0,
                f"generate.sample_temperature must be 0 or more, got {self.sample_temperature}",
            ),
            (0 < self.top_p <= 1, f"generate.top_p must be in (0, 1], got {self.top_p}"),
            (
                self.max_new_tokens >= 1,
                f"generate.max_new_tokens must be 1 or more, got {self.max_new_tokens}",
            ),
            (self.attempts >= 1, f"generate.attempts must be 1 or more, got {self.attempts}"),
            (
                self.syntax_rollbacks >= 0,
                f"generate.syntax_rollbacks must be 0 or more, got {self.syntax_rollbacks}",
            ),
            (
                self.video_quality in VIDEO_QUALITIES,
                "generate.video_quality must be "
                + ", ".join(f"{q} ({size})" for q, size in VIDEO_QUALITIES.items())
                + f", got {self.video_quality!r}",
            ),
        )

    @classmethod
    def from_config(cls, generate: Mapping) -> GenerationSettings:
        """From the composed `generate` group (a DictConfig or a plain mapping); a key missing
        from it or unknown to this class is an error, not a silent default."""
        values = plain(generate)
        return cls(
            **{**values, "self_consistency": SelfConsistencySettings(**values["self_consistency"])}
        )

    @classmethod
    def defaults(cls) -> GenerationSettings:
        """conf/generate/default.yaml, for the programs that are not Hydra apps (CLI, page)."""
        from derivative_animator import paths

        return cls.from_config(paths.conf_group("generate"))

    def changed(self, **changes) -> GenerationSettings:
        """A copy with some fields changed; `self_consistency` takes a dict of its own changes."""
        if isinstance(changes.get("self_consistency"), Mapping):
            changes["self_consistency"] = replace(
                self.self_consistency, **changes["self_consistency"]
            )
        return replace(self, **changes)

    # --- the seed and temperature policy -----------------------------------------------

    def scene_sampling(self, index: int = 0) -> Sampling:
        """Scene `index` of a function: 0 the first (greedy by default), later ones the
        evaluator's extra samples for pass@k."""
        return Sampling(
            self.temperature if index == 0 else self.sample_temperature, self.seed + index
        )

    def header_sampling(self) -> Sampling:
        """The batch of k math headers (self-consistency's vote, verification's candidates)."""
        return Sampling(self.self_consistency.temperature, self.seed + HEADER_SEED_OFFSET)

    def completion_sampling(self, n: int) -> Sampling:
        """The n-th sampled header (from 1) completed into a scene: written as the first scene is,
        so the body is the model's best under a header the judge accepted."""
        return Sampling(self.temperature, self.seed + n)


@dataclass(frozen=True)
class ModelSettings:
    """The base model a run starts from: its weights (a local directory or a hub id), their dtype,
    and whether training recomputes activations to save memory. conf/model's other keys belong
    elsewhere: lr and the batch sizes to `optim` (train.yaml interpolates them), `build` to the
    recipe (base_model.BaseModelConfig), `name` and `max_length` to the entry point."""

    pretrained: str
    dtype: str
    gradient_checkpointing: bool

    def __post_init__(self):
        if not self.pretrained:
            raise ValueError("model.pretrained must name a model directory or a hub id")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @classmethod
    def from_config(cls, model: Mapping) -> ModelSettings:
        """From the composed `model` group, or a checkpoint's saved copy of it
        (derivanim_config.json): its own keys, each required; the group's others are left to
        their readers."""
        values = plain(model)
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise ValueError(
                f"model settings lack {', '.join(f'model.{name}' for name in missing)}"
            )
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class LoraSettings:
    """The adapters a run trains (conf/lora); `enabled: false` trains every weight instead."""

    enabled: bool
    r: int
    alpha: float
    dropout: float
    target_modules: str | tuple[str, ...] | None  # all-linear, or module names
    modules_to_save: tuple[str, ...] | None  # modules trained in full beside the adapters

    def __post_init__(self):
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))
        if self.enabled and (self.r <= 0 or self.alpha <= 0 or not 0 <= self.dropout < 1):
            raise ValueError("lora.r and lora.alpha must be positive and lora.dropout in [0, 1)")

    @classmethod
    def from_config(cls, lora: Mapping) -> LoraSettings:
        """From the composed `lora` group; a key missing from it or unknown here is an error."""
        return cls(**plain(lora))


@dataclass(frozen=True)
class ApiSettings:
    """A model behind an OpenAI-compatible endpoint (eval.api). No base_url or model: the `api`
    baseline is skipped, saying so (`hosted.connect`)."""

    base_url: str | None
    model: str | None
    api_key_env: str | None  # the environment variable holding the key (a local server needs none)
    timeout_s: float
    max_retries: int
    concurrency: int  # requests in flight

    def __post_init__(self):
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1:
            raise ValueError("eval.api: timeout_s > 0, max_retries >= 0, concurrency >= 1")

    @classmethod
    def from_config(cls, api: Mapping) -> ApiSettings:
        """From the composed `eval.api` group; a key missing from it or unknown here is an error."""
        return cls(**plain(api))
