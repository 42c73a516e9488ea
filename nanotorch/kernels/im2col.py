"""im2col and col2im: turn a convolution into one matrix product, and scatter its gradient back.

Layout (the whole batch side by side, so each product is a single large GEMM):

    x    : (N, C, H, W)
    cols : (C*KH*KW, N*OH*OW)      cols[(c*KH + i)*KW + j, (n*OH + y)*OW + x]
                                      = x[n, c, y*sh - ph + i, x*sw - pw + j]   (0 outside the image)

so that the convolution is ``W.reshape(OC, C*KH*KW) @ cols``, of shape (OC, N*OH*OW). col2im is
the adjoint (transpose) of im2col: every column entry is *added* back to the pixel it was copied
from, which is exactly the gradient of a copy.

Two versions of each loop:
- general (any stride, padding): tests every index against the image border; LLVM turns that
  test into masked vector instructions, 3x faster than splitting each row into border and interior.
- "same" convolutions (stride 1, output as large as the input: 3x3 with padding 1, as in the
  MNIST model): with output and input planes the same size, the pixels read for kernel offset
  (i, j) are the whole input plane shifted by s = (i - ph) * W + (j - pw) in its flat layout. A
  row of cols is therefore one contiguous copy per image, clipped at the top and bottom; only the
  pixels of the columns that wrapped around to the neighbouring image row (x + j - pw outside
  [0, W)) are then set to zero. col2im is the same contiguous add in reverse, after zeroing those
  wrapped entries of cols (which the sum must skip). Measured 2-3x faster than the general loops
  at the model's shapes (the shorter the rows, the larger the gain).
"""
import numpy as np
from numba import njit

@njit(cache=True, nogil=True)
def im2col(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """x: (N, C, H, W) -> cols: (C*kh*kw, N*oh*ow)."""
    if sh == 1 and sw == 1 and oh == x.shape[2] and ow == x.shape[3]:
        return _im2col_same(x, kh, kw, ph, pw)
    return _im2col_general(x, kh, kw, sh, sw, ph, pw, oh, ow)


@njit(cache=True, nogil=True)
def col2im(cols, n_, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow, overwrite_cols=False):
    """cols: (C*kh*kw, N*oh*ow) -> dx: (N, C, H, W), summing every entry into its source pixel.
    With ``overwrite_cols`` the "same" path may use cols as scratch (saves a copy)."""
    if sh == 1 and sw == 1 and oh == h_ and ow == w_:
        return _col2im_same(cols if overwrite_cols else cols.copy(), n_, c_, h_, w_, kh, kw, ph, pw)
    return _col2im_general(cols, n_, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow)


@njit(inline="always")
def _same_offsets(i, j, h_, w_, ph, pw):
    """For kernel offset (i, j) of a "same" convolution: the flat shift s of the input plane; the
    flat output range [p0, p1) whose source stays inside the plane; the output rows [y0, y1) and
    columns [x0, x1) whose source row and column exist (the others read the padding)."""
    hw = h_ * w_
    s = (i - ph) * w_ + (j - pw)
    y0, y1 = max(0, ph - i), min(h_, h_ + ph - i)
    p0 = min(max(y0 * w_, -s), hw)
    p1 = max(min(y1 * w_, hw - s), p0)
    x0 = min(max(0, pw - j), w_)
    x1 = max(min(w_, w_ + pw - j), x0)
    return s, p0, p1, y0, y1, x0, x1


@njit(inline="always")
def _zero_wrapped(cols, row, base, w_, y0, y1, x0, x1):
    """Zero the entries whose contiguous shift wrapped into the neighbouring image row."""
    for y in range(y0, y1):
        for xo in range(x0):
            cols[row, base + y * w_ + xo] = 0
        for xo in range(x1, w_):
            cols[row, base + y * w_ + xo] = 0


@njit(cache=True, nogil=True)
def _im2col_same(x, kh, kw, ph, pw):
    n_, c_, h_, w_ = x.shape
    hw = h_ * w_
    cols = np.empty((c_ * kh * kw, n_ * hw), dtype=x.dtype)
    planes = np.ascontiguousarray(x).reshape(n_, c_, hw)
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                s, p0, p1, y0, y1, x0, x1 = _same_offsets(i, j, h_, w_, ph, pw)
                for n in range(n_):
                    base = n * hw
                    for p in range(p0):
                        cols[row, base + p] = 0
                    src = planes[n, c, p0 + s:p1 + s]
                    dst = cols[row, base + p0:base + p1]
                    for p in range(src.size):                       # the contiguous copy
                        dst[p] = src[p]
                    for p in range(p1, hw):
                        cols[row, base + p] = 0
                    _zero_wrapped(cols, row, base, w_, y0, y1, x0, x1)   # they read the padding
    return cols


@njit(cache=True, nogil=True)
def _col2im_same(cols, n_, c_, h_, w_, kh, kw, ph, pw):
    hw = h_ * w_
    dx = np.zeros((n_, c_, hw), dtype=cols.dtype)
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                s, p0, p1, y0, y1, x0, x1 = _same_offsets(i, j, h_, w_, ph, pw)
                for n in range(n_):
                    base = n * hw
                    _zero_wrapped(cols, row, base, w_, y0, y1, x0, x1)   # they came from the padding
                    src = cols[row, base + p0:base + p1]
                    dst = dx[n, c, p0 + s:p1 + s]
                    for p in range(src.size):                       # the contiguous add
                        dst[p] += src[p]
    return dx.reshape(n_, c_, h_, w_)


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
