"""im2col and col2im: turn a convolution into one matrix product, and scatter its gradient back.

Layout (the whole batch side by side, so each product is a single large GEMM):

    x    : (N, C, H, W)
    cols : (C*KH*KW, N*OH*OW)      cols[(c*KH + i)*KW + j, (n*OH + oy)*OW + ox]
                                      = x[n, c, oy*sh - ph + i, ox*sw - pw + j]   (0 outside the image)

so that the convolution is ``W.reshape(OC, C*KH*KW) @ cols``, of shape (OC, N*OH*OW). col2im is
the adjoint (transpose) of im2col: every column entry is *added* back to the pixel it was copied
from, which is exactly the gradient of a copy.

Two versions of each loop:
- general (any kernel, stride, padding): tests every index against the image border; LLVM turns
  that test into masked vector instructions, which is faster than splitting each row into border
  and interior.
- 3x3 with stride 1 and padding 1 (the MNIST model's layers on 7x7 and 4x4 planes): with output
  and input planes the same size, the pixels that kernel offset (i, j) reads are the whole input
  plane shifted by s = (i - 1) * W + (j - 1) in its flat layout. So the three rows of kernel row i (j = 0, 1, 2)
  are three contiguous copies of one stretch of the plane, one element apart, made in one loop
  per image; then the entries that read the padding are set to zero: the first (i = 0) or last
  (i = 2) image row, and the column that wrapped around to the neighbouring image row (ox = 0 for
  j = 0, ox = W - 1 for j = 2). col2im is the same stretch added back, the three rows in one loop
  and in the same order as the general loop adds them (the same bits), after zeroing the wrapped
  entries of cols (which the sum must skip). im2col runs one task per input channel (tasks.py):
  a channel's nine rows of cols are written by that task alone.
  LLVM vectorises a loop in blocks of 32-64 values, so the short rows of these small planes run
  mostly as scalar code: what counts is running a third as many loops. col2im stays on one thread:
  split over two it runs no faster, and a fifteenth argument (``parallel``) would cost ~2 us a call
  in Numba's dispatcher.
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.tasks import PRANGE


@njit(cache=True, nogil=True, **PRANGE)
def im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, parallel=False):
    """x: (N, C, H, W) -> cols: (C*kh*kw, N*oh*ow). ``parallel``: the 3x3 path's channels spread over threads."""
    n_, c_, h_, w_ = x.shape
    if not _is_3x3_same(kh, kw, sh, sw, ph, pw, oh, ow, h_, w_):
        return _im2col_general(x, kh, kw, sh, sw, ph, pw, oh, ow)
    cols = np.empty((c_ * 9, n_ * h_ * w_), dtype=x.dtype)
    planes = np.ascontiguousarray(x).reshape(n_, c_, h_ * w_)
    if parallel:
        for c in prange(c_):
            _im2col_3x3_channel(planes, cols, c, h_, w_)
    else:
        for c in range(c_):
            _im2col_3x3_channel(planes, cols, c, h_, w_)
    return cols


@njit(cache=True, nogil=True)
def col2im(cols, n_, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow, overwrite_cols=False):
    """cols: (C*kh*kw, N*oh*ow) -> dx: (N, C, H, W), summing every entry into its source pixel.
    With ``overwrite_cols`` the 3x3 path may use cols as scratch (saves a copy)."""
    if not _is_3x3_same(kh, kw, sh, sw, ph, pw, oh, ow, h_, w_):
        return _col2im_general(cols, n_, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow)
    scratch = cols if overwrite_cols else cols.copy()
    dx = np.zeros((n_, c_, h_ * w_), dtype=cols.dtype)
    for c in range(c_):
        _col2im_3x3_channel(scratch, dx, c, h_, w_)
    return dx.reshape(n_, c_, h_, w_)


@njit(inline="always")
def _is_3x3_same(kh, kw, sh, sw, ph, pw, oh, ow, h_, w_):
    """A 3x3 kernel, stride 1, padding 1 (so the output is as large as the input), on planes of at
    least 2x2 (smaller ones take the general loop)."""
    return (kh == 3 and kw == 3 and sh == 1 and sw == 1 and ph == 1 and pw == 1 and oh == h_ and ow == w_
            and h_ >= 2 and w_ >= 2)


@njit(inline="always")
def _valid_range(i, h_, w_):
    """For kernel row i: the shift (i - 1) * W of the source, and the flat output range [lo, hi)
    whose source row exists (the first image row reads the top padding for i = 0, the last one the
    bottom padding for i = 2)."""
    hw = h_ * w_
    return (i - 1) * w_, (w_ if i == 0 else 0), (hw - w_ if i == 2 else hw)


@njit(inline="always")
def _three_rows(cols, row, start, size):
    """cols[row + j, start:start + size] for j = 0, 1, 2 (contiguous slices, which loops vectorise)."""
    return cols[row, start:start + size], cols[row + 1, start:start + size], cols[row + 2, start:start + size]


