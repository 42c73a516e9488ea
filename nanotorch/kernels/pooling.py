"""Max pooling: the forward keeps the argmax of every window, the backward routes the gradient there.

    out[n, c, y, x] = max over the window of x[n, c, iy, ix]        (padding counts as -inf)
    arg[n, c, y, x] = iy * W + ix of that max (the first one in scan order, as PyTorch; NaN wins)

The max is piecewise the identity on one input, so d out / d x is 1 at the argmax and 0 elsewhere:
the backward adds each dout into dx at its argmax (windows may overlap, hence +=).
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


@njit(cache=True, nogil=True, **PRANGE)
def maxpool2x2_forward(x, oh, ow, parallel=False):
    """The same for kernel 2, stride 2, no padding (every pooling layer of the MNIST model).

    With H and W even every window is whole, and the max is taken in two flat passes (2.5x faster
    at the model's shapes than one pass over windows): first the max of each horizontal pair
    (x[2k], x[2k+1]) of the flat array, which never straddles two rows since W is even; then, for
    each output row, the max of the two rows of pair maxima below it. Choosing the second value
    only when it is larger (or NaN) keeps PyTorch's first-in-scan-order argmax. Odd sizes
    (ceil_mode) go through ``_maxpool2x2_any``. One task per plane; ``parallel`` spreads them over
    Numba's threads (tasks.py).
    """
    n_, c_, h_, w_ = x.shape
    if h_ % 2 or w_ % 2:
        return _maxpool2x2_any(x, oh, ow)
    out = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    arg = np.empty((n_, c_, oh, ow), dtype=np.int64)
    if parallel:
        for plane in prange(n_ * c_):
            _argmax_plane(x[plane // c_, plane % c_], out[plane // c_, plane % c_], arg[plane // c_, plane % c_])
    else:
        for plane in range(n_ * c_):
            _argmax_plane(x[plane // c_, plane % c_], out[plane // c_, plane % c_], arg[plane // c_, plane % c_])
    return out, arg


@njit(nogil=True, inline="always")
def _argmax_plane(x, out, arg):
    """x: (H, W), H and W even -> out, arg: (H/2, W/2), by the two passes above."""
    oh, ow = out.shape
    w_ = x.shape[1]
    flat = np.ascontiguousarray(x).reshape(-1)
    pmax = np.empty(flat.size // 2, dtype=x.dtype)       # max of each horizontal pair ...
    pright = np.empty(flat.size // 2, dtype=np.int8)      # ... and 1 if it is the right one
    for k in range(pmax.size):
        a, b = flat[2 * k], flat[2 * k + 1]
        right = (b > a) | (b != b)                        # b != b: NaN wins, as in PyTorch
        pmax[k] = b if right else a
        pright[k] = 1 if right else 0
    for y in range(oh):                                   # output row y reads pair rows 2y and 2y + 1
        top, bottom = pmax[2 * y * ow:(2 * y + 1) * ow], pmax[(2 * y + 1) * ow:(2 * y + 2) * ow]
        top_right, bottom_right = pright[2 * y * ow:(2 * y + 1) * ow], pright[(2 * y + 1) * ow:(2 * y + 2) * ow]
        o, a_ = out[y], arg[y]
        corner = 2 * y * w_                               # flat index of the window row's first pixel
        for xo in range(ow):
            low = (bottom[xo] > top[xo]) | (bottom[xo] != bottom[xo])
            o[xo] = bottom[xo] if low else top[xo]
            a_[xo] = corner + 2 * xo + (w_ + bottom_right[xo] if low else top_right[xo])


@njit(cache=True, nogil=True, **PRANGE)
def maxpool2x2_max(x, oh, ow, parallel=False):
    """The max alone, for forwards that keep nothing (no_grad): kernel 2, stride 2, no padding.

    Without the argmax the order of comparisons is free, so it goes rows first: the max of each
    pair of rows (two contiguous rows, a loop the compiler vectorises), then of each horizontal
    pair of that. 3.5x faster than the argmax kernel at 4x16x28x28. The values are the same as
    ``maxpool2x2_forward``'s (NaN wins), except that a window whose maximum is a tie between +0.0
    and -0.0 may give the other zero: which of two tied inputs won is not kept.
    """
    n_, c_, h_, w_ = x.shape
    if h_ % 2 or w_ % 2:
        return _maxpool2x2_any(x, oh, ow)[0]
    out = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    if parallel:
        for plane in prange(n_ * c_):
            _max_plane(x[plane // c_, plane % c_], out[plane // c_, plane % c_])
    else:
        for plane in range(n_ * c_):
            _max_plane(x[plane // c_, plane % c_], out[plane // c_, plane % c_])
    return out


@njit(nogil=True, inline="always")
def _max_plane(x, out):
    oh, w_ = out.shape[0], x.shape[1]
    flat = np.ascontiguousarray(x).reshape(-1)
    vmax = np.empty(oh * w_, dtype=x.dtype)               # max of rows 2y and 2y + 1, for each y
    for y in range(oh):
        top, bottom = flat[2 * y * w_:(2 * y + 1) * w_], flat[(2 * y + 1) * w_:(2 * y + 2) * w_]
        v = vmax[y * w_:(y + 1) * w_]
        for i in range(w_):
            a, b = top[i], bottom[i]
            v[i] = b if (b > a) | (b != b) else a         # b != b: NaN wins, as in PyTorch
    o = out.reshape(-1)
    for k in range(o.size):
        a, b = vmax[2 * k], vmax[2 * k + 1]
        o[k] = b if (b > a) | (b != b) else a


@njit(cache=True, nogil=True)
def _maxpool2x2_any(x, oh, ow):
    """Kernel 2, stride 2 for any H, W: one pass over windows.

    Whole windows are four fixed loads and three selects, with no loop over the window, so the
    compiler vectorises along each output row; the windows that ceil_mode cuts at the bottom or
    right edge fall back to the general kernel's clipped loop.
    """
    n_, c_, h_, w_ = x.shape
    out = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    arg = np.empty((n_, c_, oh, ow), dtype=np.int64)
    full_h, full_w = min(oh, h_ // 2), min(ow, w_ // 2)
    for n in range(n_):
        for c in range(c_):
            for y in range(oh):
                for xo in range(ow):
                    iy, ix = 2 * y, 2 * xo
                    if y < full_h and xo < full_w:
                        best, besti = x[n, c, iy, ix], iy * w_ + ix
                        v = x[n, c, iy, ix + 1]
                        if v > best or v != v:
                            best, besti = v, iy * w_ + ix + 1
                        v = x[n, c, iy + 1, ix]
                        if v > best or v != v:
                            best, besti = v, (iy + 1) * w_ + ix
                        v = x[n, c, iy + 1, ix + 1]
                        if v > best or v != v:
                            best, besti = v, (iy + 1) * w_ + ix + 1
                    else:
                        best, besti = x[n, c, iy, ix], iy * w_ + ix
                        for i in range(iy, min(iy + 2, h_)):
                            for j in range(ix, min(ix + 2, w_)):
                                v = x[n, c, i, j]
                                if v > best or v != v:
                                    best, besti = v, i * w_ + j
                    out[n, c, y, xo] = best
                    arg[n, c, y, xo] = besti
    return out, arg


@njit(cache=True, nogil=True, **PRANGE)
def maxpool2d_backward(dout, arg, h_, w_, parallel=False):
    """dout, arg: (N, C, oh, ow) -> dx: (N, C, H, W). One task per plane (tasks.py)."""
    n_, c_ = dout.shape[:2]
    dx = np.empty((n_, c_, h_ * w_), dtype=dout.dtype)
    if parallel:
        for plane in prange(n_ * c_):
            _scatter_plane(dout[plane // c_, plane % c_], arg[plane // c_, plane % c_], dx[plane // c_, plane % c_])
    else:
        for plane in range(n_ * c_):
            _scatter_plane(dout[plane // c_, plane % c_], arg[plane // c_, plane % c_], dx[plane // c_, plane % c_])
    return dx.reshape(n_, c_, h_, w_)


@njit(nogil=True)
def _scatter_plane(dout, arg, dx):
    dx[:] = 0
    for y in range(dout.shape[0]):
        for xo in range(dout.shape[1]):
            dx[arg[y, xo]] += dout[y, xo]


def maxpool2d_forward_reference(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Plain NumPy max pooling: pad with -inf, gather every window, take max and first argmax."""
    n_, c_, h_, w_ = x.shape
    big_h = max(h_ + 2 * ph, (oh - 1) * sh + kh)
    big_w = max(w_ + 2 * pw, (ow - 1) * sw + kw)
    xp = np.full((n_, c_, big_h, big_w), -np.inf, dtype=x.dtype)
    xp[:, :, ph:ph + h_, pw:pw + w_] = x
    windows = np.empty((n_, c_, oh, ow, kh * kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            windows[..., i * kw + j] = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
    k = windows.argmax(axis=-1)
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
