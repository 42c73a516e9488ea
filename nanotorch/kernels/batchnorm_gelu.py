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
Sums are accumulated in float64. Each channel is a task (tasks.py): with ``parallel`` the channels
spread over Numba's threads. The references compose the plain NumPy formulas.
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.gelu import FAST, gelu_and_grad, gelu_forward_reference
from nanotorch.kernels.tasks import PRANGE


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def channel_mean_var(z, parallel=False):
    """z: (C, M) -> (mean, biased variance), each (C,) float64, by two passes (no cancellation).
    One task per channel; ``parallel`` spreads them over Numba's threads (tasks.py), as below."""
    mean = np.empty(z.shape[0])
    var = np.empty(z.shape[0])
    if parallel:
        for c in prange(z.shape[0]):
            mean[c], var[c] = _mean_var(z[c])
    else:
        for c in range(z.shape[0]):
            mean[c], var[c] = _mean_var(z[c])
    return mean, var


@njit(nogil=True, **FAST)
def _mean_var(v):
    s = 0.0
    for i in range(v.size):
        s += v[i]
    mu = s / v.size
    q = 0.0
    for i in range(v.size):
        e = v[i] - mu
        q += e * e
    return mu, q / v.size


@njit(cache=True, nogil=True)
def update_running_stats(running_mean, running_var, mean, var, f, m):
    """In place, PyTorch's update of BatchNorm's running statistics from a batch's mean and biased
    variance over m values a channel (see nanotorch/nn/batchnorm.py):

        running_mean <- (1 - f) * running_mean + f * mean
        running_var  <- (1 - f) * running_var  + f * var * m / (m - 1)        (the unbiased variance)

    computed in the running statistics' dtype (the unbiased variance in float64, then rounded), as
    the reference below; one compiled call instead of nine small NumPy operations (6.5 -> ~1 us a
    layer)."""
    c_ = running_mean.size
    if running_var.size != c_ or mean.size != c_ or var.size != c_:
        raise ValueError("update_running_stats: expected running_mean, running_var, mean and var of one size")
    t = running_mean.dtype.type
    keep, take, unbias = t(1 - f), t(f), m / (m - 1)
    for c in range(c_):
        running_mean[c] = keep * running_mean[c] + take * t(mean[c])
        running_var[c] = keep * running_var[c] + take * t(var[c] * unbias)


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def bn_gelu_forward(z, mean, inv_std, gamma, beta, parallel=False):
    """z: (C, N, L); mean, inv_std, gamma, beta: (C,) in z's dtype -> a: (N, C, L), xhat, d: (C, N, L)."""
    c_, n_, l_ = z.shape
    a = np.empty((n_, c_, l_), dtype=z.dtype)
    xhat = np.empty_like(z)
    d = np.empty_like(z)
    if parallel:
        for c in prange(c_):
            _forward_channel(z, mean, inv_std, gamma, beta, c, a, xhat, d)
    else:
        for c in range(c_):
            _forward_channel(z, mean, inv_std, gamma, beta, c, a, xhat, d)
    return a, xhat, d


@njit(nogil=True, **FAST)
def _forward_channel(z, mean, inv_std, gamma, beta, c, a, xhat, d):
    """Channel c. The arrays come whole, indexed in the loop: a slice such as a[:, c] of the
    (N, C, L) output is not contiguous, and Numba's slices lose the layout that lets the loop
    vectorise (8x slower). (Kernels that slice along the first axis only, z[c], keep it.)"""
    mu, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
    for n in range(z.shape[1]):
        for i in range(z.shape[2]):
            xh = (z[c, n, i] - mu) * s
            xhat[c, n, i] = xh
            a[n, c, i], d[c, n, i] = gelu_and_grad(g * xh + b)


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def bn_gelu_inference(z, scale, shift, parallel=False):
    """Evaluation without a backward: a = GELU(scale * z + shift), BatchNorm folded into one
    multiply-add (scale = gamma * inv_std, shift = beta - mean * scale). z: (C, N, L) -> a: (N, C, L)."""
    c_, n_, l_ = z.shape
    a = np.empty((n_, c_, l_), dtype=z.dtype)
    if parallel:
        for c in prange(c_):
            _inference_channel(z, scale[c], shift[c], c, a)
    else:
        for c in range(c_):
            _inference_channel(z, scale[c], shift[c], c, a)
    return a


@njit(nogil=True, **FAST)
def _inference_channel(z, k, b, c, a):
    for n in range(z.shape[1]):
        for i in range(z.shape[2]):
            a[n, c, i] = gelu_and_grad(k * z[c, n, i] + b)[0]


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def bn_gelu_backward(da, xhat, d, inv_std, gamma, training, parallel=False):
    """da: (N, C, L); xhat, d: (C, N, L) -> (dz (C, N, L), dgamma (C,), dbeta (C,)), see the module docstring."""
    c_ = xhat.shape[0]
    dz = np.empty_like(xhat)
    dgamma = np.empty(c_)
    dbeta = np.empty(c_)
    if parallel:
        for c in prange(c_):
            dgamma[c], dbeta[c] = _backward_channel(da, xhat, d, inv_std[c], gamma[c], training, c, dz)
    else:
        for c in range(c_):
            dgamma[c], dbeta[c] = _backward_channel(da, xhat, d, inv_std[c], gamma[c], training, c, dz)
    return dz, dgamma, dbeta


@njit(nogil=True, **FAST)
def _backward_channel(da, xhat, d, inv_std, gamma, training, c, dz):
    """Channel c: writes dz[c], returns (dgamma, dbeta)."""
    n_, l_ = xhat.shape[1:]
    sg = 0.0
    sgx = 0.0
    for n in range(n_):
        for i in range(l_):
            g = da[n, c, i] * d[c, n, i]
            dz[c, n, i] = g
            sg += g
            sgx += g * xhat[c, n, i]
    m = n_ * l_
    k = da.dtype.type(gamma * inv_std)
    mg = da.dtype.type(sg / m if training else 0.0)
    mgx = da.dtype.type(sgx / m if training else 0.0)
    for n in range(n_):
        for i in range(l_):
            dz[c, n, i] = k * (dz[c, n, i] - mg - xhat[c, n, i] * mgx)
    return sgx, sg


def update_running_stats_reference(running_mean, running_var, mean, var, f, m):
    running_mean[...] = (1 - f) * running_mean + f * mean.astype(running_mean.dtype)
    unbiased = (np.asarray(var, dtype=np.float64) * (m / (m - 1))).astype(running_var.dtype)
    running_var[...] = (1 - f) * running_var + f * unbiased


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
