"""BatchNorm followed by GELU, fused: one pass over the activations forward and two backward.

z: (N, C, L) — a convolution's output with its spatial axes flattened. Per channel c:

    forward:   xhat = (z - mean_c) * inv_std_c,   u = gamma_c * xhat + beta_c,   a = GELU(u)
               keeping xhat and d = GELU'(u) for the backward
    backward:  g = da * d                                          (through GELU)
               dbeta_c = sum g,   dgamma_c = sum g * xhat          (over n and l)
               dz = gamma_c * inv_std_c * (g - dbeta_c / m - xhat * dgamma_c / m)    (training)
               dz = gamma_c * inv_std_c * g                                          (evaluation)

This is BatchNorm2d's backward (nanotorch/nn/batchnorm.py) with GELU's chained in front; the
sums g and g * xhat are exactly the parameter gradients, which is why they come out for free.
Sums are accumulated in float64. The references compose the plain NumPy formulas.
"""
import numpy as np
from numba import njit

from nanotorch.kernels.gelu import FAST, gelu_and_grad, gelu_forward_reference


@njit(cache=True, **FAST)
def channel_mean_var(z):
    """z: (N, C, L) -> (mean, biased variance), each (C,) float64, by two passes (no cancellation)."""
    n_, c_, l_ = z.shape
    mean = np.zeros(c_)
    var = np.zeros(c_)
    m = n_ * l_
    for c in range(c_):
        s = 0.0
        for n in range(n_):
            for i in range(l_):
                s += z[n, c, i]
        mu = s / m
        q = 0.0
        for n in range(n_):
            for i in range(l_):
                e = z[n, c, i] - mu
                q += e * e
        mean[c] = mu
        var[c] = q / m
    return mean, var


@njit(cache=True, **FAST)
def bn_gelu_forward(z, mean, inv_std, gamma, beta):
    """z: (N, C, L); mean, inv_std, gamma, beta: (C,) -> (a, xhat, d), each (N, C, L) like z."""
    n_, c_, l_ = z.shape
    a = np.empty_like(z)
    xhat = np.empty_like(z)
    d = np.empty_like(z)
    for n in range(n_):
        for c in range(c_):
            mu, s, g, b = z.dtype.type(mean[c]), z.dtype.type(inv_std[c]), z.dtype.type(gamma[c]), z.dtype.type(beta[c])
            for i in range(l_):
                xh = (z[n, c, i] - mu) * s
                xhat[n, c, i] = xh
                a[n, c, i], d[n, c, i] = gelu_and_grad(g * xh + b)
    return a, xhat, d


@njit(cache=True, **FAST)
def bn_gelu_backward(da, xhat, d, inv_std, gamma, training):
    """da, xhat, d: (N, C, L) -> (dz (N, C, L), dgamma (C,), dbeta (C,)) — see the module docstring."""
    n_, c_, l_ = da.shape
    dz = np.empty_like(da)
    dgamma = np.zeros(c_)
    dbeta = np.zeros(c_)
    m = n_ * l_
    for c in range(c_):
        sg = 0.0
        sgx = 0.0
        for n in range(n_):
            for i in range(l_):
                g = da[n, c, i] * d[n, c, i]
                sg += g
                sgx += g * xhat[n, c, i]
        dbeta[c], dgamma[c] = sg, sgx
        k = gamma[c] * inv_std[c]
        mg = sg / m if training else 0.0
        mgx = sgx / m if training else 0.0
        kk, mg_, mgx_ = da.dtype.type(k), da.dtype.type(mg), da.dtype.type(mgx)
        for n in range(n_):
            for i in range(l_):
                dz[n, c, i] = kk * (da[n, c, i] * d[n, c, i] - mg_ - xhat[n, c, i] * mgx_)
    return dz, dgamma, dbeta


def bn_gelu_forward_reference(z, mean, inv_std, gamma, beta):
    xhat = ((z - mean[:, None]) * inv_std[:, None]).astype(z.dtype)
    a, d = gelu_forward_reference(gamma[:, None] * xhat + beta[:, None])
    return a.astype(z.dtype), xhat, d.astype(z.dtype)


def bn_gelu_backward_reference(da, xhat, d, inv_std, gamma, training):
    g = da * d
    dbeta, dgamma = g.sum(axis=(0, 2)), (g * xhat).sum(axis=(0, 2))
    m = da.shape[0] * da.shape[2]
    if training:
        g = g - (dbeta / m)[:, None] - xhat * (dgamma / m)[:, None]
    return ((gamma * inv_std)[:, None] * g).astype(da.dtype), dgamma, dbeta
