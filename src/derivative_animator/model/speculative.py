"""Lossless n-gram speculative decoding: the drafters and the acceptance rule.

A drafter proposes the next tokens by looking up the last few tokens in the training scenes
saved with the checkpoint (`NgramDrafter`), or else earlier in the text so far (`ContextLookup`:
the prompt's function, a loop the model repeats), and one forward pass checks the whole draft.
Greedy keeps a drafted token only if it is the model's argmax; sampling keeps it with the
model's probability and otherwise resamples from the rest (speculative sampling,
`accept_draft`), so the output distribution is exactly the model's. Only the number of forward
passes shrinks, which matters on a CPU where a pass costs about the same for 1 token or 16.
"""

from __future__ import annotations

import torch


class NgramDrafter:
    """Proposes continuations seen in the training scenes after the same n tokens."""

    def __init__(self, sequences: list[list[int]], orders: tuple[int, ...] = (8, 4, 2)):
        self.orders = orders
        self.tokens: list[int] = []
        self.index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in orders}
        for sequence in sequences:
            start = len(self.tokens)
            self.tokens.extend(sequence)
            for n in orders:
                table = self.index[n]
                for i in range(start + n, len(self.tokens)):
                    table.setdefault(tuple(self.tokens[i - n : i]), i)

    def propose(self, context: list[int], length: int) -> list[int]:
        for n in self.orders:
            if len(context) >= n:
                position = self.index[n].get(tuple(context[-n:]))
                if position is not None:
                    return self.tokens[position : position + length]
        return []


class ContextLookup:
    """Drafts from the text so far: what followed the same n tokens last time (prompt lookup)."""

    def __init__(self, order: int = 3):
        self.order, self.tokens, self.index = order, [], {}

    def propose(self, context: list[int], length: int) -> list[int]:
        for token in context[len(self.tokens) :]:  # catch up with the context
            self.tokens.append(token)
            if len(self.tokens) > self.order:
                self.index[tuple(self.tokens[-self.order - 1 : -1])] = len(self.tokens) - 1
        position = self.index.get(tuple(self.tokens[-self.order :]))
        return self.tokens[position : position + length] if position is not None else []


def _distribution(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return probs / probs.sum()


def pick(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(_distribution(logits, temperature, top_p), 1, generator=generator))


def accept_draft(logits: torch.Tensor, proposed: int, temperature: float, top_p: float, generator):
    """(keep the drafted token?, token to use instead). Greedy keeps it iff it is the argmax.
    Sampling keeps it with probability p(proposed) (the drafter is deterministic), else
    draws from p with the proposed token removed: exactly the model's distribution."""
    if temperature <= 0:
        best = int(logits.argmax())
        return best == proposed, None
    probs = _distribution(logits, temperature, top_p)
    if float(torch.rand(1, generator=generator)) < float(probs[proposed]):
        return True, None
    probs[proposed] = 0.0
    if float(probs.sum()) <= 0:
        return True, None
    return False, int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
