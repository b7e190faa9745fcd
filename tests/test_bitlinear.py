import pytest
import torch
import torch.nn.functional as F

from babybitnet.bitlinear import BitLinear, bitlinear_forward, int_linear
from babybitnet.quant import activation_quant, weight_quant


def make(in_f=16, out_f=12, **kw):
    torch.manual_seed(0)
    layer = BitLinear(in_f, out_f, **kw)
    torch.nn.init.normal_(layer.weight, std=0.02)
    return layer


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16), (1, 16)])
def test_forward_matches_the_seed_formula(shape):
    layer = make()
    x = torch.randn(shape)
    y = layer(x)
    assert y.shape == shape[:-1] + (12,)
    expected = F.linear(activation_quant(x), weight_quant(layer.weight))
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.allclose(y, bitlinear_forward(x, layer.weight), atol=1e-6)


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("groups", [1, 3])
def test_gradients_equal_the_detach_trick(norm, groups):
    layer = make(norm=norm, weight_groups=groups)
    x = torch.randn(2, 5, 16, requires_grad=True)
    g = torch.randn(2, 5, 12)
    (layer(x) * g).sum().backward()
    gx, gw = x.grad.clone(), layer.weight.grad.clone()

    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    inp = layer.norm(x2) if norm else x2
    (bitlinear_forward(inp, w2, groups) * g).sum().backward()
    assert torch.allclose(gx, x2.grad, atol=1e-6)
    assert torch.allclose(gw, w2.grad, atol=1e-6)


def test_weight_gradient_is_that_of_f_linear_with_quantized_weight():
    # The STE: dL/dW equals dL/dW_q of F.linear(x_q, W_q) with W_q a leaf.
    layer = make()
    x = torch.randn(6, 16)
    g = torch.randn(6, 12)
    (layer(x) * g).sum().backward()
    w_q = weight_quant(layer.weight.detach()).requires_grad_()
    (F.linear(activation_quant(x), w_q) * g).sum().backward()
    assert torch.allclose(layer.weight.grad, w_q.grad, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("norm", [False, True])
def test_inference_path_equals_training_path(groups, norm):
    layer = make(norm=norm, weight_groups=groups)
    x = torch.randn(4, 9, 16) * 3
    train_y = layer(x)
    layer.eval()
    with torch.no_grad():
        eval_y = layer(x)
    assert torch.allclose(train_y, eval_y, rtol=1e-5, atol=1e-5)
    w_t, s_w = layer.quantized_weight()
    assert w_t.dtype == torch.int8 and set(w_t.unique().tolist()) <= {-1, 0, 1}
    assert s_w.shape == (groups,)


def test_int_linear_sums_are_exact_integers():
    torch.manual_seed(1)
    w = torch.randn(32, 256)
    from babybitnet.quant import quantize_activations, ternarize

    w_t, s_w = ternarize(w)
    x = torch.randn(8, 256)
    x_i, s_x = quantize_activations(x)
    exact = x_i.to(torch.int64) @ w_t.to(torch.int64).T  # integer matmul
    y = int_linear(x, w_t.to(torch.int8), s_w)
    assert torch.allclose(y * s_x * s_w, exact.to(torch.float32), atol=1e-2)


def test_wrong_last_dimension_is_a_clear_error():
    layer = make()
    with pytest.raises(ValueError, match="last dimension is 16, got shape \\(3, 15\\)"):
        layer(torch.randn(3, 15))
    with pytest.raises(ValueError, match="weight_groups"):
        BitLinear(4, 6, weight_groups=4)


def test_zero_weights_and_inputs_give_no_nan():
    layer = BitLinear(8, 4)
    torch.nn.init.zeros_(layer.weight)
    x = torch.zeros(2, 8, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(layer.weight.grad).all() and torch.isfinite(x.grad).all()


def test_bias_option():
    layer = make(bias=True)
    with torch.no_grad():
        layer.bias.fill_(0.5)
    x = torch.randn(3, 16)
    assert torch.allclose(layer(x), bitlinear_forward(x, layer.weight) + 0.5, atol=1e-6)
