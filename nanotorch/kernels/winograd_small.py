"""Winograd F(2x2, 3x3) on small planes, with the images of a batch as the vector lanes.

winograd.py puts a plane's tiles in the lanes of a vector: good on 28x28 and 14x14 planes (196 and
49 tiles), wasteful on the MNIST model's 7x7 and 4x4 ones (16 and 4 tiles, where a float32 vector
holds 16). Here a vector holds the same tile of L = lanes images instead, so every lane does work
on any plane size, and the arithmetic is winograd.py's, term for term (its docstring has the
algorithm: V = B^T d B, M[p] = U[p] V[p] summed over input channels, Y = A^T M A).

For a group of L images (the last group's missing lanes compute on stale values and are dropped):

    planes[c, y, x, l]   the padded input, image l in lane l: (C, 2 TH + 2, 2 TW + 2, L), with
                         TH x TW = ceil(H/2) x ceil(W/2) tiles (an odd side gets a zero row or
                         column past the image, and its last tiles' second row or column is dropped)
    v[p, c, tile, l]     B^T d B of every tile: 16 loads of L lanes, the additions of winograd.py
    m[p, k, tile, l]     winograd._products on (tiles x L) rows: the same register-blocked product
    low, high            the window of each tile (2x2 max pooling, stride 2, is the tile): the
                         smallest and largest u = scale * y + shift over its outputs inside the plane
    out[n, k, window]    max(GELU(low), GELU(high)), as winograd.conv3x3_winograd_pooled (GELU's
                         largest value over a set is at its smallest or largest value)

It is a whole evaluation block and the pooling after it, as conv3x3_winograd_pooled is, for planes
of any size, odd included: a window clipped by the plane's edge (MaxPool2d's ceil_mode) pools the
outputs inside it. The input and output copies into and out of the lanes are the price; on the
model's 20 -> 24 (7x7) and 24 -> 28 (4x4) blocks they are a small part of the work
(docs/performance.md).
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.conv3x3 import conv3x3_same_reference
from nanotorch.kernels.gelu import FAST, gelu_forward_reference
from nanotorch.kernels.pooling import maxpool2d_forward_reference
from nanotorch.kernels.simd import add, fma, lanes_of, load, maximum, minimum, splat, store, sub
from nanotorch.kernels.tasks import PRANGE
from nanotorch.kernels.winograd import _columns, _gelu_max, _products, _row, _transform_row, row_length


@njit(cache=True, nogil=True, **FAST)
def conv3x3_winograd_pooled_small(x, u, out_channels, scale, shift, out_h, out_w, threads=1):
    """x: (N, C, H, W), C-contiguous; u: winograd.winograd_weights(w) of x's dtype; scale, shift:
    (OC,) -> (N, OC, out_h * out_w): max over each 2x2 window (stride 2) of GELU(scale * z + shift),
    z the 3x3 "same" convolution (stride 1, padding 1). out_h is H // 2 or, for odd H, (H + 1) // 2
    (MaxPool2d's ceil_mode: the last window holds one row); likewise out_w. For finite x (as
    winograd.conv3x3_winograd_pooled). ``threads`` > 1: the groups of images in that many shares."""
    n_, c_, h_, w_ = x.shape
    if u.shape[0] != 16 or u.shape[2] != c_ or u.shape[1] % 4 or u.shape[1] < out_channels:
        raise ValueError("conv3x3_winograd_pooled_small: expected u (16, OC rounded up to 4, C) from winograd_weights")
    if scale.size != out_channels or shift.size != out_channels:
        raise ValueError("conv3x3_winograd_pooled_small: expected scale and shift of out_channels values")
    if out_h < h_ // 2 or out_h > (h_ + 1) // 2 or out_w < w_ // 2 or out_w > (w_ + 1) // 2 or out_h < 1 or out_w < 1:
        raise ValueError("conv3x3_winograd_pooled_small: expected out_h, out_w of H // 2 or (H + 1) // 2, W likewise")
    out = np.empty((n_, out_channels, out_h * out_w), dtype=x.dtype)
    if n_ > 0:
        _shares(x, u, out, scale, shift, out_h, out_w, threads)
    return out


@njit(nogil=True, **PRANGE, **FAST)
def _shares(x, u, out, scale, shift, out_h, out_w, threads):
    groups = -(-x.shape[0] // lanes_of(x[0, 0, 0]))
    shares = min(groups, threads)
    if shares > 1:
        for share in prange(shares):
            _groups(x, u, out, scale, shift, out_h, out_w, share * groups // shares, (share + 1) * groups // shares)
    else:
        _groups(x, u, out, scale, shift, out_h, out_w, 0, groups)


@njit(nogil=True, **FAST)
def _groups(x, u, out, scale, shift, out_h, out_w, first, last):
    """Groups first..last-1 of lanes images, with one set of scratch arrays (the padded planes'
    borders zeroed once: each group writes only the pixels inside them)."""
    n_, c_, h_, w_ = x.shape
    oc = out.shape[1]
    lanes = lanes_of(x[0, 0, 0])
    th, tw = (h_ + 1) // 2, (w_ + 1) // 2
    row = (2 * tw + 2) * lanes                             # a padded row: 2 TW + 2 pixels of lanes values
    planes = np.zeros((c_, (2 * th + 2) * row), dtype=x.dtype)
    t_ = th * tw * lanes
    v = np.empty((16, c_, row_length(c_, t_, lanes, x.itemsize)), dtype=x.dtype)
    m = np.empty((16, u.shape[1], row_length(u.shape[1], t_, lanes, x.itemsize)), dtype=x.dtype)
    windows = out_h * out_w
    low = np.empty(oc * windows * lanes, dtype=x.dtype)
    high = np.empty(oc * windows * lanes, dtype=x.dtype)
    pooled = np.empty(oc * windows * lanes, dtype=x.dtype)
    for g in range(first, last):
        n0 = g * lanes
        count = min(lanes, n_ - n0)
        for c in range(c_):
            _to_lanes(x, n0, count, c, planes[c], row)
            _transform_input(planes[c], row, th, tw, v, c)
        _products(u, v, m, t_)
        for k in range(oc):
            _transform_output_pooled(m, k, h_, w_, tw, out_h, out_w, scale[k], shift[k],
                                     low[k * windows * lanes:], high[k * windows * lanes:])
        _gelu_max(low, high, pooled)
        _from_lanes(pooled, out, n0, count)


@njit(nogil=True, **FAST)
def _to_lanes(x, n0, count, c, plane, row):
    """plane[(y + 1) * row + (x + 1) * lanes + l] = x[n0 + l, c, y, x] for the group's images."""
    h_, w_ = x.shape[2], x.shape[3]
    lanes = lanes_of(plane)
    for l in range(count):
        img = x[n0 + l, c]
        for y in range(h_):
            start = (y + 1) * row + lanes + l
            for i in range(w_):
                plane[start + i * lanes] = img[y, i]


