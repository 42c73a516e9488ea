"""Winograd F(2x2, 3x3): the 3x3 "same" convolution with 2.25x fewer multiplications, for inference.

For one input and one output channel with 3x3 weights g, a 4x4 patch d of the padded input gives
a 2x2 tile of the output (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):

    Y = A^T [ (G g G^T) . (B^T d B) ] A          (. elementwise: 16 products where direct needs 36)

    B^T = [1  0 -1  0]      G = [ 1    0    0 ]      A^T = [1  1  1  0]
          [0  1  1  0]          [1/2  1/2  1/2]            [0  1 -1 -1]
          [0 -1  1  0]          [1/2 -1/2  1/2]
          [0  1  0 -1]          [ 0    0    1 ]

In one dimension: y0 = d0 g0 + d1 g1 + d2 g2 and y1 = d1 g0 + d2 g1 + d3 g2 from the four products
m0 = (d0 - d2) g0, m1 = (d1 + d2)(g0 + g1 + g2) / 2, m2 = (d2 - d1)(g0 - g1 + g2) / 2 and
m3 = (d1 - d3) g2 (B^T d, G g, then A^T m), as y0 = m0 + m1 + m2 and y1 = m1 - m2 - m3; the 2-D
form applies it to the columns of the 4x4 patch, then to its rows (M[:, k, t] below is read as
4x4, p = 4 * row + column). The sums over input channels commute with A, so with U = G g G^T for
each (output, input) channel pair and V = B^T d B for each tile, the 16 positions p of the
transformed tiles are 16 matrix products,

    M[p, k, t] = sum over c of U[p, k, c] * V[p, c, t],        Y(k, t) = A^T M[:, k, t] A,

4 multiply-adds per output and input channel against the direct kernel's 9; the transforms are
additions only, done once per input plane (V) and once per output plane (Y).

The input's layout makes every transform a run of contiguous vector loads. Tile (i, j) covers
output rows 2i, 2i + 1 and columns 2j, 2j + 1, and reads the padded input's rows 2i..2i+3 and
columns 2j..2j+3. Split the padded plane ((H + 2) x (W + 2)) into four parity planes by (row
parity, column parity), each (H/2 + 1) rows of R = W/2 + 1 values, flat: the padded pixel
(2r + a, 2s + b) sits at r * R + s in plane (a, b). Then tile t = i * R + j reads d[a][b] at
t + (a // 2) * R + b // 2 of plane (a % 2, b % 2): for consecutive tiles, contiguous loads at the
offsets 0, 1, R and R + 1. As in the direct kernel's padded grid, the tiles j = W/2 (one a row)
straddle two rows, and are computed and dropped.

Each image in turn (with threads > 1, the images in that many contiguous shares, one a thread):
split its planes, transform them (V: 16 x C x T), multiply (M: 16 x OC x T, four output channels
x three vectors of tiles in registers as in conv3x3.py), and transform back row by row: a tile
row's two output columns interleave into the image row (simd.interleave).
The scratch arrays (a few hundred KB) are made once per share at each call, reused for its
images, and stay in the L2 cache.

conv3x3_winograd_bn_gelu goes on to the end of an evaluation block: the output transform applies
BatchNorm's multiply-add (folded into a scale and a shift a channel) as it writes an image's
output, and GELU goes over that output at once, while it is in cache. conv3x3_winograd_pooled goes
on to the 2x2 max pooling after the block too: a tile's 2x2 outputs are one pooling window, so
the output transform hands each window's four values, BatchNorm's multiply-add applied, straight
to GELU and the max, and the block's full-size output is never written (with two GELUs a window,
not four: its docstring says why). (winograd_small.py does the same on small planes, with the
images of a batch in the vector lanes.)

The scratch rows of V and M are a vector longer than T where that keeps the 16 positions p,
which the transforms read or write together, off a stride of a multiple of 2048 bytes
(row_length): at a multiple of 4096 all 16 fall in one set of the L1 cache.

Rounding: U is computed in float64 and rounded once; the transforms' additions round in the
input's dtype. So the output differs from the direct kernel's by rounding (the transforms add and
subtract inputs before the products; in float32, up to 8e-6 on outputs of about 15 in the tests,
which bound it). nn.Conv2d uses it where nothing needs a backward (under no_grad), with at least 8
input channels, on planes with even sides at least 14 wide: evaluation's 8->12, 12->16 and 16->20
layers (the figures are in docs/performance.md).
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.conv3x3 import _multiply_add
from nanotorch.kernels.gelu import FAST, gelu, gelu_forward_reference
from nanotorch.kernels.simd import (add, deinterleave, fma, interleave, lanes_of, load, load_first, maximum, minimum,
                                    splat, store, store_first, sub)
from nanotorch.kernels.tasks import PRANGE

PLAIN, POOLED, ACTIVATED = 0, 1, 2                 # what _images writes: z; pooled blocks; blocks

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


@njit(cache=True, nogil=True)
def winograd_weights(w):
    """w: (OC, C, 3, 3) -> U: (16, OC rounded up to 4, C), U[4a + b, k, c] = (G w[k, c] G^T)[a, b]
    computed in float64 and rounded once to w's dtype; the padding channels are zero. G w G^T is
    G's three columns combined: the 1-D transform (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2)
    on each column of w[k, c], then on each row."""
    oc, c_ = w.shape[0], w.shape[1]
    u = np.zeros((16, -(-oc // 4) * 4, c_), dtype=w.dtype)
    g = np.empty((4, 3))
    for k in range(oc):
        for c in range(c_):
            for j in range(3):
                g0, g1, g2 = np.float64(w[k, c, 0, j]), np.float64(w[k, c, 1, j]), np.float64(w[k, c, 2, j])
                g[0, j], g[1, j], g[2, j], g[3, j] = g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2
            for a in range(4):
                g0, g1, g2 = g[a, 0], g[a, 1], g[a, 2]
                u[4 * a, k, c] = g0
                u[4 * a + 1, k, c] = (g0 + g1 + g2) / 2
                u[4 * a + 2, k, c] = (g0 - g1 + g2) / 2
                u[4 * a + 3, k, c] = g2
    return u


def winograd_weights_reference(w):
    """Plain NumPy: G w G^T for every channel pair, in float64, rounded once; (16, OC rounded up to 4, C)."""
    oc, c = w.shape[:2]
    u = np.zeros((16, -(-oc // 4) * 4, c), dtype=w.dtype)
    u[:, :oc] = np.einsum("ai,kcij,bj->abkc", G, w.astype(np.float64), G).reshape(16, oc, c)
    return u


@njit(nogil=True)
def geometry(h_, w_, lanes):
    """(R, T, S) for H x W planes: R = W/2 + 1 values a parity-plane row (and a tile row); T the tiles
    transformed an image, whole vectors, enough for the last tile row's last vector; S a parity
    plane's length, room for the transform's reads at t + R + 1 (zeros past the image)."""
    r_ = w_ // 2 + 1
    t_ = _whole_vectors((h_ // 2 - 1) * r_ + _whole_vectors(w_ // 2, lanes), lanes)
    return r_, t_, t_ + r_ + 1


@njit(nogil=True)
def row_length(rows, t_, lanes, itemsize):
    """The row length of a (16, rows, length) scratch array holding t_ tiles a row: t_, or one vector
    more where that keeps the 16 positions p (which the transforms read or write together, a row of
    each) apart by a stride that is not a multiple of 2048 bytes. At a multiple of 4096 all 16 would
    share one set of the L1 cache, whose 12 ways cannot hold them (with 20 input channels of 16
    tiles of 16 images, float32: winograd_small.py's 7x7 layer took 2.3 times as long). (Where one
    vector more does not change the stride modulo 2048, no number of vectors does.)"""
    if rows * t_ * itemsize % 2048 == 0 and rows * lanes * itemsize % 2048 != 0:
        return t_ + lanes
    return t_


@njit(nogil=True, inline="always")
def _whole_vectors(n, lanes):
    """n rounded up to a multiple of lanes."""
    return -(-n // lanes) * lanes


@njit(cache=True, nogil=True, **FAST)
def conv3x3_winograd(x, u, out_channels, threads=1):
    """x: (N, C, H, W), C-contiguous, H and W even; u: winograd_weights(w) of x's dtype -> z: (OC, N, H*W),
    the 3x3 "same" convolution's output (stride 1, padding 1) in the layout of conv3x3_same's
    channels_first. (A strided x or a u of another dtype is refused by Numba's typing, before this
    body runs.) ``threads`` > 1: the images in that many contiguous shares, one a thread. It takes a
    count where the other kernels take a ``parallel`` flag (tasks.py) because each share makes its
    scratch arrays once: with a task per image, each image would make its own."""
    _check(x, u, out_channels)
    out = np.empty((out_channels, x.shape[0], x.shape[2] * x.shape[3]), dtype=x.dtype)
    no = np.empty(0, dtype=x.dtype)
    _shares(x, u, out, no, no, PLAIN, threads)
    return out


@njit(cache=True, nogil=True, **FAST)
def conv3x3_winograd_pooled(x, u, out_channels, scale, shift, threads=1):
    """The same convolution z, then BatchNorm folded into scale and shift (per output channel), GELU,
    and 2x2 max pooling (stride 2), in one pass: x as conv3x3_winograd's -> (N, OC, H/2 * W/2),
    max over each window of GELU(scale * z + shift) (a whole evaluation block and the pooling after it).

    A tile's 2x2 outputs are exactly one pooling window, so the kernel pools straight out of the
    output transform and never writes z. And two GELUs a window do where the separate passes compute
    four: GELU falls down to its minimum (at -0.75) and rises after, so over any set of values its
    largest is at the set's smallest or largest value: max GELU(u) = max(GELU(min u), GELU(max u)).
    Computed GELU is not monotonic to the last bit on either side, so the result may differ from
    pooling the four GELUs by a few units in the last place. scale and shift: (OC,) of x's dtype.
    For finite x: a NaN in a window may not come out (simd.minimum), where the pooling layer's max
    lets a NaN win, so a caller checks all_finite(x) first, as nn's ConvBNGELU does."""
    _check(x, u, out_channels)
    if scale.size != out_channels or shift.size != out_channels:
        raise ValueError("conv3x3_winograd_pooled: expected scale and shift of out_channels values")
    out = np.empty((x.shape[0], out_channels, x.shape[2] // 2 * (x.shape[3] // 2)), dtype=x.dtype)
    _shares(x, u, out, scale, shift, POOLED, threads)
    return out


@njit(cache=True, nogil=True, **FAST)
def conv3x3_winograd_bn_gelu(x, u, out_channels, scale, shift, threads=1):
    """The same convolution z, then BatchNorm folded into scale and shift (per output channel) and
    GELU: x as conv3x3_winograd's -> (N, OC, H*W), GELU(scale * z + shift) (a whole evaluation block).
    The output transform writes each image's scale * z + shift, and GELU runs over that image's
    output at once, while it is in cache: z is never written, nor read back by a pass of its own.
    scale and shift: (OC,) of x's dtype."""
    _check(x, u, out_channels)
    if scale.size != out_channels or shift.size != out_channels:
        raise ValueError("conv3x3_winograd_bn_gelu: expected scale and shift of out_channels values")
    out = np.empty((x.shape[0], out_channels, x.shape[2] * x.shape[3]), dtype=x.dtype)
    _shares(x, u, out, scale, shift, ACTIVATED, threads)
    return out


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def all_finite(x):
    """Whether the C-contiguous array x holds no NaN and no Inf: x * 0 is 0 for a finite value and
    NaN for the others, and so is the sum. (Compiled with reassociation alone, which lets the sum
    vectorise: with fastmath's nnan and ninf LLVM could take the answer for granted.)"""
    flat = x.reshape(-1)
    zero = flat.dtype.type(0)
    s = zero
    for i in range(flat.size):
        s += flat[i] * zero
    return s == zero


@njit(nogil=True)
def _check(x, u, out_channels):
    if x.shape[2] % 2 or x.shape[3] % 2 or u.shape[0] != 16 or u.shape[2] != x.shape[1] or u.shape[1] % 4 or \
            u.shape[1] < out_channels:
        raise ValueError("Winograd F(2x2, 3x3): expected x (N, C, H, W) with H and W even, and u (16, OC rounded "
                         "up to 4, C) from winograd_weights")


@njit(nogil=True, **PRANGE, **FAST)
def _shares(x, u, out, scale, shift, mode, threads):
    n_ = x.shape[0]
    if n_ == 0:
        return
    shares = min(n_, threads)
    if shares > 1:
        for share in prange(shares):
            _images(x, u, out, scale, shift, mode, share * n_ // shares, (share + 1) * n_ // shares)
    else:
        _images(x, u, out, scale, shift, mode, 0, n_)


@njit(nogil=True, **FAST)
def _images(x, u, out, scale, shift, mode, first, last):
    """Images first..last-1, with one set of scratch arrays. The parity planes' borders and tails are
    zeroed once: each image writes only the pixels inside them. ``mode``: PLAIN, out is (OC, N, H*W),
    as conv3x3_winograd; POOLED, (N, OC, H/2 * W/2), as conv3x3_winograd_pooled; ACTIVATED,
    (N, OC, H*W), as conv3x3_winograd_bn_gelu."""
    n_, c_, h_, w_ = x.shape
    lanes = lanes_of(x[0, 0, 0])
    r_, t_, s_ = geometry(h_, w_, lanes)
    planes = np.zeros((c_, 4, s_), dtype=x.dtype)
    v = np.empty((16, c_, row_length(c_, t_, lanes, x.itemsize)), dtype=x.dtype)
    m = np.empty((16, u.shape[1], row_length(u.shape[1], t_, lanes, x.itemsize)), dtype=x.dtype)
    oc = out.shape[0] if mode == PLAIN else out.shape[1]
    windows = h_ // 2 * (w_ // 2) if mode == POOLED else 0
    low, high = np.empty(oc * windows, dtype=x.dtype), np.empty(oc * windows, dtype=x.dtype)
    for n in range(first, last):
        for c in range(c_):
            _split(x[n, c], planes[c], r_)
            _transform_input(planes[c], r_, t_, v, c)
        _products(u, v, m, t_)
        if mode == POOLED:
            for k in range(oc):
                _transform_output_pooled(m, k, r_, h_, w_, scale[k], shift[k], low[k * windows:], high[k * windows:])
            _gelu_max(low, high, out[n].reshape(-1))
        elif mode == ACTIVATED:
            for k in range(oc):
                _transform_output(m, k, r_, h_, w_, out[n, k], True, scale[k], shift[k])
            _gelu_all(out[n].reshape(-1))
        else:
            for k in range(oc):
                _transform_output(m, k, r_, h_, w_, out[k, n], False, 1, 0)


@njit(nogil=True, **FAST)
def _split(x, planes, r_):
    """x: (H, W) -> its padded plane's four parity planes (2a + b: rows of parity a, columns of parity
    b). Image pixel (y, i) is padded pixel (y + 1, i + 1), so an image row's even columns go to
    columns 0.. of plane (a, 1) and its odd ones to columns 1.. of plane (a, 0): a vector of each
    from two vectors of the row (simd.deinterleave). Writes only the image's pixels."""
    h_, w_ = x.shape
    lanes = lanes_of(planes[0])
    for y in range(h_):
        a = (y + 1) % 2
        start = (y + 1) // 2 * r_
        src = x[y]
        for j in range(0, w_ // 2, lanes):
            n = min(lanes, w_ // 2 - j)                       # pairs of pixels (columns 2j + 2s, 2j + 2s + 1)
            even, odd = deinterleave(load_first(src, 2 * j, min(lanes, 2 * n)),
                                     load_first(src, 2 * j + lanes, max(0, 2 * n - lanes)))
            store_first(planes[2 * a + 1], start + j, even, n)
            store_first(planes[2 * a], start + j + 1, odd, n)


@njit(nogil=True, inline="always", **FAST)
def _transform_input(planes, r_, t_, v, c):
    """v[:, c, t] = B^T d B of tiles t = 0..T-1 (d[a][b] at t + (a // 2) * R + b // 2 of plane (a % 2, b % 2)),
    a vector of tiles at a time: B^T on each column of d (rows 0-2, 1+2, 2-1, 1-3), then on each row."""
    lanes = lanes_of(v[0, 0])
    p00, p01, p10, p11 = planes[0], planes[1], planes[2], planes[3]    # (row parity, column parity)
    for t in range(0, t_, lanes):
        d00, d01, d02, d03 = load(p00, t), load(p01, t), load(p00, t + 1), load(p01, t + 1)
        d10, d11, d12, d13 = load(p10, t), load(p11, t), load(p10, t + 1), load(p11, t + 1)
        s = t + r_
        d20, d21, d22, d23 = load(p00, s), load(p01, s), load(p00, s + 1), load(p01, s + 1)
        d30, d31, d32, d33 = load(p10, s), load(p11, s), load(p10, s + 1), load(p11, s + 1)
        _transform_row(sub(d00, d20), sub(d01, d21), sub(d02, d22), sub(d03, d23), v, 0, c, t)
        _transform_row(add(d10, d20), add(d11, d21), add(d12, d22), add(d13, d23), v, 4, c, t)
        _transform_row(sub(d20, d10), sub(d21, d11), sub(d22, d12), sub(d23, d13), v, 8, c, t)
        _transform_row(sub(d10, d30), sub(d11, d31), sub(d12, d32), sub(d13, d33), v, 12, c, t)


@njit(nogil=True, inline="always", **FAST)
def _transform_row(r0, r1, r2, r3, v, p, c, t):
    store(v[p, c], t, sub(r0, r2))
    store(v[p + 1, c], t, add(r1, r2))
    store(v[p + 2, c], t, sub(r2, r1))
    store(v[p + 3, c], t, sub(r1, r3))


@njit(nogil=True, **FAST)
def _products(u, v, m, t_):
    """m[p, k, :t_] = sum over c of u[p, k, c] * v[p, c, :t_]: four output channels at three vectors of
    tiles in registers (the rest in single vectors), each sum in the order of c, rounded once a term."""
    lanes = lanes_of(v[0, 0])
    block = 3 * lanes
    zero = splat(v.dtype.type(0))
    for p in range(16):
        for k in range(0, u.shape[1], 4):
            for t in range(0, t_ - block + 1, block):
                z0 = z1 = z2 = z3 = (zero, zero, zero)
                for c in range(v.shape[1]):
                    x = v[p, c]
                    tiles = load(x, t), load(x, t + lanes), load(x, t + 2 * lanes)
                    z0 = _multiply_add(u[p, k, c], tiles, z0)
                    z1 = _multiply_add(u[p, k + 1, c], tiles, z1)
                    z2 = _multiply_add(u[p, k + 2, c], tiles, z2)
                    z3 = _multiply_add(u[p, k + 3, c], tiles, z3)
                for i, z in enumerate((z0, z1, z2, z3)):
                    store(m[p, k + i], t, z[0])
                    store(m[p, k + i], t + lanes, z[1])
                    store(m[p, k + i], t + 2 * lanes, z[2])
            for t in range(t_ // block * block, t_, lanes):
                y0 = y1 = y2 = y3 = zero
                for c in range(v.shape[1]):
                    tile = load(v[p, c], t)
                    y0 = fma(splat(u[p, k, c]), tile, y0)
                    y1 = fma(splat(u[p, k + 1, c]), tile, y1)
                    y2 = fma(splat(u[p, k + 2, c]), tile, y2)
                    y3 = fma(splat(u[p, k + 3, c]), tile, y3)
                store(m[p, k], t, y0)
                store(m[p, k + 1], t, y1)
                store(m[p, k + 2], t, y2)
                store(m[p, k + 3], t, y3)


@njit(nogil=True, **FAST)
def _transform_output(m, k, r_, h_, w_, out, affine, scale, shift):
    """out (H*W,) = output channel k's plane: for each tile row, A^T M A (rows m0+m1+m2, m1-m2-m3 of the
    4x4, then the same on columns) a vector of tiles at a time; each of the two output rows gets its
    tiles' two columns interleaved (simd.interleave), without the dropped tile. ``affine``: scale *
    y + shift (one multiply-add) in place of each output y."""
    lanes = lanes_of(out)
    k_, b_ = splat(out.dtype.type(scale)), splat(out.dtype.type(shift))
    for i in range(h_ // 2):
        for j in range(0, w_ // 2, lanes):
            t = i * r_ + j
            n = 2 * min(lanes, w_ // 2 - j)                   # output columns 2j.. of these tiles
            for row, f in enumerate(_columns(m, k, t)):
                left, right = _row(f)
                if affine:
                    left, right = fma(k_, left, b_), fma(k_, right, b_)
                lo, hi = interleave(left, right)
                start = (2 * i + row) * w_ + 2 * j
                store_first(out, start, lo, min(lanes, n))
                store_first(out, start + lanes, hi, max(0, n - lanes))


@njit(nogil=True, **FAST)
def _transform_output_pooled(m, k, r_, h_, w_, scale, shift, low, high):
    """Output channel k's windows, as _transform_output computes its outputs: u = scale * y + shift
    for a tile's four outputs y, and low[q], high[q] = the smallest and largest u of window q
    (q = i * W/2 + j, the window of tile (i, j))."""
    lanes = lanes_of(low)
    k_, b_ = splat(scale), splat(shift)
    for i in range(h_ // 2):
        for j in range(0, w_ // 2, lanes):
            t = i * r_ + j
            n = min(lanes, w_ // 2 - j)
            top, bottom = _columns(m, k, t)
            (y00, y01), (y10, y11) = _row(top), _row(bottom)
            u00, u01, u10, u11 = fma(k_, y00, b_), fma(k_, y01, b_), fma(k_, y10, b_), fma(k_, y11, b_)
            q = i * (w_ // 2) + j
            store_first(low, q, minimum(minimum(u00, u01), minimum(u10, u11)), n)
            store_first(high, q, maximum(maximum(u00, u01), maximum(u10, u11)), n)


@njit(nogil=True, **FAST)
def _gelu_max(low, high, out):
    """out[q] = max(GELU(low[q]), GELU(high[q])): one image's windows, all its channels in one loop
    (long enough to run in whole vectors)."""
    for q in range(out.size):
        out[q] = max(gelu(low[q]), gelu(high[q]))


@njit(nogil=True, **FAST)
def _gelu_all(a):
    """a[q] = GELU(a[q]): one image's output, all its channels in one loop."""
    for q in range(a.size):
        a[q] = gelu(a[q])


@njit(nogil=True, inline="always", **FAST)
def _columns(m, k, t):
    """A^T on each column of output channel k's 4x4 M, tiles t..t+lanes-1: its two rows (m0 + m1 + m2,
    m1 - m2 - m3), four vectors each."""
    return ((_column_sum(m, k, t, 0), _column_sum(m, k, t, 1), _column_sum(m, k, t, 2), _column_sum(m, k, t, 3)),
            (_column_difference(m, k, t, 0), _column_difference(m, k, t, 1), _column_difference(m, k, t, 2),
             _column_difference(m, k, t, 3)))


@njit(nogil=True, inline="always", **FAST)
def _row(f):
    """A^T on one of those rows: the tiles' (left, right) outputs."""
    return add(add(f[0], f[1]), f[2]), sub(sub(f[1], f[2]), f[3])


@njit(nogil=True, inline="always", **FAST)
def _column_sum(m, k, t, b):
    """Row 0 of A^T M at column b: m0 + m1 + m2 down the column."""
    return add(add(load(m[b, k], t), load(m[4 + b, k], t)), load(m[8 + b, k], t))


@njit(nogil=True, inline="always", **FAST)
def _column_difference(m, k, t, b):
    """Row 1 of A^T M at column b: m1 - m2 - m3 down the column."""
    return sub(sub(load(m[4 + b, k], t), load(m[8 + b, k], t)), load(m[12 + b, k], t))


def conv3x3_winograd_reference(x, w):
    """Plain NumPy, float64: the same algorithm tile by tile (the padded input's 4x4 patches at stride
    2, V = B^T d B, U = G g G^T, M summed over input channels, Y = A^T M A) -> (OC, N, H*W)."""
    n, c, h, w_ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    s = xp.strides
    d = np.lib.stride_tricks.as_strided(xp, (n, c, h // 2, w_ // 2, 4, 4), (s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]))
    v = np.einsum("ai,ncyxij,bj->ncyxab", B_T, d, B_T)
    u = np.einsum("ai,kcij,bj->kcab", G, w.astype(np.float64), G)
    y = np.einsum("ia,nkyxab,jb->nkyixj", A_T, np.einsum("kcab,ncyxab->nkyxab", u, v), A_T)
    return y.reshape(n, -1, h * w_).transpose(1, 0, 2)


def conv3x3_winograd_pooled_reference(x, w, scale, shift):
    """Plain NumPy, float64: the convolution, then GELU(scale * z + shift) of all four pixels of each
    2x2 window and their max, as the separate layers compute it -> (N, OC, H/2 * W/2)."""
    n, _, h, w_ = x.shape
    z = conv3x3_winograd_reference(x, w).transpose(1, 0, 2).reshape(n, -1, h, w_)
    a = gelu_forward_reference(scale.astype(np.float64)[:, None, None] * z + shift.astype(np.float64)[:, None, None])[0]
    return a.reshape(n, -1, h // 2, 2, w_ // 2, 2).max(axis=(3, 5)).reshape(n, -1, h // 2 * (w_ // 2))
