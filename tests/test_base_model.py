import pytest
import torch

from derivative_animator import base_model
from derivative_animator.base_model import BaseModelConfig


def test_copy_rows_repeat_spans_an_induction_head_can_predict():
    tokens = torch.randint(10, 5000, (20_000,), generator=torch.Generator().manual_seed(0))
    row, mask = base_model._copy_row(tokens, 256, torch.Generator().manual_seed(1))
    assert row.shape == mask.shape == (256,)
    assert 40 < int(mask.sum()) < 128  # about half the row repeats, first tokens of repeats excluded
    for i in mask.nonzero().flatten().tolist():
        # the token before i appeared earlier, followed by the very token at i
        earlier = [j for j in range(1, i - 1) if row[j - 1] == row[i - 1] and row[j] == row[i]]
        assert earlier, f"position {i} is not predictable by copying"


def test_batches_are_corpus_windows():
    tokens = torch.arange(100_000) % 3000
    config = BaseModelConfig(seq_len=64, batch_size=8)
    batch = next(base_model._batches(tokens, config, torch.Generator().manual_seed(0)))
    assert batch.shape == (8, 64)
    assert all(bool(((row[1:] - row[:-1]) % 3000 == 1).all()) for row in batch)  # consecutive tokens


class _Tokenizer:  # what make_model reads from a tokenizer
    def __init__(self, size):
        self.size, self.eos_token_id, self.pad_token_id = size, 0, 1

    def __len__(self):
        return self.size


@pytest.mark.parametrize("circuit", [False, True])
def test_copy_circuit_makes_an_untrained_model_copy(circuit):
    """The built-in induction head copies repeated spans before any training; without it, a
    random model copies nothing. Spans of random tokens, so only copying can predict them."""
    config = BaseModelConfig(num_layers=2, copy_circuit=circuit, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = base_model.make_model(config, _Tokenizer(2048))
    tokens = torch.randint(2, 2048, (50_000,), generator=torch.Generator().manual_seed(0))
    accuracy = base_model.copy_accuracy(model, tokens, seq_len=512, rows=4)
    assert (accuracy > 0.8) if circuit else (accuracy < 0.05)


def test_copy_circuit_attends_one_and_two_tokens_back():
    config = BaseModelConfig(num_layers=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = base_model.make_model(config, _Tokenizer(512))
    inputs = torch.randint(2, 512, (1, 300), generator=torch.Generator().manual_seed(0))
    model.set_attn_implementation("eager")  # sdpa does not return attention weights
    attentions = model(input_ids=inputs, output_attentions=True).attentions[0][0]  # layer 0
    positions = torch.arange(2, 300)
    assert bool((attentions[0, positions].argmax(-1) == positions - 1).all())
    assert bool((attentions[1, positions].argmax(-1) == positions - 2).all())


def test_copy_circuit_refuses_models_too_small_to_host_it():
    with pytest.raises(ValueError, match="copy_circuit=false"):
        BaseModelConfig(hidden_size=32, num_heads=2, num_layers=2)
    BaseModelConfig(hidden_size=32, num_heads=2, num_layers=2, copy_circuit=False)  # fine without
