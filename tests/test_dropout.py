"""speechbrain_ext.nnet.dropout.Dropout: torch.nn.Dropout's distribution and gradients, drawn faster."""

import pytest
import torch
import torch.nn as nn

from speechbrain_ext.lobes.models.mossformer import MossFormer
from speechbrain_ext.nnet.dropout import Dropout


@pytest.mark.parametrize("inplace", [False, True])
def test_keeps_each_element_with_probability_one_minus_p_and_scales(inplace):
    torch.manual_seed(0)
    p = 0.3
    x = torch.rand(200, 1000) + 0.5
    y = Dropout(p, inplace=inplace).train()(x.clone())
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 200,000 draws: sd 0.001
    torch.testing.assert_close(y[kept], (x / (1 - p))[kept])
    # Masks differ from row to row and from call to call.
    again = Dropout(p).train()(x)
    assert (kept != (again != 0)).float().mean() > 0.3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_rate_is_exact_in_every_precision(dtype):
    """bfloat16 noise would keep 230/256 = 0.898 of the elements at p=0.1, not 0.9."""
    torch.manual_seed(2)
    y = Dropout(0.1).train()(torch.ones(1000, 1000, dtype=dtype))
    assert y.dtype == dtype
    assert abs((y != 0).double().mean().item() - 0.9) < 0.001  # 10^6 draws: sd 0.0003


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    y = Dropout(0.1).train()(x)
    y.backward(torch.ones_like(y))
    expected = (y != 0).float() / 0.9
    torch.testing.assert_close(x.grad, expected)


def test_is_torch_dropout_in_eval_and_at_the_ends():
    x = torch.randn(8, 50)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert isinstance(Dropout(0.1), nn.Dropout)  # same state dict (none), same repr fields
    assert Dropout(0.1).state_dict() == {}


def test_mossformer_draws_its_dropout_masks_with_it():
    model = MossFormer(in_channels=16, out_channels=16, d_model=16, num_blocks=1, group_size=8, query_key_dim=8)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is Dropout for m in dropouts)
