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


def test_batches_mix_plain_windows_and_copy_rows():
    tokens = torch.arange(100_000) % 3000
    config = BaseModelConfig(seq_len=64, batch_size=8, copy_fraction=0.25)
    batch = next(base_model._batches(tokens, config, torch.Generator().manual_seed(0)))
    assert batch.shape == (8, 64)
    plain = [bool(((row[1:] - row[:-1]) % 3000 == 1).all()) for row in batch]  # consecutive corpus windows
    assert plain == [True] * 6 + [False] * 2


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_copy_fraction_is_validated(fraction):
    with pytest.raises(ValueError, match="copy_fraction"):
        BaseModelConfig(copy_fraction=fraction)
