"""Growing a pretrained base deeper (block expansion): more layers without starting over.

A base pretrained for hours at one depth becomes the start of a deeper one: each of its layers
is followed by copies of itself whose two output projections (attention's `o_proj`, the MLP's
`down_proj`) start at zero. A zeroed block adds nothing to the residual stream, so the grown
model computes exactly what its parent did (its induction head included) and pretraining
continues from there, the new blocks learning what the old ones could not hold (LLaMA Pro's
block expansion, Wu et al. 2024). `make pretrain ARGS=model=small` grows the shipped tiny base so.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from derivative_animator import paths

_PARENT_WEIGHTS = "model.safetensors"


def parent_digest(parent_dir: str | Path) -> str:
    """sha256 of the parent's weights: a grown build is stale when its parent changes."""
    weights = paths.resolve(parent_dir) / _PARENT_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"model.build.grow_from: {weights} does not exist; build that base first "
            "(make pretrain) or point grow_from at a base model directory"
        )
    with open(weights, "rb") as handle:  # base_publish.file_sha256 would close an import cycle
        return hashlib.file_digest(handle, "sha256").hexdigest()


def grown_model(parent_dir: str | Path, num_layers: int, shape: dict):
    """The parent base (a LlamaForCausalLM directory) with `num_layers` layers, computing what
    the parent computes. `shape`: the recipe's hidden_size, intermediate_size, num_heads and
    rope_theta, which must be the parent's (growing adds depth only)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(paths.resolve(parent_dir), dtype=torch.float32)
    config = model.config
    theirs = {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_heads": config.num_attention_heads,
        "rope_theta": float(config.rope_parameters["rope_theta"]),
    }
    differing = {k: (shape[k], theirs[k]) for k in theirs if float(shape[k]) != float(theirs[k])}
    if differing:
        listed = ", ".join(
            f"{k} {ours} (the parent's: {its})" for k, (ours, its) in differing.items()
        )
        raise ValueError(
            f"model.build must keep the shape of grow_from's base to grow it: {listed}"
        )
    parent_layers = len(model.model.layers)
    # the parent's own depth continues its pretraining unchanged: the control for a deeper base
    if num_layers < parent_layers or num_layers % parent_layers:
        raise ValueError(
            f"model.build.num_layers must be a multiple of the parent's {parent_layers} layers "
            f"(got {num_layers})"
        )
    layers = []
    for layer in model.model.layers:
        layers.append(layer)
        for _ in range(num_layers // parent_layers - 1):
            block = copy.deepcopy(layer)
            with torch.no_grad():
                block.self_attn.o_proj.weight.zero_()
                block.mlp.down_proj.weight.zero_()
            layers.append(block)
    model.model.layers = torch.nn.ModuleList(layers)
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index  # the key-value cache is indexed by it
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * num_layers
    return model
