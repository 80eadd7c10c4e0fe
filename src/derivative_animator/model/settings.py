"""How a checkpoint writes scenes: one typed object built from conf/generate (the one home of
its defaults: the fields here have none), and the one seed and temperature policy that
`derivanim generate`, the page and the evaluator all sample by.

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
from dataclasses import dataclass, replace

HEADER_SEED_OFFSET = 1000  # header samples never share a seed with a scene sample


@dataclass(frozen=True)
class Sampling:
    temperature: float
    seed: int


@dataclass(frozen=True)
class SelfConsistencySettings:
    k: int  # math headers sampled in one batch: self-consistency's voters, verification's candidates
    temperature: float
    vote: bool  # the first scene takes the header most samples agree on (derivanim generate --self-consistency)


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float
    sample_temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    bracket_guard: bool
    attempts: int  # verified generation: the first scene, then at most attempts - 1 completed headers
    syntax_rollbacks: int
    repair: bool
    self_consistency: SelfConsistencySettings

    @classmethod
    def from_config(cls, generate: Mapping) -> GenerationSettings:
        """From the composed `generate` group (a DictConfig or a plain mapping); a key missing
        from it or unknown to this class is an error, not a silent default."""
        from omegaconf import DictConfig, OmegaConf

        values = dict(OmegaConf.to_container(generate, resolve=True) if isinstance(generate, DictConfig) else generate)
        return cls(**{**values, "self_consistency": SelfConsistencySettings(**values["self_consistency"])})

    @classmethod
    def defaults(cls) -> GenerationSettings:
        """conf/generate/default.yaml, for the programs that are not Hydra apps (CLI, page)."""
        from derivative_animator import paths

        return cls.from_config(paths.conf_group("generate"))

    def changed(self, **changes) -> GenerationSettings:
        """A copy with some fields changed; `self_consistency` takes a dict of its own changes."""
        if isinstance(changes.get("self_consistency"), Mapping):
            changes["self_consistency"] = replace(self.self_consistency, **changes["self_consistency"])
        return replace(self, **changes)

    # --- the seed and temperature policy -----------------------------------------------

    def scene_sampling(self, index: int = 0) -> Sampling:
        """Scene `index` of a function: 0 the first (greedy by default), later ones the
        evaluator's extra samples for pass@k."""
        return Sampling(self.temperature if index == 0 else self.sample_temperature, self.seed + index)

    def header_sampling(self) -> Sampling:
        """The batch of k math headers (self-consistency's vote, verification's candidates)."""
        return Sampling(self.self_consistency.temperature, self.seed + HEADER_SEED_OFFSET)

    def completion_sampling(self, n: int) -> Sampling:
        """The n-th sampled header (from 1) completed into a scene: written as the first scene is,
        so the body is the model's best under a header the judge accepted."""
        return Sampling(self.temperature, self.seed + n)
