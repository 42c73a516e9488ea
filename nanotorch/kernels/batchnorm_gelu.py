"""BatchNorm followed by GELU, fused: one pass over the activations forward and two backward.

z: (C, N, L) — a convolution's output as its GEMM leaves it (channel first, spatial axes flat);
the block's output a and incoming gradient da are (N, C, L), the layout of the next layer. Per channel c:

    forward:   xhat = (z - mean_c) * inv_std_c,   u = gamma_c * xhat + beta_c,   a = GELU(u)
               keeping xhat and d = GELU'(u) for the backward
    backward:  g = da * d                                          (through GELU)
               dbeta_c = sum g,   dgamma_c = sum g * xhat          (over n and l)
               dz = gamma_c * inv_std_c * (g - dbeta_c / m - xhat * dgamma_c / m)    (training)
               dz = gamma_c * inv_std_c * g                                          (evaluation)

This is BatchNorm2d's backward (nanotorch/nn/batchnorm.py) with GELU's chained in front; the
sums of g and g * xhat are the parameter gradients, which is why they come out for free. The
kernels also move between the two layouts as they go, so no transpose is ever copied.
Sums are accumulated in float64. The references compose the plain NumPy formulas.
"""
import numpy as np
from numba import njit

from nanotorch.kernels.gelu import FAST, gelu_and_grad, gelu_forward_reference


@njit(cache=True, nogil=True, **FAST)
def channel_mean_var(z):
    """z: (C, M) -> (mean, biased variance), each (C,) float64, by two passes (no cancellation)."""
    c_, m = z.shape
    mean = np.zeros(c_)
    var = np.zeros(c_)
    for c in range(c_):
        s = 0.0
        for i in range(m):
            s += z[c, i]
        mu = s / m
        q = 0.0
        for i in range(m):
            e = z[c, i] - mu
            q += e * e
        mean[c] = mu
        var[c] = q / m
    return mean, var


@njit(cache=True, nogil=True, **FAST)
def bn_gelu_forward(z, mean, inv_std, gamma, beta):
    """z: (C, N, L); mean, inv_std, gamma, beta: (C,) in z's dtype -> a: (N, C, L), xhat, d: (C, N, L)."""
    c_, n_, l_ = z.shape
    a = np.empty((n_, c_, l_), dtype=z.dtype)
    xhat = np.empty_like(z)
    d = np.empty_like(z)
    for c in range(c_):
        mu, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        for n in range(n_):
            for i in range(l_):
                xh = (z[c, n, i] - mu) * s
                xhat[c, n, i] = xh
                a[n, c, i], d[c, n, i] = gelu_and_grad(g * xh + b)
    return a, xhat, d


@njit(cache=True, nogil=True, **FAST)
def bn_gelu_inference(z, scale, shift):
    """Evaluation without a backward: a = GELU(scale * z + shift), BatchNorm folded into one
    multiply-add (scale = gamma * inv_std, shift = beta - mean * scale). z: (C, N, L) -> a: (N, C, L)."""
    c_, n_, l_ = z.shape
    a = np.empty((n_, c_, l_), dtype=z.dtype)
    for c in range(c_):
        k, b = scale[c], shift[c]
        for n in range(n_):
            for i in range(l_):
                a[n, c, i] = gelu_and_grad(k * z[c, n, i] + b)[0]
    return a


@njit(cache=True, nogil=True, **FAST)
def bn_gelu_backward(da, xhat, d, inv_std, gamma, training):
    """da: (N, C, L); xhat, d: (C, N, L) -> (dz (C, N, L), dgamma (C,), dbeta (C,)), see the module docstring."""
    n_, c_, l_ = da.shape
    dz = np.empty_like(xhat)
    dgamma = np.zeros(c_)
    dbeta = np.zeros(c_)
    m = n_ * l_
    for c in range(c_):
        sg = 0.0
        sgx = 0.0
        for n in range(n_):
            for i in range(l_):
                g = da[n, c, i] * d[c, n, i]
                dz[c, n, i] = g
                sg += g
                sgx += g * xhat[c, n, i]
        dbeta[c], dgamma[c] = sg, sgx
        k = da.dtype.type(gamma[c] * inv_std[c])
        mg = da.dtype.type(sg / m if training else 0.0)
        mgx = da.dtype.type(sgx / m if training else 0.0)
        for n in range(n_):
            for i in range(l_):
                dz[c, n, i] = k * (dz[c, n, i] - mg - xhat[c, n, i] * mgx)
    return dz, dgamma, dbeta


def bn_gelu_forward_reference(z, mean, inv_std, gamma, beta):
    xhat = ((z - mean[:, None, None]) * inv_std[:, None, None]).astype(z.dtype)
    a, d = gelu_forward_reference(gamma[:, None, None] * xhat + beta[:, None, None])
    return np.ascontiguousarray(a.astype(z.dtype).transpose(1, 0, 2)), xhat, d.astype(z.dtype)


def bn_gelu_inference_reference(z, scale, shift):
    a, _ = gelu_forward_reference(scale[:, None, None] * z + shift[:, None, None])
    return np.ascontiguousarray(a.astype(z.dtype).transpose(1, 0, 2))


def bn_gelu_backward_reference(da, xhat, d, inv_std, gamma, training):
    g = da.transpose(1, 0, 2) * d
    dbeta, dgamma = g.sum(axis=(1, 2)), (g * xhat).sum(axis=(1, 2))
    m = g.shape[1] * g.shape[2]
    if training:
        g = g - (dbeta / m)[:, None, None] - xhat * (dgamma / m)[:, None, None]
    return ((gamma * inv_std)[:, None, None] * g).astype(da.dtype), dgamma, dbeta
