import pytest
import torch

from babybitnet.attention import CausalSelfAttention, Head, MultiHeadAttention, attention_weights, causal_mask
from babybitnet.bitlinear import BitLinear


def bit_linear(i, o, bias=True, weight_groups=1):
    return BitLinear(i, o, weight_groups=weight_groups)


def test_mask_and_weights():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    w = attention_weights(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), 1.0)
    # equal scores: a uniform average over the past
    assert torch.allclose(w[0], torch.tril(torch.ones(4, 4)) / torch.arange(1, 5)[:, None])


def test_head_is_causal():
    torch.manual_seed(0)
    head = Head(16, 8)
    x = torch.randn(2, 6, 16)
    y = head(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16)  # change the future
    assert torch.allclose(head(x2)[:, :4], y[:, :4])
    assert not torch.allclose(head(x2)[:, 4:], y[:, 4:])


@pytest.mark.parametrize("linear", [None, bit_linear], ids=["fp", "bitnet"])
@pytest.mark.parametrize("T", [1, 7])
def test_fused_attention_equals_separate_heads(linear, T):
    kw = {} if linear is None else {"linear": linear}
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, **kw)
    for p in mha.parameters():
        torch.nn.init.normal_(p, std=0.3)  # distinct scales per head, so per-matrix scales matter
    fused = CausalSelfAttention(32, 4, **kw)
    fused.load_from_heads(mha)
    x = torch.randn(3, T, 32)
    assert torch.allclose(fused(x), mha(x), atol=1e-5)


def test_fused_bitnet_keeps_one_weight_scale_per_original_matrix():
    fused = CausalSelfAttention(32, 4, linear=bit_linear)
    assert fused.qkv.weight_groups == 12  # q, k, v of 4 heads
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(30, 4)
