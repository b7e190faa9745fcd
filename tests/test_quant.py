import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet.quant import (
    absmean_scale,
    activation_quant,
    quantize_activations,
    round_ste,
    ste,
    ternarize,
    weight_quant,
)


def test_ternarize_hand_computed():
    w = torch.tensor([[0.2, -0.6, 0.0], [1.0, -0.1, 0.3]])
    # mean |w| = 2.2 / 6 = 0.3667, s_w = 2.7273; w * s_w = [[0.55, -1.64, 0], [2.73, -0.27, 0.82]]
    w_t, s = ternarize(w)
    assert w_t.tolist() == [[1.0, -1.0, 0.0], [1.0, 0.0, 1.0]]
    assert s.item() == pytest.approx(6 / 2.2)
    assert torch.allclose(weight_quant(w), w_t / s)


def test_activation_quant_hand_computed():
    x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -2.0]])
    x_i, s = quantize_activations(x)
    assert s.squeeze(-1).tolist() == [127.0, 63.5]
    assert x_i.tolist() == [[127.0, -64.0, 32.0], [0.0, 127.0, -127.0]]  # -63.5 rounds to even: -64
    assert torch.allclose(activation_quant(x), x_i / s)


def test_literal_formula_with_clamp_agrees():
    # The paper's formula clamps to [-128, 127]; we skip the clamp because it can never bite.
    x = torch.randn(64, 48) * torch.logspace(-6, 3, 64)[:, None]
    s = 127 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    literal = (x * s).round().clamp(-128, 127) / s
    assert torch.equal(activation_quant(x), literal)
    x_i, _ = quantize_activations(x)
    assert x_i.abs().max() <= 127


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_activations_stay_within_127(dtype):
    # s_x rounded to bf16 (8 bits) can push x * s_x to 128; low-precision dtypes are clamped to [-127, 127]
    x = torch.randn(20000, 256, generator=torch.Generator().manual_seed(0)).to(dtype)
    s = 127 / x.abs().amax(-1, keepdim=True)
    assert (x * s).round().abs().max() > 127  # the case exists: without the clamp this test is about something
    x_i, _ = quantize_activations(x)
    assert x_i.dtype == dtype and x_i.abs().max() == 127


@pytest.mark.parametrize("value", [0.0, 1e-9, 3.0, -2.5])
def test_zero_and_constant_tensors_have_no_nan(value):
    w = torch.full((4, 6), value)
    w_t, s = ternarize(w)
    assert torch.isfinite(s).all() and torch.isfinite(weight_quant(w)).all()
    if abs(value) > 1e-5:
        assert (w_t == torch.sign(torch.tensor(value))).all()  # a constant matrix is all +-1
    x = torch.full((3, 5), value)
    assert torch.isfinite(activation_quant(x)).all()


def test_single_token_and_batched_shapes():
    for shape in [(5,), (1, 5), (2, 3, 5)]:
        x = torch.randn(shape)
        x_i, s = quantize_activations(x)
        assert x_i.shape == x.shape and s.shape == shape[:-1] + (1,)


def test_grouped_scales_equal_separate_matrices():
    parts = [torch.randn(4, 8) * k for k in (0.1, 1.0, 10.0)]
    fused = weight_quant(torch.cat(parts), groups=3)
    assert torch.allclose(fused, torch.cat([weight_quant(p) for p in parts]))
    assert absmean_scale(torch.cat(parts), groups=3).shape == (3, 1, 1)
    with pytest.raises(ValueError, match="equal groups"):
        absmean_scale(torch.randn(5, 2), groups=2)
    with pytest.raises(ValueError, match="weight matrix"):
        absmean_scale(torch.randn(5))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.floats(1e-3, 1e3), st.integers(0, 2**16))
def test_properties(rows, cols, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * scale
    w_t, s = ternarize(w)
    assert set(w_t.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert w_t.dtype == w.dtype
    x = torch.randn(rows, cols, generator=g) * scale
    x_q = activation_quant(x)
    # per token, the error is at most half a quantization step
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((x_q - x).abs() <= step / 2 + 1e-6 * scale).all()


def test_ste_value_and_gradient():
    x = torch.tensor([0.3, 1.7, -2.2], requires_grad=True)
    y = ste(x, x.round())
    assert y.tolist() == [0.0, 2.0, -2.0]
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]  # identity gradient
    x2 = x.detach().clone().requires_grad_()
    z = round_ste(x2)
    assert torch.equal(z, y.detach())
    (z * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x2.grad, x.grad)
    # plain round has a zero gradient: the reason the STE exists
    x3 = x.detach().clone().requires_grad_()
    x3.round().sum().backward()
    assert (x3.grad == 0).all()


def test_ternary_quant_at_the_absmean_step_is_weight_quant():
    from babybitnet.quant import ternary_quant

    w = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ternary_quant(w, w.abs().mean()), weight_quant(w), atol=1e-6)
    amax = w.abs().max()
    q = ternary_quant(w, amax)
    assert set((q / amax).unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (q == 0).float().mean() > 0.9  # absmax: nearly everything rounds to zero
    assert ternary_quant(torch.tensor([0.5, 1.5, -0.5, 3.0]), 1.0).tolist() == [0.0, 1.0, -0.0, 1.0]  # half to even


def test_binarize_is_two_valued_and_mean_centred():
    from babybitnet.quant import binarize

    w = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean 3: centred [-2, -1, 0, 3], mean |.| = 1.5
    assert binarize(w).tolist() == [[-1.5, -1.5], [-1.5, 1.5]]  # 0 goes to -1
    assert torch.equal(binarize(torch.zeros(3, 4)), torch.zeros(3, 4))
    x = torch.randn(8, 8, dtype=torch.float64)
    assert binarize(x).dtype == torch.float64 and binarize(x).abs().unique().numel() == 1


def test_check_weight_groups_gives_rows_per_group_and_refuses_scales_that_do_not_fit():
    from babybitnet.quant import check_weight_groups, row_scales

    assert check_weight_groups(torch.ones(3), 12) == 4
    assert check_weight_groups(torch.ones(1), 5) == 5  # one scale per tensor, the paper's
    assert check_weight_groups(torch.tensor(2.0), 6) == 6  # a 0-d scale is one group
    for bad in (torch.ones(5), torch.ones(0), torch.ones(2, 3)):  # 5 does not divide 12; empty; not (groups,)
        with pytest.raises(ValueError, match=rf"groups dividing N=12, got shape \({bad.shape[0]}"):
            check_weight_groups(bad, 12)
        with pytest.raises(ValueError, match="groups dividing N=12"):  # row_scales checks the same way
            row_scales(bad, 12)
