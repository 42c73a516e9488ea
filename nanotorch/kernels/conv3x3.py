"""Direct 3x3 "same" convolution (stride 1, padding 1), with no im2col columns.

Pad each input plane with a border of zeros and lay it out flat with row length Wp = W + 2. The
output pixel (y, x) then reads the nine pixels at flat positions p + s, p = y * Wp + x, for the
nine shifts s = i * Wp + j (i, j in 0..2), so a whole output plane is nine shifted multiply-adds:

    z[oc, p] = sum over ci, i, j of  w[oc, ci, i, j] * xp[ci, p + i * Wp + j]      p in [0, H * Wp)

(positions with x >= W straddle two rows: they are computed and dropped). Each inner loop runs
over contiguous memory and vectorises; four output channels share every input load. One pass
takes one kernel row i of the four channels: 12 multiply-adds per 3 input loads and 4 loads and
4 stores of the sums, with the 12 weights held in registers. (A pass over all nine taps would
need 36 weights, more than the registers hold; reloading them costs more than the extra passes
over the sums.)

The backward is two more of the same sums. With xp and dzp the input and dz with their zero
borders (pad_planes, indexed here as 2-D planes), and dz = 0 outside the image:

    dx[n, ci, y, x] = sum over oc, i, j of w[oc, ci, i, j] * dz[n, oc, y + 1 - i, x + 1 - j]
                    = sum over oc, i, j of flip_transpose(w)[ci, oc, i, j] * dzp[n, oc, y + i, x + j]
                      (i, j -> 2 - i, 2 - j): the forward's sum over dzp, with w transposed and flipped
    dw[oc, ci, i, j] = sum over n, y, x of dz[n, oc, y, x] * xp[n, ci, y + i, x + j]

The zero border of the padded dz makes the dropped positions and the image edges add nothing,
as long as the values are finite: an Inf or NaN in the input's first or last column (or an Inf
weight) meets those zeros, and 0 * Inf is NaN, so dw (or dx) has NaN in a few more entries than
im2col + GEMM and PyTorch give. Training never gets there: the loss is already NaN, and
mnist.train stops before the backward.

nn.Conv2d uses it for every 3x3 convolution with stride 1 and padding 1 on planes at least 14
wide. It builds no im2col columns (nine copies of the input, which outgrow the cache as the
batch grows), and its tasks (an image and four output channels; for dw, a pair of output
channels and an input channel) spread over threads. On 7x7 and 4x4 planes the rows are too short
to vectorise and im2col + GEMM is faster (benchmarks.conv_kernels compares the two).
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.gelu import FAST
from nanotorch.kernels.tasks import PRANGE


@njit(cache=True, nogil=True, **PRANGE)
def pad_planes(x, parallel=False, channels_first=False):
    """x: (N, C, H, W), any strides -> (N, C, padded_size(H, W)): each plane with a zero border, flat,
    plus two zeros at the end so the last shifted read stays inside. One task per plane.
    ``channels_first``: x is (C, N, H, W) instead, as a gradient comes from the layer above, so that
    its planes are read contiguously rather than through a transposed view; the output is the same."""
    if channels_first:
        c_, n_, h_, w_ = x.shape
    else:
        n_, c_, h_, w_ = x.shape
    out = np.empty((n_, c_, padded_size(h_, w_)), dtype=x.dtype)
    if parallel:
        for plane in prange(n_ * c_):
            pad_plane(x[plane % c_, plane // c_] if channels_first else x[plane // c_, plane % c_],
                       out[plane // c_, plane % c_])
    else:
        for plane in range(n_ * c_):
            pad_plane(x[plane % c_, plane // c_] if channels_first else x[plane // c_, plane % c_],
                       out[plane // c_, plane % c_])
    return out


def pad_planes_reference(x, channels_first=False):
    """Plain NumPy: x (N, C, H, W) (or (C, N, H, W) with ``channels_first``) -> (N, C, (H+2)*(W+2) + 2):
    each plane with a zero border, flat, then two zeros."""
    if channels_first:
        x = x.transpose(1, 0, 2, 3)
    n_, c_ = x.shape[:2]
    flat = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).reshape(n_, c_, -1)
    return np.pad(flat, ((0, 0), (0, 0), (0, 2)))


@njit(nogil=True)
def padded_size(h_, w_):
    """The length of a padded plane: H + 2 rows of W + 2 values, and two zeros after them."""
    return (h_ + 2) * (w_ + 2) + 2


@njit(nogil=True)
def pad_plane(x, flat):
    """x: (H, W) -> flat, its padded plane. Writes each value once: the image rows, and zeros only on
    the border (zeroing the whole plane first would write the interior twice)."""
    h_, w_ = x.shape
    wp = w_ + 2
    flat[:wp + 1] = 0                                  # the top border row and row 1's left zero
    for y in range(h_):
        row, src = flat[(y + 1) * wp + 1:(y + 2) * wp + 1], x[y]   # image row y, its right zero, the next row's left zero
        for i in range(w_):
            row[i] = src[i]
        row[w_] = 0
        row[w_ + 1] = 0
    flat[(h_ + 1) * wp + 1:] = 0                       # the rest of the bottom row and the two extra zeros


@njit(inline="always")
def _shifted(x, wp, m):
    """The nine views x[s:s + m] of a flat padded plane, one for each shift s = i * Wp + j of a 3x3
    kernel, in the order of w[:, :, i, j]."""
    return (x[0:m], x[1:1 + m], x[2:2 + m], x[wp:wp + m], x[wp + 1:wp + 1 + m], x[wp + 2:wp + 2 + m],
            x[2 * wp:2 * wp + m], x[2 * wp + 1:2 * wp + 1 + m], x[2 * wp + 2:2 * wp + 2 + m])


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def conv3x3_same(xp, w, h_, w_, channels_first, parallel=False, flipped=False):
    """xp: (N, C, P) from pad_planes; w: (OC, C, 3, 3) -> out (OC, N, H*W) if channels_first, else
    (N, OC, H*W). One task per image and group of four output channels (w is copied into groups of
    four, padded with zero channels); ``parallel`` spreads them over Numba's threads (tasks.py).
    ``flipped``: w is the forward's weight, (OC_fwd, C_fwd, 3, 3); this call's input is the output
    gradient, so that is (C, OC, 3, 3) here, and the kernel applied is flip_transpose(w): the input
    gradient's (flipped inside this call, so the layer makes no call of its own for it;
    conv3x3_same_grad_input_reference is its NumPy twin)."""
    n_, c_, plane = xp.shape
    oc_ = w.shape[1] if flipped else w.shape[0]
    if (plane != padded_size(h_, w_) or w.shape[0 if flipped else 1] != c_ or w.shape[2] != 3
            or w.shape[3] != 3):
        raise ValueError("conv3x3_same: expected xp (N, C, (h+2)*(w+2)+2) from pad_planes and w (OC, C, 3, 3) "
                         "(or, when flipped, the forward's weight: (C, OC, 3, 3) here)")
    w4 = np.empty((-(-oc_ // 4) * 4, c_, 3, 3), dtype=w.dtype)
    w4[:] = 0
    if flipped:
        w4[:oc_] = flip_transpose(w)
    else:
        w4[:oc_] = w
    out = np.empty((oc_, n_, h_ * w_) if channels_first else (n_, oc_, h_ * w_), dtype=xp.dtype)
    groups = w4.shape[0] // 4
    if parallel:
        for task in prange(n_ * groups):
            _four_channels(xp, w4, task // groups, task % groups * 4, h_, w_, out, channels_first)
    else:
        for task in range(n_ * groups):
            _four_channels(xp, w4, task // groups, task % groups * 4, h_, w_, out, channels_first)
    return out


@njit(nogil=True, **FAST)
def _four_channels(xp, w4, n, oc, h_, w_, out, channels_first):
    """Output channels oc..oc+3 of image n: summed on the padded grid over the input channels and
    the kernel rows in a small buffer that stays in L1 cache, then copied out without the x >= W
    positions."""
    wp = w_ + 2
    m = h_ * wp
    acc = np.zeros((4, m), dtype=xp.dtype)
    z0, z1, z2, z3 = acc[0], acc[1], acc[2], acc[3]
    for ci in range(xp.shape[1]):
        x = xp[n, ci]
        for i in range(3):                                 # kernel row i: the shifts i * Wp + (0, 1, 2)
            s = i * wp
            x0, x1, x2 = x[s:s + m], x[s + 1:s + 1 + m], x[s + 2:s + 2 + m]
            a0, a1, a2 = w4[oc, ci, i, 0], w4[oc, ci, i, 1], w4[oc, ci, i, 2]
            b0, b1, b2 = w4[oc + 1, ci, i, 0], w4[oc + 1, ci, i, 1], w4[oc + 1, ci, i, 2]
            c0, c1, c2 = w4[oc + 2, ci, i, 0], w4[oc + 2, ci, i, 1], w4[oc + 2, ci, i, 2]
            d0, d1, d2 = w4[oc + 3, ci, i, 0], w4[oc + 3, ci, i, 1], w4[oc + 3, ci, i, 2]
            for p in range(m):
                v0, v1, v2 = x0[p], x1[p], x2[p]
                z0[p] += a0 * v0 + a1 * v1 + a2 * v2
                z1[p] += b0 * v0 + b1 * v1 + b2 * v2
                z2[p] += c0 * v0 + c1 * v1 + c2 * v2
                z3[p] += d0 * v0 + d1 * v1 + d2 * v2
    for k in range(min(4, out.shape[0 if channels_first else 1] - oc)):
        dst = out[oc + k, n] if channels_first else out[n, oc + k]
        for y in range(h_):
            row, src = dst[y * w_:(y + 1) * w_], acc[k, y * wp:y * wp + w_]
            for i in range(w_):
                row[i] = src[i]


@njit(inline="always")
def _add_taps(t, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    t[0, 0] += s0
    t[0, 1] += s1
    t[0, 2] += s2
    t[1, 0] += s3
    t[1, 1] += s4
    t[1, 2] += s5
    t[2, 0] += s6
    t[2, 1] += s7
    t[2, 2] += s8


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def conv3x3_same_grad_weight(xp, dzp, h_, w_, parallel=False):
    """xp: (N, C, P), dzp: (N, OC, P), both from pad_planes -> dw: (OC, C, 3, 3).

    dz's pixel (y, x) sits at q = (y+1) * Wp + x + 1 of its padded plane and met the input at
    q + (i-1) * Wp + (j-1) for tap (i, j); q runs over the padded rows 1..H, where dz's border
    zeros cancel the positions outside the image. One task per pair of output channels and input
    channel, summing over the images in order; ``parallel`` spreads them over Numba's threads."""
    n_, c_, plane = xp.shape
    oc_ = dzp.shape[1]
    wp = w_ + 2
    if plane != padded_size(h_, w_) or dzp.shape[0] != n_ or dzp.shape[2] != plane:
        raise ValueError("conv3x3_same_grad_weight: expected xp (N, C, P) and dzp (N, OC, P) from pad_planes, "
                         "P = (h+2)*(w+2)+2")
    dw = np.empty((oc_, c_, 3, 3), dtype=xp.dtype)
    dw[:] = 0
    tasks = (oc_ + 1) // 2 * c_
    if parallel:
        for task in prange(tasks):
            _weight_task(xp, dzp, task // c_ * 2, task % c_, dw, wp, h_ * wp)
    else:
        for task in range(tasks):
            _weight_task(xp, dzp, task // c_ * 2, task % c_, dw, wp, h_ * wp)
    return dw


@njit(nogil=True, **FAST)
def _weight_task(xp, dzp, oc, ci, dw, wp, m):
    """dw[oc, ci] and dw[oc + 1, ci] (an odd last channel is paired with itself), over the images in order."""
    oc2 = min(oc + 1, dzp.shape[1] - 1)
    for n in range(xp.shape[0]):
        _two_channel_taps(xp[n, ci], dzp[n, oc], dzp[n, oc2], dw[oc, ci], dw[oc2, ci], oc2 != oc, wp, m)


@njit(nogil=True, inline="always", **FAST)
def _two_channel_taps(x, d, e, dw_d, dw_e, both, wp, m):
    """Add one image's nine shifted dot products of input plane x with the padded dz planes d and
    e into dw_d and dw_e (3, 3): two output channels share the nine input loads (18 multiply-adds
    per 11 loads)."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8 = _shifted(x, wp, m)
    d, e = d[wp + 1:wp + 1 + m], e[wp + 1:wp + 1 + m]
    zero = x.dtype.type(0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = t8 = zero
    for p in range(m):
        g, h = d[p], e[p]
        v0, v1, v2, v3, v4, v5, v6, v7, v8 = x0[p], x1[p], x2[p], x3[p], x4[p], x5[p], x6[p], x7[p], x8[p]
        s0 += g * v0
        s1 += g * v1
        s2 += g * v2
        s3 += g * v3
        s4 += g * v4
        s5 += g * v5
        s6 += g * v6
        s7 += g * v7
        s8 += g * v8
        t0 += h * v0
        t1 += h * v1
        t2 += h * v2
        t3 += h * v3
        t4 += h * v4
        t5 += h * v5
        t6 += h * v6
        t7 += h * v7
        t8 += h * v8
    _add_taps(dw_d, s0, s1, s2, s3, s4, s5, s6, s7, s8)
    if both:
        _add_taps(dw_e, t0, t1, t2, t3, t4, t5, t6, t7, t8)


@njit(cache=True, nogil=True)
def flip_transpose(w):
    """w: (OC, C, 3, 3) -> (C, OC, 3, 3) flipped in both spatial axes: the kernel of dx = conv(dz).
    A compiled loop: for so few values NumPy's copy of the reversed, transposed view is mostly
    call overhead."""
    oc_, c_ = w.shape[:2]
    out = np.empty((c_, oc_, 3, 3), dtype=w.dtype)
    for o in range(oc_):
        for c in range(c_):
            for i in range(3):
                for j in range(3):
                    out[c, o, 2 - i, 2 - j] = w[o, c, i, j]
    return out


def flip_transpose_reference(w):
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def conv3x3_same_reference(x, w):
    """Plain NumPy: x (N, C, H, W), w (OC, C, 3, 3) -> (N, OC, H, W), a sum of nine shifted einsums."""
    h_, w_ = x.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return sum(np.einsum("oc,nchw->nohw", w[:, :, i, j], xpad[:, :, i:i + h_, j:j + w_])
               for i in range(3) for j in range(3))


def conv3x3_same_grad_input_reference(dz, w):
    """Plain NumPy: dz (N, OC, H, W), w (OC, C, 3, 3), the forward's weight -> dx (N, C, H, W): the
    forward's convolution of dz with w transposed and flipped (the module docstring)."""
    return conv3x3_same_reference(dz, flip_transpose_reference(w))


def conv3x3_same_grad_weight_reference(x, dz):
    """Plain NumPy: x (N, C, H, W), dz (N, OC, H, W) -> dw (OC, C, 3, 3)."""
    h_, w_ = x.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = np.empty((dz.shape[1], x.shape[1], 3, 3), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dz, xpad[:, :, i:i + h_, j:j + w_])
    return dw
