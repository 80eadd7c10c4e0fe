"""The copy circuit: an induction head written into a fresh base model before pretraining
(`install_copy_circuit`), and the measure of how well a model copies from context
(`copy_accuracy`), which fine-tuning needs to move the prompt's function into code."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POSITION_PAIRS = (
    10  # fast-turning rotary pairs that locate earlier positions; the slow rest match content
)


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
                f"{reserved + 32} hidden dimensions; set model.build.copy_circuit=false for "
                "smaller models"
            )
        previous = range(content, content + match)
        before = range(previous.stop, previous.stop + match)
        copied = range(before.stop, before.stop + content)
        return cls(head_dim, match, range(content), previous, before, copied, hidden_size - 1)

    @property
    def reserved(self) -> list[int]:
        return [*self.content, *self.previous, *self.before_previous, *self.copied, self.bias]


def _offset_query(
    inv_freq: torch.Tensor, offset: int, n_positions: int
) -> tuple[list[float], list[float]]:
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
    result = linprog(
        np.ones(2 * n),
        A_ub=np.concatenate([gaps, -gaps], axis=1),
        b_ub=-np.ones(len(others)),
        bounds=[(0, None)] * (2 * n),
        method="highs",
    )
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
    layout = CopyCircuitLayout.for_model(
        config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    )
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
        span = tokens[span_at : span_at + span_len]
        repeat_mask = torch.ones(span_len, dtype=torch.bool)
        repeat_mask[0] = False
        pieces += [span, tokens[gap_at : gap_at + gap_len], span]
        masks += [torch.zeros(span_len + gap_len, dtype=torch.bool), repeat_mask]
        length += 2 * span_len + gap_len
    return torch.cat(pieces)[:seq_len], torch.cat(masks)[:seq_len]


@torch.no_grad()
def copy_accuracy(
    model, tokens: torch.Tensor, seq_len: int, rows: int = 16, seed: int = 1
) -> float:
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