@njit(nogil=True, **FAST)
def _transform_input(plane, row, th, tw, v, c):
    """v[:, c, tile * lanes:] = B^T d B of each tile (ti, tj), d its 4x4 padded pixels from (2 ti, 2 tj):
    B^T on each column of d (rows 0-2, 1+2, 2-1, 1-3), then on each row (winograd._transform_row)."""
    lanes = lanes_of(v[0, 0])
    for ti in range(th):
        for tj in range(tw):
            s = 2 * ti * row + 2 * tj * lanes
            d0 = _pixels(plane, s, lanes)
            d1 = _pixels(plane, s + row, lanes)
            d2 = _pixels(plane, s + 2 * row, lanes)
            d3 = _pixels(plane, s + 3 * row, lanes)
            t = (ti * tw + tj) * lanes
            _transform_row(sub(d0[0], d2[0]), sub(d0[1], d2[1]), sub(d0[2], d2[2]), sub(d0[3], d2[3]), v, 0, c, t)
            _transform_row(add(d1[0], d2[0]), add(d1[1], d2[1]), add(d1[2], d2[2]), add(d1[3], d2[3]), v, 4, c, t)
            _transform_row(sub(d2[0], d1[0]), sub(d2[1], d1[1]), sub(d2[2], d1[2]), sub(d2[3], d1[3]), v, 8, c, t)
            _transform_row(sub(d1[0], d3[0]), sub(d1[1], d3[1]), sub(d1[2], d3[2]), sub(d1[3], d3[3]), v, 12, c, t)


@njit(nogil=True, inline="always", **FAST)
def _pixels(plane, s, lanes):
    """Four consecutive padded pixels of a row, from s: four vectors of lanes."""
    return load(plane, s), load(plane, s + lanes), load(plane, s + 2 * lanes), load(plane, s + 3 * lanes)


@njit(nogil=True, **FAST)
def _transform_output_pooled(m, k, h_, w_, tw, out_h, out_w, scale, shift, low, high):
    """Output channel k: for each window (i, j) < (out_h, out_w), tile (i, j)'s outputs y = A^T M A,
    u = scale * y + shift, and low, high[(i * out_w + j) * lanes:] = the smallest and largest u
    of those inside the plane (row 2i + 1 and column 2j + 1 may lie past an odd side)."""
    lanes = lanes_of(low)
    k_, b_ = splat(scale), splat(shift)
    for i in range(out_h):
        for j in range(out_w):
            top, bottom = _columns(m, k, (i * tw + j) * lanes)
            (y00, y01), (y10, y11) = _row(top), _row(bottom)
            lo = hi = fma(k_, y00, b_)
            if 2 * j + 1 < w_:
                u01 = fma(k_, y01, b_)
                lo, hi = minimum(lo, u01), maximum(hi, u01)
            if 2 * i + 1 < h_:
                u10 = fma(k_, y10, b_)
                lo, hi = minimum(lo, u10), maximum(hi, u10)
                if 2 * j + 1 < w_:
                    u11 = fma(k_, y11, b_)
                    lo, hi = minimum(lo, u11), maximum(hi, u11)
            q = (i * out_w + j) * lanes
            store(low, q, lo)
            store(high, q, hi)


@njit(nogil=True, **FAST)
def _from_lanes(pooled, out, n0, count):
    """out[n0 + l, k, q] = pooled[(k * windows + q) * lanes + l] for the group's images."""
    oc, windows = out.shape[1], out.shape[2]
    lanes = pooled.size // (oc * windows)
    for l in range(count):
        o = out[n0 + l]
        for k in range(oc):
            for q in range(windows):
                o[k, q] = pooled[(k * windows + q) * lanes + l]


def conv3x3_winograd_pooled_small_reference(x, w, scale, shift, ceil_mode):
    """Plain NumPy, float64, by the separate steps' references: the direct 3x3 "same" convolution,
    GELU(scale * z + shift), then 2x2 max pooling (stride 2; with ceil_mode an odd side's last
    window holds its last row or column) -> (N, OC, OH * OW)."""
    n, _, h, w_ = x.shape
    z = conv3x3_same_reference(x.astype(np.float64), w.astype(np.float64))
    a = gelu_forward_reference(scale.astype(np.float64)[:, None, None] * z + shift.astype(np.float64)[:, None, None])[0]
    oh, ow = ((h + 1) // 2, (w_ + 1) // 2) if ceil_mode else (h // 2, w_ // 2)
    return maxpool2d_forward_reference(a, 2, 2, 2, 2, 0, 0, oh, ow)[0].reshape(n, -1, oh * ow)
