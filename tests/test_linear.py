"""nn.Linear's two paths: compiled loops for small layers, BLAS for large ones."""
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
    results = []
    for blas in (False, True):
        if blas:
            force_blas(monkeypatch)
        nt.manual_seed(0)
        layer = nn.Linear(28, 56, bias=bias).to(dtype)
        y = layer(x)
        results.append([y, layer.backward(dy)] + [p.grad for p in layer.parameters()])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, want in zip(*results):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("in_features, out_features, bias, n", [(7, 5, True, 3), (5, 3, False, 1)])
def test_blas_linear_gradcheck(monkeypatch, in_features, out_features, bias, n, mode):
    force_blas(monkeypatch)
    nt.manual_seed(1)
    layer = nn.Linear(in_features, out_features, bias=bias).double()
    layer.train(mode == "train")
    result = nt.gradcheck(layer, np.random.default_rng(2).standard_normal((n, in_features)))
    assert result.max_error < 1e-6, str(result)
    assert set(result.errors) == {"input", "weight"} | ({"bias"} if bias else set())


@pytest.mark.parametrize("blas", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_two_backwards_add_up_their_gradients(monkeypatch, bias, blas):
    """Two forward/backward pairs without zero_grad: each parameter's grad is the sum of both (float64)."""
    if blas:
        force_blas(monkeypatch)
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((2, 4, 6))
    dy1, dy2 = rng.standard_normal((2, 4, 5))
    layer = nn.Linear(6, 5, bias=bias).double()
    for x, dy in ((x1, dy1), (x2, dy2)):
        layer(x)
        layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, dy1.T @ x1 + dy2.T @ x2, rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, dy1.sum(axis=0) + dy2.sum(axis=0), rtol=1e-12, atol=1e-12)
