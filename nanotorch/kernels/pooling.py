"""Max pooling: the forward keeps the argmax of every window, the backward routes the gradient there.

    out[n, c, y, x] = max over the window of x[n, c, iy, ix]        (padding counts as -inf)
    arg[n, c, y, x] = iy * W + ix of that max (the first one in scan order, as PyTorch; a NaN wins,
                      and of several NaNs the last one)

The max is piecewise the identity on one input, so d out / d x is 1 at the argmax and 0 elsewhere:
the backward adds each dout into dx at its argmax (windows may overlap, hence +=).

Kernel 2 with stride 2 (every pooling layer of the MNIST model) has its own kernels: its windows
do not overlap, and it keeps only which of the window's four pixels won (an int8 code).
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.tasks import PRANGE


@njit(cache=True, nogil=True)
def maxpool2d_forward(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """x: (N, C, H, W) -> (out: (N, C, oh, ow), argmax: (N, C, oh, ow) int64 flat index into H*W)."""
    n_, c_, h_, w_ = x.shape
    out = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    arg = np.empty((n_, c_, oh, ow), dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for y in range(oh):
                i0 = max(y * sh - ph, 0)                     # the window, clipped to the image
                i1 = min(y * sh - ph + kh, h_)
                for xo in range(ow):
                    j0 = max(xo * sw - pw, 0)
                    j1 = min(xo * sw - pw + kw, w_)
                    best = x[n, c, i0, j0]
                    besti = i0 * w_ + j0
                    for iy in range(i0, i1):
                        for ix in range(j0, j1):
                            v = x[n, c, iy, ix]
                            if v > best or v != v:           # v != v: NaN wins, as in PyTorch
                                best = v
                                besti = iy * w_ + ix
                    out[n, c, y, xo] = best
                    arg[n, c, y, xo] = besti
    return out, arg


@njit(cache=True, nogil=True)
def maxpool2x2_forward(x, oh, ow, parallel=False):
    """The same for kernel 2, stride 2, no padding (every pooling layer of the MNIST model), keeping
    not a flat index but the window's winner: x: (N, C, H, W) -> (out, window: (N, C, oh, ow) int8),
    window = 2 * dy + dx for the pixel (2y + dy, 2x + dx) that won. The windows do not overlap, so
    that is all the backward needs (maxpool2d_backward with ``windows``), in an eighth of the
    memory of an int64 index.

    With H = 2 * oh and W = 2 * ow the windows tile the batch: seen as N*C*oh pairs of rows of
    width W, output row r is the max over input rows 2r and 2r + 1, whatever plane they belong to.
    One pass over all of those pairs, with no work per plane (which would dominate on 4x4 planes).
    Within a window the top pair's winner (right only if larger, or NaN), then the bottom pair's,
    then the bottom one only if larger (or NaN): PyTorch's scan order, first of equal values. Other
    sizes (odd ones: ceil_mode keeps a last, cut window; floor mode drops a last row or column) are
    first copied to 2 * oh x 2 * ow planes (``tiled_planes``). One task per output row;
    ``parallel`` spreads them over Numba's threads (tasks.py).
    """
    return _maxpool2x2_rows(_whole_windows(x, oh, ow), oh, ow, parallel)


@njit(nogil=True)
def _whole_windows(x, oh, ow):
    """x as C-contiguous planes of 2 * oh x 2 * ow (tiled_planes when its size is another)."""
    if x.shape[2] != 2 * oh or x.shape[3] != 2 * ow:
        return tiled_planes(x, oh, ow)
    return np.ascontiguousarray(x)


@njit(nogil=True, **PRANGE)
def _maxpool2x2_rows(x, oh, ow, parallel):
    """maxpool2x2_forward of C-contiguous planes of 2 * oh x 2 * ow."""
    n_, c_, _, w_ = x.shape
    rows = n_ * c_ * oh
    out, window = np.empty((n_, c_, oh, ow), dtype=x.dtype), np.empty((n_, c_, oh, ow), dtype=np.int8)
    pairs, out_rows, window_rows = x.reshape(rows, 2, w_), out.reshape(rows, ow), window.reshape(rows, ow)
    if parallel:
        for r in prange(rows):
            _argmax_row(pairs[r, 0], pairs[r, 1], out_rows[r], window_rows[r])
    else:
        for r in range(rows):
            _argmax_row(pairs[r, 0], pairs[r, 1], out_rows[r], window_rows[r])
    return out, window


@njit(cache=True, nogil=True)
def tiled_planes(x, oh, ow):
    """x: (N, C, H, W) -> (N, C, 2 * oh, 2 * ow), the planes cut or extended with -inf (for an
    integer x, its smallest value) so that the 2x2 windows tile them. The added pixels never win a
    window over a pixel of the image: they are never larger, and ties go to the first in scan
    order, which is always in the image. So the maxima and window codes are those of the windows
    cut at the edge."""
    n_, c_, h_, w_ = x.shape
    out = np.empty((n_, c_, 2 * oh, 2 * ow), dtype=x.dtype)
    integer = x.dtype.type(0.5) == 0                     # -inf has no integer value
    low = x.min() if integer else x.dtype.type(-np.inf)
    for n in range(n_):
        for c in range(c_):
            for y in range(2 * oh):
                row = out[n, c, y]
                if y >= h_:
                    row[:] = low
                    continue
                for i in range(min(w_, 2 * ow)):
                    row[i] = x[n, c, y, i]
                for i in range(w_, 2 * ow):
                    row[i] = low
    return out


@njit(nogil=True, inline="always")
def _argmax_row(top, bottom, out, window):
    """One output row from the two input rows below it."""
    for k in range(out.size):
        a, b, c, d = top[2 * k], top[2 * k + 1], bottom[2 * k], bottom[2 * k + 1]
        top_right = (b > a) | (b != b)                       # b != b: NaN wins, as in PyTorch
        t = b if top_right else a
        bottom_right = (d > c) | (d != d)
        u = d if bottom_right else c
        low = (u > t) | (u != u)
        out[k] = u if low else t
        window[k] = 2 + bottom_right if low else top_right


@njit(cache=True, nogil=True)
def maxpool2x2_max(x, oh, ow, parallel=False):
    """The max alone, for forwards that keep nothing (no_grad): kernel 2, stride 2, no padding.

    The same comparisons as maxpool2x2_forward's, in the same order (the top row's two pixels, the
    bottom row's, then the two winners), without the window code. Rows as in maxpool2x2_forward,
    one pass. So the values are ``maxpool2x2_forward``'s bit for bit: NaN wins, and a window whose
    maximum is a tie between +0.0 and -0.0 gives the same zero.
    """
    return _maxpool2x2_max_rows(_whole_windows(x, oh, ow), oh, ow, parallel)


@njit(nogil=True, **PRANGE)
def _maxpool2x2_max_rows(x, oh, ow, parallel):
    n_, c_, _, w_ = x.shape
    rows = n_ * c_ * oh
    out = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    pairs, out_rows = x.reshape(rows, 2, w_), out.reshape(rows, ow)
    if parallel:
        for r in prange(rows):
            _max_row(pairs[r, 0], pairs[r, 1], out_rows[r])
    else:
        for r in range(rows):
            _max_row(pairs[r, 0], pairs[r, 1], out_rows[r])
    return out


@njit(nogil=True, inline="always")
def _max_row(top, bottom, out):
    for k in range(out.size):
        tl, bl, tr, br = top[2 * k], bottom[2 * k], top[2 * k + 1], bottom[2 * k + 1]
        upper = tr if (tr > tl) | (tr != tr) else tl        # the top row's max (NaN wins)
        lower = br if (br > bl) | (br != br) else bl        # the bottom row's
        out[k] = lower if (lower > upper) | (lower != lower) else upper


@njit(cache=True, nogil=True, **PRANGE)
def maxpool2d_backward(dout, arg, h_, w_, parallel=False, windows=False):
    """dout, arg: (N, C, oh, ow) -> dx: (N, C, H, W): each dout added to the pixel its window's
    max came from, zeros elsewhere. ``arg`` holds flat indices into H*W (maxpool2d_forward), or
    with ``windows`` the int8 codes 2 * dy + dx of maxpool2x2_forward (the pixel (2y + dy, 2x + dx)).
    Added onto zeros, so a -0.0 gradient becomes +0.0, as PyTorch's scatter-add makes it. One task
    per plane (tasks.py)."""
    n_, c_ = dout.shape[:2]
    dx = np.empty((n_, c_, h_ * w_), dtype=dout.dtype)
    if parallel:
        for plane in prange(n_ * c_):
            _scatter_plane(dout[plane // c_, plane % c_], arg[plane // c_, plane % c_], dx[plane // c_, plane % c_],
                           w_, windows)
    else:
        for plane in range(n_ * c_):
            _scatter_plane(dout[plane // c_, plane % c_], arg[plane // c_, plane % c_], dx[plane // c_, plane % c_],
                           w_, windows)
    return dx.reshape(n_, c_, h_, w_)


@njit(nogil=True)
def _scatter_plane(dout, arg, dx, w_, windows):
    dx[:] = 0
    for y in range(dout.shape[0]):
        for xo in range(dout.shape[1]):
            k = int(arg[y, xo])                              # (an int8 code would overflow the index as Python)
            dx[(2 * y + (k >> 1)) * w_ + 2 * xo + (k & 1) if windows else k] += dout[y, xo]


@njit(cache=True, nogil=True)
def global_avg_pool(x):
    """x: (N, C, H, W) -> (N, C, 1, 1), each plane's mean: its sum in float64 (as the fused BatchNorm's), over
    H * W, rounded once to x's dtype (a float32 sum in order would lose ~1e-5 on a 512 x 512 plane).
    A compiled loop: for the model's 4 x 28 x 2 x 2, NumPy's reshape, sum and division are mostly
    call overhead."""
    n_, c_, h_, w_ = x.shape
    t = x.dtype.type
    out = np.empty((n_, c_, 1, 1), dtype=x.dtype)
    for n in range(n_):
        for c in range(c_):
            s = 0.0
            for i in range(h_):
                for j in range(w_):
                    s += x[n, c, i, j]
            out[n, c, 0, 0] = t(s / (h_ * w_))
    return out


@njit(cache=True, nogil=True)
def global_avg_pool_backward(dout, h_, w_):
    """dout: (N, C, 1, 1) -> dx: (N, C, H, W): every pixel gets an equal share, dout / (H * W)."""
    n_, c_ = dout.shape[:2]
    count = dout.dtype.type(h_ * w_)
    dx = np.empty((n_, c_, h_, w_), dtype=dout.dtype)
    for n in range(n_):
        for c in range(c_):
            share = dout[n, c, 0, 0] / count
            for i in range(h_):
                for j in range(w_):
                    dx[n, c, i, j] = share
    return dx


def global_avg_pool_reference(x):
    return x.mean(axis=(2, 3), keepdims=True)


def global_avg_pool_backward_reference(dout, h_, w_):
    return np.broadcast_to(dout / (h_ * w_), dout.shape[:2] + (h_, w_)).copy()


def maxpool2d_forward_reference(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Plain NumPy max pooling: pad with -inf, gather every window, take the first argmax (or the
    last NaN, if the window has any: PyTorch's scan replaces its max by every NaN it meets)."""
    n_, c_, h_, w_ = x.shape
    big_h = max(h_ + 2 * ph, (oh - 1) * sh + kh)
    big_w = max(w_ + 2 * pw, (ow - 1) * sw + kw)
    xp = np.full((n_, c_, big_h, big_w), -np.inf, dtype=x.dtype)
    xp[:, :, ph:ph + h_, pw:pw + w_] = x
    windows = np.empty((n_, c_, oh, ow, kh * kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            windows[..., i * kw + j] = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
    nan = np.isnan(windows)
    k = np.where(nan.any(axis=-1), kh * kw - 1 - np.argmax(nan[..., ::-1], axis=-1), windows.argmax(axis=-1))
    out = np.take_along_axis(windows, k[..., None], axis=-1)[..., 0]
    iy = np.arange(oh)[:, None] * sh - ph + k // kw
    ix = np.arange(ow)[None, :] * sw - pw + k % kw
    return out, (iy * w_ + ix).astype(np.int64)


def maxpool2d_backward_reference(dout, arg, h_, w_):
    n_, c_ = dout.shape[:2]
    dx = np.zeros((n_ * c_, h_ * w_), dtype=dout.dtype)
    rows = np.repeat(np.arange(n_ * c_), arg[0, 0].size)
    np.add.at(dx, (rows, arg.reshape(-1)), dout.reshape(-1))
    return dx.reshape(n_, c_, h_, w_)


def maxpool2x2_reference(x, oh, ow):
    """Plain NumPy twin of maxpool2x2_forward: each window's four pixels in scan order (-inf where
    ceil_mode cuts the window), the first maximum, or the last NaN if there is one (as PyTorch)."""
    n_, c_, h_, w_ = x.shape
    h2, w2 = min(h_, 2 * oh), min(w_, 2 * ow)
    xp = np.full((n_, c_, 2 * oh, 2 * ow), -np.inf, dtype=x.dtype)
    xp[:, :, :h2, :w2] = x[:, :, :h2, :w2]
    pixels = np.stack([xp[:, :, dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)], axis=-1)   # (N, C, oh, ow, 4)
    nan = np.isnan(pixels)
    window = np.where(nan.any(axis=-1), 3 - np.argmax(nan[..., ::-1], axis=-1),
                      np.argmax(np.where(nan, -np.inf, pixels), axis=-1))
    return np.take_along_axis(pixels, window[..., None], axis=-1)[..., 0], window.astype(np.int8)


def maxpool2x2_backward_reference(dout, window, h_, w_):
    """Plain NumPy twin of maxpool2d_backward with ``windows``: the codes as flat indices, then scatter-added."""
    oh, ow = dout.shape[2:]
    arg = (2 * np.arange(oh)[:, None] + window // 2) * w_ + 2 * np.arange(ow)[None, :] + window % 2
    return maxpool2d_backward_reference(dout, arg.astype(np.int64), h_, w_)