@njit(inline="always")
def _zero_wrapped(d0, d2, h_, w_):
    """Zero the entries of one image's j = 0 and j = 2 rows whose shift wrapped around to the
    neighbouring image row: column ox = 0 of d0 and ox = W - 1 of d2 (they read the padding)."""
    for y in range(h_):
        d0[y * w_] = 0
        d2[y * w_ + w_ - 1] = 0


@njit(nogil=True)
def _im2col_3x3_channel(planes, cols, c, h_, w_):
    """The nine rows of cols of input channel c: planes (N, C, H*W) -> cols[9c:9c + 9]."""
    hw = h_ * w_
    for i in range(3):
        si, lo, hi = _valid_range(i, h_, w_)
        b, m = lo + si, hi - lo - 2       # d1[p] = src[b + p - lo] on [lo, hi); d0, d2 one to the left, right
        for n in range(planes.shape[0]):
            src = planes[n, c]
            d0, d1, d2 = _three_rows(cols, 9 * c + 3 * i, n * hw, hw)
            for p in range(lo):
                d0[p] = d1[p] = d2[p] = 0
            e0, e1, e2 = d0[lo + 1:hi - 1], d1[lo + 1:hi - 1], d2[lo + 1:hi - 1]
            s0, s1, s2 = src[b:b + m], src[b + 1:b + 1 + m], src[b + 2:b + 2 + m]
            for p in range(m):                                     # the three contiguous copies
                e0[p] = s0[p]
                e1[p] = s1[p]
                e2[p] = s2[p]
            d1[lo], d2[lo] = src[b], src[b + 1]                    # d0[lo] is ox = 0: zeroed below
            d0[hi - 1], d1[hi - 1] = src[b + m], src[b + m + 1]    # d2[hi - 1] is ox = W - 1: likewise
            for p in range(hi, hw):
                d0[p] = d1[p] = d2[p] = 0
            _zero_wrapped(d0, d2, h_, w_)                          # wrapped to the next image row


@njit(nogil=True)
def _col2im_3x3_channel(cols, dx, c, h_, w_):
    """Add channel c's nine rows of cols into dx[:, c] (N, C, H*W), zeroing their wrapped entries first."""
    hw = h_ * w_
    for i in range(3):
        si, lo, hi = _valid_range(i, h_, w_)
        b, m = lo + si, hi - lo - 2             # dst[b + t] takes d1[lo + t], d0[lo + t + 1], d2[lo + t - 1]
        for n in range(dx.shape[0]):
            d0, d1, d2 = _three_rows(cols, 9 * c + 3 * i, n * hw, hw)
            _zero_wrapped(d0, d2, h_, w_)                          # they came from the padding
            dst = dx[n, c]
            dst[b] = (dst[b] + d0[lo + 1]) + d1[lo]                # d2[lo - 1] is outside [lo, hi)
            f, g0, g1, g2 = dst[b + 1:b + 1 + m], d0[lo + 2:lo + 2 + m], d1[lo + 1:lo + 1 + m], d2[lo:lo + m]
            for p in range(m):                                     # in the general loop's order: j = 0, 1, 2
                f[p] = ((f[p] + g0[p]) + g1[p]) + g2[p]
            dst[b + m + 1] = (dst[b + m + 1] + d1[lo + m + 1]) + d2[lo + m]   # d0[hi] is outside


@njit(cache=True, nogil=True)
def _im2col_general(x, kh, kw, sh, sw, ph, pw, oh, ow):
    n_, c_, h_, w_ = x.shape
    cols = np.empty((c_ * kh * kw, n_ * oh * ow), dtype=x.dtype)
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_):
                    for y in range(oh):
                        base = (n * oh + y) * ow
                        iy = y * sh - ph + i
                        if iy < 0 or iy >= h_:
                            for xo in range(ow):
                                cols[row, base + xo] = 0
                            continue
                        for xo in range(ow):
                            ix = xo * sw - pw + j
                            cols[row, base + xo] = x[n, c, iy, ix] if 0 <= ix < w_ else 0
    return cols


@njit(cache=True, nogil=True)
def _col2im_general(cols, n_, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow):
    dx = np.zeros((n_, c_, h_, w_), dtype=cols.dtype)
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_):
                    for y in range(oh):
                        iy = y * sh - ph + i
                        if iy < 0 or iy >= h_:
                            continue
                        base = (n * oh + y) * ow
                        for xo in range(ow):
                            ix = xo * sw - pw + j
                            if 0 <= ix < w_:
                                dx[n, c, iy, ix] += cols[row, base + xo]
    return dx


def im2col_reference(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Plain NumPy im2col: one strided slice of the padded input per kernel offset (i, j)."""
    n_, c_, _, _ = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((c_, kh, kw, n_, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw].transpose(1, 0, 2, 3)
    return cols.reshape(c_ * kh * kw, n_ * oh * ow)


def col2im_reference(cols, n_, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow):
    """Plain NumPy col2im: the adjoint of im2col_reference (slices added, padding dropped)."""
    cols = cols.reshape(c_, kh, kw, n_, oh, ow)
    dxp = np.zeros((n_, c_, h_ + 2 * ph + sh, w_ + 2 * pw + sw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols[:, i, j].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxp[:, :, ph:ph + h_, pw:pw + w_])
