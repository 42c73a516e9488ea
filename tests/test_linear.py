"""nn.Linear's two paths: compiled loops for small layers, BLAS for large ones."""
import numpy as np
import pytest

import nanotorch as nt
import nanotorch.nn.linear as L
from nanotorch import nn


@pytest.mark.parametrize("bias", [True, False])
def test_small_linear_kernels_and_blas_agree(monkeypatch, bias):
    """nn.Linear runs compiled loops below SMALL_LINEAR multiply-adds and BLAS above: the same numbers."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((4, 28)).astype(np.float32), rng.standard_normal((4, 56)).astype(np.float32)
    results = []
    for threshold in (L.SMALL_LINEAR, 0):                                  # the kernels, then BLAS
        monkeypatch.setattr(L, "SMALL_LINEAR", threshold)
        nt.manual_seed(0)
        layer = nn.Linear(28, 56, bias=bias)
        y = layer(x)
        results.append([y, layer.backward(dy)] + [p.grad for p in layer.parameters()])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
