"""nn.Linear's two paths: compiled loops for small layers, BLAS for large ones."""
import re

import numpy as np
import pytest

import nanotorch as nt
import nanotorch.nn.linear as L
from nanotorch import nn


def force_blas(monkeypatch):
    """Every Linear takes the BLAS path: no layer is below the threshold, and the kernels would fail."""
    def kernel_called(*args):
        raise AssertionError("the compiled Linear kernels ran, not BLAS")
    monkeypatch.setattr(L, "SMALL_LINEAR", 0)
    monkeypatch.setattr(L, "linear_forward", kernel_called)
    monkeypatch.setattr(L, "linear_backward", kernel_called)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_small_linear_kernels_and_blas_agree(monkeypatch, bias, dtype):
    """nn.Linear runs compiled loops below SMALL_LINEAR multiply-adds and BLAS above: the same numbers."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((4, 28)).astype(dtype), rng.standard_normal((4, 56)).astype(dtype)
    assert x.size * 56 < L.SMALL_LINEAR                                    # the kernels first
    check_kernels_and_blas_agree(monkeypatch, x, dy, bias, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 28), (1, 2, 2, 28), (2, 0, 28)])
def test_small_linear_kernels_and_blas_agree_on_leading_axes(monkeypatch, shape, dtype):
    """(N, *, in_features): the same numbers on both paths, output (N, *, out_features)."""
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape[:-1] + (56,)).astype(dtype)
    check_kernels_and_blas_agree(monkeypatch, x, dy, True, dtype)


def check_kernels_and_blas_agree(monkeypatch, x, dy, bias, dtype):
    results = []
    for blas in (False, True):
        if blas:
            force_blas(monkeypatch)
        nt.manual_seed(0)
        layer = nn.Linear(28, 56, bias=bias).to(dtype)
        y = layer(x)
        assert y.shape == dy.shape
        dx = layer.backward(dy)
        assert dx.shape == x.shape
        results.append([y, dx] + [p.grad for p in layer.parameters()])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, want in zip(*results):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("in_features, out_features, bias, n", [(7, 5, True, (3,)), (5, 3, False, (1,)),
                                                                (4, 3, True, (2, 3)), (3, 2, False, (2, 1, 2))])
def test_blas_linear_gradcheck(monkeypatch, in_features, out_features, bias, n, mode):
    """(N, in) and (N, *, in) inputs: dW and db sum over every leading axis."""
    force_blas(monkeypatch)
    nt.manual_seed(1)
    layer = nn.Linear(in_features, out_features, bias=bias).double()
    layer.train(mode == "train")
    result = nt.gradcheck(layer, np.random.default_rng(2).standard_normal(n + (in_features,)))
    assert result.max_error < 1e-6, str(result)
    assert set(result.errors) == {"input", "weight"} | ({"bias"} if bias else set())


@pytest.mark.parametrize("blas", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(4,), (2, 3)])
def test_two_backwards_add_up_their_gradients(monkeypatch, bias, blas, lead):
    """Two forward/backward pairs without zero_grad: each parameter's grad is the sum of both (float64),
    each summed over every leading axis of a (N, *, in_features) input."""
    if blas:
        force_blas(monkeypatch)
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((2,) + lead + (6,))
    dy1, dy2 = rng.standard_normal((2,) + lead + (5,))
    layer = nn.Linear(6, 5, bias=bias).double()
    for x, dy in ((x1, dy1), (x2, dy2)):
        layer(x)
        layer.backward(dy)
    want_w = dy1.reshape(-1, 5).T @ x1.reshape(-1, 6) + dy2.reshape(-1, 5).T @ x2.reshape(-1, 6)
    np.testing.assert_allclose(layer.weight.grad, want_w, rtol=1e-12, atol=1e-12)
    if bias:
        want_b = dy1.reshape(-1, 5).sum(axis=0) + dy2.reshape(-1, 5).sum(axis=0)
        np.testing.assert_allclose(layer.bias.grad, want_b, rtol=1e-12, atol=1e-12)


def test_linear_on_a_non_contiguous_3d_input(rng):
    """A transposed (N, *, in) view: the same as its contiguous copy, forward and backward."""
    layer = nn.Linear(4, 3).double()
    x = rng.standard_normal((4, 5, 2)).transpose(2, 1, 0)         # (2, 5, 4), not contiguous
    dy = rng.standard_normal((2, 5, 3))
    y, dx = layer(x), layer.backward(dy)
    np.testing.assert_array_equal(y, layer(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(dx, layer.backward(dy))


def test_linear_3d_gradient_of_another_shape_is_refused():
    layer = nn.Linear(4, 3)
    layer(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"Linear.*\(2, 5, 3\).*\(10, 3\)"):
        layer.backward(np.zeros((10, 3), np.float32))


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 0)])
def test_linear_3d_with_the_wrong_feature_count_names_both(shape):
    expected = rf"Linear expects 4 input features \(N, \*, 4\), got shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=expected):
        nn.Linear(4, 2)(np.zeros(shape, np.float32))
