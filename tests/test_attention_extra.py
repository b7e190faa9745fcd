import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet.attention import attention_weights, causal_average


def loop_average(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for t in range(x.shape[-2]):
        out[..., t, :] = x[..., : t + 1, :].mean(dim=-2)
    return out


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 9), C=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_causal_average_equals_loop_and_masked_softmax(B, T, C, seed):
    x = torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed))
    y = causal_average(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, loop_average(x))
    # the same weights as a masked softmax of equal scores
    wei = attention_weights(torch.zeros(T, 1), torch.zeros(T, 1), 1.0)
    torch.testing.assert_close(y, wei @ x)


def test_causal_average_small_cases():
    x = torch.tensor([[1.0], [3.0], [5.0]])
    assert causal_average(x).flatten().tolist() == [1.0, 2.0, 3.0]  # no batch dimension needed
    one = torch.randn(2, 1, 4)
    assert torch.equal(causal_average(one), one)  # T = 1: the average of one vector is itself
    assert causal_average(torch.randn(2, 3, 4, 5)).shape == (2, 3, 4, 5)  # any leading dims
    with pytest.raises(ValueError, match="T, C"):
        causal_average(torch.randn(5))


def test_causal_average_ignores_the_future():
    x = torch.randn(2, 6, 3)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    torch.testing.assert_close(causal_average(x2)[:, :4], causal_average(x)[:, :4])
