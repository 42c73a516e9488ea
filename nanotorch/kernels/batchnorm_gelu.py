"""BatchNorm followed by GELU, fused: one pass over the activations forward and two backward.

z: (C, N, L) — a convolution's output as its GEMM leaves it (channel first, spatial axes flat);
the block's output a and incoming gradient da are (N, C, L), the layout of the next layer. Per channel c:

    forward:   mean_c, var_c over (n, l) when training (else the running statistics are given)
               xhat = (z - mean_c) * inv_std_c,   inv_std_c = 1 / sqrt(var_c + eps)
               u = gamma_c * xhat + beta_c,   a = GELU(u),   keeping d = GELU'(u) for the backward
    backward:  g = da * d                                          (through GELU)
               dbeta_c = sum g,   dgamma_c = sum g * xhat          (over n and l)
               dz = gamma_c * inv_std_c * (g - dbeta_c / m - xhat * dgamma_c / m)    (training)
               dz = gamma_c * inv_std_c * g                                          (evaluation)

This is BatchNorm2d's backward (nanotorch/nn/batchnorm.py) with GELU's chained in front; the
sums of g and g * xhat are the parameter gradients, which is why they come out for free. xhat is
not kept: the backward recomputes it from z, which the forward had anyway. The kernels move
between layouts as they go, so no transpose is ever copied, and the backward can write dz with
the zero border the direct 3x3 convolution's backward reads (conv3x3.pad_planes' layout), which
saves that layer a padding pass.

Each channel is one task (tasks.py), statistics and all: with ``parallel`` the channels spread
over Numba's threads. Sums are accumulated in float64. Measured on the 2-core machine, one thread,
a 4 x 16 x 28 x 28 layer: the backward writing dz padded, 32 us, against 25 + 18 us for the plain
backward and then pad_planes. The batch statistics computed in the same task as the normalisation
(one kernel where there were three calls and six small NumPy operations), xhat no longer stored,
dz written padded: a training step of the MNIST recipe on two threads went from 1.59-1.64 to
1.52-1.58 ms (alternating runs, quiet phases of a noisy host).
The references compose the plain NumPy formulas.
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.gelu import FAST, gelu, gelu_and_grad, gelu_forward_reference
from nanotorch.kernels.tasks import PRANGE


@njit(nogil=True, **FAST)
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


@njit(nogil=True)
def _inverse_sqrt(one, x):
    """one / sqrt(x), in the type of ``one``, rounded as NumPy rounds it (compiled without fastmath)."""
    return one / np.sqrt(x)


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
def bn_gelu_forward(z, mean, var, gamma, beta, eps, training, parallel=False):
    """z: (C, N, L); gamma, beta: (C,) in z's dtype; mean, var: (C,) float64 ->
    a: (N, C, L), d = GELU'(u): (C, N, L), inv_std: (C,) in z's dtype.

    ``training``: each channel's mean and biased variance over its N * L values are computed and
    written into ``mean`` and ``var``; otherwise they are read from them (the running statistics)."""
    c_, n_, l_ = z.shape
    if mean.size != c_ or var.size != c_ or gamma.size != c_ or beta.size != c_:
        raise ValueError("bn_gelu_forward: expected mean, var, gamma and beta of z.shape[0] values")
    a = np.empty((n_, c_, l_), dtype=z.dtype)
    d = np.empty_like(z)
    inv_std = np.empty(c_, dtype=z.dtype)
    if parallel:
        for c in prange(c_):
            _forward_channel(z, mean, var, gamma, beta, eps, training, c, a, d, inv_std)
    else:
        for c in range(c_):
            _forward_channel(z, mean, var, gamma, beta, eps, training, c, a, d, inv_std)
    return a, d, inv_std


@njit(nogil=True, **FAST)
def _forward_channel(z, mean, var, gamma, beta, eps, training, c, a, d, inv_std):
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
            a[n, c, i], d[c, n, i] = gelu_and_grad(g * ((z[c, n, i] - mu) * s) + b)


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
            a[n, c, i] = gelu(k * z[c, n, i] + b)


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def bn_gelu_backward(da, z, mean, inv_std, d, gamma, training, width, parallel=False):
    """da: (N, C, L); z, d: (C, N, L); mean: (C,) float64; inv_std, gamma: (C,) in z's dtype ->
    (dz, dgamma (C,), dbeta (C,)), see the module docstring.

    dz is (C, N, L) for width 0. For width W > 0 (L = H * W) it is (N, C, (H+2)*(W+2) + 2): each
    plane with a zero border, flat, as conv3x3.pad_planes lays it out."""
    c_, n_, l_ = z.shape
    if width > 0:
        h_ = l_ // width
        if h_ * width != l_:
            raise ValueError("bn_gelu_backward: width must divide the plane size L")
        dz = np.empty((n_, c_, (h_ + 2) * (width + 2) + 2), dtype=z.dtype)
    else:
        dz = np.empty_like(z)
    dgamma = np.empty(c_)
    dbeta = np.empty(c_)
    if parallel:
        for c in prange(c_):
            dgamma[c], dbeta[c] = _backward_channel(da, z, mean, inv_std, d, gamma, training, width, c, dz)
    else:
        for c in range(c_):
            dgamma[c], dbeta[c] = _backward_channel(da, z, mean, inv_std, d, gamma, training, width, c, dz)
    return dz, dgamma, dbeta


@njit(nogil=True, **FAST)
def _backward_channel(da, z, mean, inv_std, d, gamma, training, width, c, dz):
    """Channel c: writes dz's planes of channel c, returns (dgamma, dbeta). Two passes: the sums,
    then dz (g recomputed: reading da and d again costs no more than keeping g)."""
    t = z.dtype.type
    n_, l_ = z.shape[1:]
    mu, s = t(mean[c]), inv_std[c]
    sg = 0.0
    sgx = 0.0
    for n in range(n_):
        for i in range(l_):
            g = da[n, c, i] * d[c, n, i]
            sg += g
            sgx += g * ((z[c, n, i] - mu) * s)
    m = n_ * l_
    k = t(gamma[c] * s)
    mg = t(sg / m if training else 0.0)
    mgx = t(sgx / m if training else 0.0)
    if width == 0:
        for n in range(n_):
            for i in range(l_):
                dz[c, n, i] = k * (da[n, c, i] * d[c, n, i] - mg - (z[c, n, i] - mu) * s * mgx)
        return sgx, sg
    wp = width + 2
    for n in range(n_):
        plane, dan, dn, zn = dz[n, c], da[n, c], d[c, n], z[c, n]     # 1-D rows: loops that vectorise
        plane[:wp + 1] = 0                               # the top border and row 1's left zero
        for y in range(l_ // width):
            row = plane[(y + 1) * wp + 1:(y + 2) * wp + 1]   # row y, its right zero, the next row's left zero
            g, e, u = dan[y * width:(y + 1) * width], dn[y * width:(y + 1) * width], zn[y * width:(y + 1) * width]
            for x in range(width):
                row[x] = k * (g[x] * e[x] - mg - (u[x] - mu) * s * mgx)
            row[width] = 0
            row[width + 1] = 0
        plane[(l_ // width + 1) * wp + 1:] = 0           # the rest of the bottom border, two extra zeros
    return sgx, sg


def update_running_stats_reference(running_mean, running_var, mean, var, f, m):
    running_mean[...] = (1 - f) * running_mean + f * mean.astype(running_mean.dtype)
    unbiased = (np.asarray(var, dtype=np.float64) * (m / (m - 1))).astype(running_var.dtype)
    running_var[...] = (1 - f) * running_var + f * unbiased


def bn_gelu_forward_reference(z, mean, var, gamma, beta, eps, training):
    """Plain NumPy twin of bn_gelu_forward; returns (a, d, inv_std, mean, var) (mean and var
    computed when training, else the given ones)."""
    if training:
        mean, var = z.astype(np.float64).mean(axis=(1, 2)), z.astype(np.float64).var(axis=(1, 2))
    inv_std = 1.0 / np.sqrt(var.astype(z.dtype) + z.dtype.type(eps))
    xhat = (z - mean.astype(z.dtype)[:, None, None]) * inv_std[:, None, None]
    a, d = gelu_forward_reference(gamma[:, None, None] * xhat + beta[:, None, None])
    return np.ascontiguousarray(a.astype(z.dtype).transpose(1, 0, 2)), d.astype(z.dtype), inv_std, mean, var


def bn_gelu_inference_reference(z, scale, shift):
    a, _ = gelu_forward_reference(scale[:, None, None] * z + shift[:, None, None])
    return np.ascontiguousarray(a.astype(z.dtype).transpose(1, 0, 2))


def bn_gelu_backward_reference(da, z, mean, inv_std, d, gamma, training, width):
    xhat = (z - mean.astype(z.dtype)[:, None, None]) * inv_std[:, None, None]
    g = da.transpose(1, 0, 2) * d
    dbeta, dgamma = g.sum(axis=(1, 2)), (g * xhat).sum(axis=(1, 2))
    m = g.shape[1] * g.shape[2]
    if training:
        g = g - (dbeta / m)[:, None, None] - xhat * (dgamma / m)[:, None, None]
    dz = ((gamma * inv_std)[:, None, None] * g).astype(da.dtype)
    if width:
        c_, n_, l_ = dz.shape
        planes = np.pad(dz.transpose(1, 0, 2).reshape(n_, c_, l_ // width, width), ((0, 0), (0, 0), (1, 1), (1, 1)))
        dz = np.concatenate([planes.reshape(n_, c_, -1), np.zeros((n_, c_, 2), dz.dtype)], axis=2)
    return dz, dgamma, dbeta
