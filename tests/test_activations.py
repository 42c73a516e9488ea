"""Sigmoid, Tanh and LeakyReLU at the extremes, in float32 and float64, against PyTorch: no overflow
warning, no NaN, the input's dtype kept, and PyTorch's values and gradients (including the zero
gradients where y rounds to 0 or +-1). The layers' ordinary inputs are compared in test_torch_parity.py
and gradient-checked in test_gradcheck.py."""
import warnings

import numpy as np
import pytest

from nanotorch import nn

torch = pytest.importorskip("torch")

EXTREMES = [-1000.0, -100.0, -89.0, -40.0, -17.0, -1e-3, 0.0, 1e-3, 17.0, 40.0, 89.0, 100.0, 1000.0]
TOLERANCES = {np.float32: dict(rtol=2e-6, atol=1e-37), np.float64: dict(rtol=1e-12, atol=1e-300)}


def against_torch(build, x, g):
    """(ours, torch's) outputs and input gradients for x and upstream gradient g, with warnings as errors."""
    layer = build(nn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # an overflow in np.exp is a RuntimeWarning
        y = layer(x)
        dx = layer.backward(g)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = build(torch.nn)(xt)
    yt.backward(torch.from_numpy(g.copy()))
    return (y, dx), (yt.detach().numpy(), xt.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("build", [
    pytest.param(lambda nn: nn.Sigmoid(), id="Sigmoid"),
    pytest.param(lambda nn: nn.Tanh(), id="Tanh"),
    pytest.param(lambda nn: nn.LeakyReLU(0.2), id="LeakyReLU"),
])
def test_extreme_inputs_match_torch_without_overflow(build, dtype):
    x = np.array(EXTREMES, dtype=dtype).reshape(1, -1)
    g = np.random.default_rng(0).uniform(0.5, 2.0, x.shape).astype(dtype)
    (y, dx), (y_t, dx_t) = against_torch(build, x, g)
    assert y.dtype == dx.dtype == dtype
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    np.testing.assert_allclose(y, y_t, **TOLERANCES[dtype], err_msg="output")
    np.testing.assert_allclose(dx, dx_t, **TOLERANCES[dtype], err_msg="input gradient")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_sigmoid_saturates_to_0_and_1_at_plus_minus_100_and_1000(dtype):
    """At +-100: y is 1 and e^-100 (in float32 a subnormal, 3.8e-44, where torch's float32 gives 0), the
    gradient 0 and about e^-100; at +-1000: 0 and 1, gradients 0 (the textbook 1 / (1 + e^-x) overflows
    e^1000, with a warning; e^x / (1 + e^x) gives NaN at +1000)."""
    x = np.array([[-1000.0, -100.0, 100.0, 1000.0]], dtype=dtype)
    (y, dx), (y_t, dx_t) = against_torch(lambda nn: nn.Sigmoid(), x, np.ones_like(x))
    np.testing.assert_array_equal(y[0, [0, 2, 3]], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(dx[0, [0, 2, 3]], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(y[0, 1], np.exp(dtype(-100.0)), rtol=1e-6)
    np.testing.assert_allclose(dx[0, 1], np.exp(dtype(-100.0)), rtol=1e-6)
    np.testing.assert_allclose(y, y_t, **TOLERANCES[dtype])
    np.testing.assert_allclose(dx, dx_t, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_tanh_saturates_to_plus_minus_1_with_zero_gradient(dtype):
    x = np.array([[-100.0, -20.0, 20.0, 100.0]], dtype=dtype)
    (y, dx), (y_t, dx_t) = against_torch(lambda nn: nn.Tanh(), x, np.ones_like(x))
    np.testing.assert_array_equal(y, [[-1.0, -1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_array_equal(dx, dx_t)


@pytest.mark.parametrize("slope", [0.01, np.float64(0.2), np.float32(0.3), 3, -0.7], ids=repr)
def test_leaky_relu_float32_gives_torchs_bits_whatever_the_slopes_type(slope):
    """The slope is taken in the input's dtype, as PyTorch takes it: a NumPy float64 slope would
    otherwise turn a float32 input into a float64 output."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    x[0, 0, :3] = [0.0, -0.0, np.nan]
    g = rng.standard_normal(x.shape).astype(np.float32)
    (y, dx), (y_t, dx_t) = against_torch(lambda nn: nn.LeakyReLU(slope), x, g)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_array_equal(y, y_t)             # (NaN where torch's is NaN)
    np.testing.assert_array_equal(dx, dx_t)           # at 0 and NaN: the slope, as torch's


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("build", [
    pytest.param(lambda nn: nn.Sigmoid(), id="Sigmoid"),
    pytest.param(lambda nn: nn.Tanh(), id="Tanh"),
])
def test_ordinary_inputs_match_torch_in_both_dtypes(build, dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 3, 5, 7)) * 4).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    (y, dx), (y_t, dx_t) = against_torch(build, x, g)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, y_t, **TOLERANCES[dtype])
    np.testing.assert_allclose(dx, dx_t, rtol=TOLERANCES[dtype]["rtol"], atol=10 * np.finfo(dtype).eps)


def test_no_grad_forward_keeps_nothing_and_backward_says_so():
    import nanotorch
    for layer in (nn.Sigmoid(), nn.Tanh(), nn.LeakyReLU(), nn.Identity()):
        with nanotorch.no_grad():
            layer(np.ones((2, 3), np.float32))
        assert layer.cache is None
        with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward called before forward"):
            layer.backward(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("layer, torch_backward, dtype", [
    pytest.param(nn.Sigmoid, "sigmoid_backward", np.float32, id="Sigmoid-float32"),
    pytest.param(nn.Sigmoid, "sigmoid_backward", np.float64, id="Sigmoid-float64"),
    pytest.param(nn.Tanh, "tanh_backward", np.float32, id="Tanh-float32"),
])
def test_backward_from_the_output_is_torchs_bits(layer, torch_backward, dtype):
    """Given the same output y, the gradient is PyTorch's to the bit. Sigmoid's is dout * (1 - y) * y
    (the order of the products matters: dout * y * (1 - y) rounds differently). PyTorch's float32
    tanh_backward rounds 1 - y * y once (a fused multiply-add), which float32's y * y, then 1 - that,
    does not on ~27% of uniform y. Outputs of every size, down to y * y below float32's smallest
    normal. (Tanh in float64 is PyTorch's expression, not its bits: no wider type rounds it once.)"""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-4, 4, 20000), rng.uniform(-1e-3, 1e-3, 2000), [0.0, -0.0, 1e-30, 30.0, -30.0]])
    g = rng.standard_normal(x.size)
    x, g = x.astype(dtype), g.astype(dtype)
    module = layer()
    y = module(x)
    expected = getattr(torch.ops.aten, torch_backward)(torch.from_numpy(g), torch.from_numpy(y)).numpy()
    bits = np.int32 if dtype == np.float32 else np.int64
    np.testing.assert_array_equal(module.backward(g).view(bits), expected.view(bits))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_under_no_grad_is_the_same_function_as_torchs(approximate):
    """Under no_grad GELU takes a forward that keeps nothing; it must still be the GELU asked for
    (the tanh approximation differs from the exact one by up to ~1e-3)."""
    import nanotorch
    x = np.linspace(-4, 4, 81).reshape(3, 27)
    with_grad = nn.GELU(approximate)(x)
    with nanotorch.no_grad():
        without = nn.GELU(approximate)(x)
    np.testing.assert_allclose(without, with_grad, rtol=1e-14, atol=1e-15)
    expected = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
    np.testing.assert_allclose(without, expected, rtol=1e-12, atol=1e-15)
