"""im2col and col2im: turn a convolution into one matrix product, and scatter its gradient back.

Layout (chosen so the convolution is a batched GEMM with no transposes):

    x    : (N, C, H, W)
    cols : (N, C*KH*KW, OH*OW)      cols[n, (c*KH + i)*KW + j, y*OW + x]
                                      = x[n, c, y*sh - ph + i, x*sw - pw + j]   (0 outside the image)

so that ``out[n] = weight.reshape(OC, C*KH*KW) @ cols[n]``. col2im is the adjoint (transpose) of
im2col: every column entry is *added* back to the pixel it was copied from, which is exactly the
gradient of the copy.
"""
import numpy as np
from numba import njit


@njit(cache=True)
def im2col(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """x: (N, C, H, W) -> cols: (N, C*kh*kw, oh*ow)."""
    n_, c_, h_, w_ = x.shape
    cols = np.empty((n_, c_ * kh * kw, oh * ow), dtype=x.dtype)
    for n in range(n_):
        for c in range(c_):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for y in range(oh):
                        iy = y * sh - ph + i
                        base = y * ow
                        if iy < 0 or iy >= h_:
                            for xo in range(ow):
                                cols[n, row, base + xo] = 0
                            continue
                        for xo in range(ow):
                            ix = xo * sw - pw + j
                            if 0 <= ix < w_:
                                cols[n, row, base + xo] = x[n, c, iy, ix]
                            else:
                                cols[n, row, base + xo] = 0
    return cols


@njit(cache=True)
def col2im(cols, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow):
    """cols: (N, C*kh*kw, oh*ow) -> dx: (N, C, H, W), summing every entry into its source pixel."""
    n_ = cols.shape[0]
    dx = np.zeros((n_, c_, h_, w_), dtype=cols.dtype)
    for n in range(n_):
        for c in range(c_):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for y in range(oh):
                        iy = y * sh - ph + i
                        if iy < 0 or iy >= h_:
                            continue
                        base = y * ow
                        for xo in range(ow):
                            ix = xo * sw - pw + j
                            if 0 <= ix < w_:
                                dx[n, c, iy, ix] += cols[n, row, base + xo]
    return dx


def im2col_reference(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Plain NumPy im2col: one strided slice of the padded input per kernel offset (i, j)."""
    n_, c_, _, _ = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n_, c_, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
    return cols.reshape(n_, c_ * kh * kw, oh * ow)


def col2im_reference(cols, c_, h_, w_, kh, kw, sh, sw, ph, pw, oh, ow):
    """Plain NumPy col2im: the adjoint of im2col_reference (slices added, padding dropped)."""
    n_ = cols.shape[0]
    cols = cols.reshape(n_, c_, kh, kw, oh, ow)
    dxp = np.zeros((n_, c_, h_ + 2 * ph + sh, w_ + 2 * pw + sw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols[:, :, i, j]
    return np.ascontiguousarray(dxp[:, :, ph:ph + h_, pw:pw + w_])
