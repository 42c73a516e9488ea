"""BatchNorm followed by GELU, fused: one call each way, each channel's values read while in cache
(forward: two passes for the batch statistics when training, then one that writes a, xhat and d;
backward: one pass for the two sums, one for dz).

z: (C, N, L) — a convolution's output as its GEMM leaves it (channel first, spatial axes flat);
the block's output a and incoming gradient da are (N, C, L), the layout of the next layer. Per channel c,
with u BatchNorm's output and d = GELU'(u):

    forward:   mean_c, var_c over (n, l) when training (else the running statistics are given)
               xhat = (z - mean_c) * inv_std_c,   inv_std_c = 1 / sqrt(var_c + eps)
               u = gamma_c * xhat + beta_c,   a = GELU(u),   keeping d = GELU'(u) for the backward
    backward:  du = da * d                                         (dL/du, through GELU)
               dbeta_c = sum du,   dgamma_c = sum du * xhat        (over n and l)
               dz = gamma_c * inv_std_c * (du - dbeta_c / m - xhat * dgamma_c / m)    (training)
               dz = gamma_c * inv_std_c * du                                          (evaluation)

This is BatchNorm2d's backward (nanotorch/nn/batchnorm.py) with GELU's chained in front; the
sums of du and du * xhat are the parameter gradients, which is why they come out for free. (The
backward's g, in the kernel and its reference, is du; BatchNorm2d's g is gamma * du, which is why
gamma_c stands in front here.) The kernels move between layouts as they go, so no transpose is
ever copied.

Each channel is one task (tasks.py), statistics and all: with ``parallel`` the channels spread
over Numba's threads. Sums are accumulated in float64. The batch statistics are computed in the
same task as the normalisation, the forward folds them into the running statistics, and the
backward adds dgamma and dbeta into the parameters' gradients: a layer's BatchNorm is one call
each way, with no Python between.
For the direct convolution the backward also pads dz (``padded_width``): each channel's task
copies its planes, just computed and still in its core's cache, into the zero-bordered planes that
the convolution's backward reads, so that no separate padding pass reads them back from the other
core's cache. The arithmetic stays the same loops, and the copy does none, so the bits are those
of padding afterwards. It is a copy, not dz written straight into the padded planes (and xhat
is stored, not recomputed from z), because a kernel written that way can round differently when
compiled in the running process than when loaded from Numba's cache (LLVM fuses its multiply-adds
differently); tests/test_kernels.py compiles in one fresh process, loads in another, and asserts
the same bits.
The references compose the plain NumPy formulas.
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.conv3x3 import pad_plane, padded_size
from nanotorch.kernels.gelu import FAST, gelu, gelu_and_grad, gelu_forward_reference
from nanotorch.kernels.tasks import PRANGE


@njit(nogil=True, inline="always", **FAST)
def _mean_var(v):
    """v: (N, L) -> (mean, biased variance) in float64, by two passes (no cancellation)."""
    s = 0.0
    for n in range(v.shape[0]):
        for i in range(v.shape[1]):
            s += v[n, i]
    mu = s / v.size
    q = 0.0
    for n in range(v.shape[0]):
        for i in range(v.shape[1]):
            e = v[n, i] - mu
            q += e * e
    return mu, q / v.size


@njit(nogil=True, fastmath=False)
def _inverse_sqrt(one, x):
    """one / sqrt(x), in the type of ``one``, rounded as NumPy rounds it: compiled without fastmath,
    said explicitly, since a function called from a fastmath kernel inherits fastmath unless it sets
    it itself (then LLVM computes one / sqrt(x) from an approximate reciprocal square root,
    vrsqrtss on x86, 1 ulp off in float32 for ~40% of the channels)."""
    return one / np.sqrt(x)


@njit(cache=True, nogil=True, fastmath=False)       # (explicit: called from bn_gelu_forward, it would inherit fastmath)
def update_running_stats(running_mean, running_var, mean, var, f, m):
    """In place, PyTorch's update of BatchNorm's running statistics from a batch's mean and biased
    variance over m values a channel (see nanotorch/nn/batchnorm.py):

        running_mean <- (1 - f) * running_mean + f * mean
        running_var  <- (1 - f) * running_var  + f * var * m / (m - 1)        (the unbiased variance)

    computed in the running statistics' dtype (the unbiased variance in float64, then rounded), as
    the reference below. Compiled because in NumPy it is nine small operations, each mostly call
    overhead for a few dozen values."""
    c_ = running_mean.size
    if running_var.size != c_ or mean.size != c_ or var.size != c_:
        raise ValueError("update_running_stats: expected running_mean, running_var, mean and var of one size")
    t = running_mean.dtype.type
    keep, take, unbias = t(1 - f), t(f), m / (m - 1)
    for c in range(c_):
        running_mean[c] = keep * running_mean[c] + take * t(mean[c])
        running_var[c] = keep * running_var[c] + take * t(var[c] * unbias)


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def bn_gelu_forward(z, running_mean, running_var, gamma, beta, training, momentum, eps, parallel=False):
    """z: (C, N, L); gamma, beta: (C,) in z's dtype; running_mean, running_var: (C,) ->
    a: (N, C, L), xhat, d = GELU'(u): (C, N, L), inv_std: (C,) in z's dtype. The arguments in the
    order of torch.nn.functional.batch_norm.

    ``training``: each channel's mean and biased variance over its N * L values normalise it, and
    are folded into the running statistics with factor ``momentum`` (update_running_stats, after the
    channels' tasks); otherwise the running statistics normalise."""
    c_, n_, l_ = z.shape
    if running_mean.size != c_ or running_var.size != c_ or gamma.size != c_ or beta.size != c_:
        raise ValueError("bn_gelu_forward: expected running_mean, running_var, gamma and beta of z.shape[0] values")
    mean, var = np.empty(c_), np.empty(c_)                 # float64: the batch's, or the running ones
    if not training:
        # a loop, not mean[:] = running_mean: Numba made that copy a parallel loop, which entered the
        # thread pool even when ``parallel`` is False (in evaluation with gradients, ~8 ms a call on a busy machine)
        for c in range(c_):
            mean[c] = running_mean[c]
            var[c] = running_var[c]
    a = np.empty((n_, c_, l_), dtype=z.dtype)
    xhat = np.empty_like(z)
    d = np.empty_like(z)
    inv_std = np.empty(c_, dtype=z.dtype)
    if parallel:
        for c in prange(c_):
            _forward_channel(z, mean, var, gamma, beta, eps, training, c, a, xhat, d, inv_std)
    else:
        for c in range(c_):
            _forward_channel(z, mean, var, gamma, beta, eps, training, c, a, xhat, d, inv_std)
    if training:
        update_running_stats(running_mean, running_var, mean, var, momentum, n_ * l_)
    return a, xhat, d, inv_std


@njit(nogil=True, inline="always", **FAST)
def _forward_channel(z, mean, var, gamma, beta, eps, training, c, a, xhat, d, inv_std):
    """Channel c. The arrays come whole, indexed in the loop: a slice such as a[:, c] of the
    (N, C, L) output is not contiguous, and Numba's slices lose the layout that lets the loop
    vectorise (8x slower). (Kernels that slice along the first axis only, z[c], keep it.)"""
    t = z.dtype.type
    if training:
        mean[c], var[c] = _mean_var(z[c])
    s = _inverse_sqrt(t(1), t(var[c]) + t(eps))                 # in z's dtype, as BatchNorm2d
    inv_std[c] = s
    mu, g, b = t(mean[c]), gamma[c], beta[c]
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


@njit(nogil=True, inline="always", **FAST)
def _inference_channel(z, k, b, c, a):
    for n in range(z.shape[1]):
        for i in range(z.shape[2]):
            a[n, c, i] = gelu(k * z[c, n, i] + b)


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def bn_gelu_backward(da, xhat, d, inv_std, gamma, training, dgamma, dbeta, parallel=False, padded_width=0):
    """da: (N, C, L); xhat, d: (C, N, L); inv_std, gamma: (C,) in xhat's dtype -> dz (C, N, L), see the
    module docstring. Adds each channel's dgamma and dbeta (float64 sums) into ``dgamma`` and ``dbeta``
    (C,): the parameters' gradients, as ``grad += sums`` would (and without its 1.4 us a call).

    ``padded_width`` W > 0: dz comes out as pad_planes(dz as (C, N, L / W, W), channels_first=True)
    would give it, (N, C, padded_size(L / W, W)), for the direct convolution's backward: each
    channel's task copies its planes into their zero borders right after computing them, while they
    are in its cache (the arithmetic is the same loops either way, so the same bits)."""
    c_, n_, l_ = xhat.shape
    if dgamma.size != c_ or dbeta.size != c_:
        raise ValueError("bn_gelu_backward: expected dgamma and dbeta of xhat.shape[0] values")
    if padded_width < 0 or (padded_width > 0 and l_ % padded_width != 0):
        raise ValueError("bn_gelu_backward: padded_width must divide the planes' size")
    dz = np.empty_like(xhat)
    h_ = l_ // padded_width if padded_width > 0 else 0
    dzp = np.empty((n_, c_, padded_size(h_, padded_width)) if padded_width > 0 else (0, 0, 0), dtype=xhat.dtype)
    if parallel:
        for c in prange(c_):
            _backward_channel(da, xhat, d, inv_std[c], gamma[c], training, c, dz, dgamma, dbeta)
            for n in range(dzp.shape[0]):
                pad_plane(dz[c, n].reshape(h_, padded_width), dzp[n, c])
    else:
        for c in range(c_):
            _backward_channel(da, xhat, d, inv_std[c], gamma[c], training, c, dz, dgamma, dbeta)
            for n in range(dzp.shape[0]):
                pad_plane(dz[c, n].reshape(h_, padded_width), dzp[n, c])
    return dzp if padded_width > 0 else dz


@njit(nogil=True, inline="always", **FAST)
def _backward_channel(da, xhat, d, inv_std, gamma, training, c, dz, dgamma, dbeta):
    """Channel c: writes dz[c], adds its sums into dgamma[c] and dbeta[c]."""
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
    dgamma[c] += sgx
    dbeta[c] += sg


def update_running_stats_reference(running_mean, running_var, mean, var, f, m):
    running_mean[...] = (1 - f) * running_mean + f * mean.astype(running_mean.dtype)
    unbiased = (np.asarray(var, dtype=np.float64) * (m / (m - 1))).astype(running_var.dtype)
    running_var[...] = (1 - f) * running_var + f * unbiased


def bn_gelu_forward_reference(z, running_mean, running_var, gamma, beta, training, momentum, eps):
    """Plain NumPy twin of bn_gelu_forward (the running statistics updated in place the same way)."""
    if training:
        mean, var = z.astype(np.float64).mean(axis=(1, 2)), z.astype(np.float64).var(axis=(1, 2))
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var.astype(z.dtype) + z.dtype.type(eps))
    xhat = (z - mean.astype(z.dtype)[:, None, None]) * inv_std[:, None, None]
    a, d = gelu_forward_reference(gamma[:, None, None] * xhat + beta[:, None, None])
    if training:
        update_running_stats_reference(running_mean, running_var, mean, var, momentum, z.shape[1] * z.shape[2])
    return np.ascontiguousarray(a.astype(z.dtype).transpose(1, 0, 2)), xhat, d.astype(z.dtype), inv_std


def bn_gelu_inference_reference(z, scale, shift):
    a, _ = gelu_forward_reference(scale[:, None, None] * z + shift[:, None, None])
    return np.ascontiguousarray(a.astype(z.dtype).transpose(1, 0, 2))


def bn_gelu_backward_reference(da, xhat, d, inv_std, gamma, training):
    g = da.transpose(1, 0, 2) * d
    dbeta, dgamma = g.sum(axis=(1, 2), dtype=np.float64), (g * xhat).sum(axis=(1, 2), dtype=np.float64)  # as the kernel
    m = g.shape[1] * g.shape[2]
    if training:
        g = g - (dbeta / m).astype(da.dtype)[:, None, None] - xhat * (dgamma / m).astype(da.dtype)[:, None, None]
    dz = ((gamma * inv_std)[:, None, None] * g).astype(da.dtype)
    return dz, dgamma, dbeta
