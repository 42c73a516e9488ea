"""Direct 3x3 "same" convolution (stride 1, padding 1), with no im2col columns.

Pad each input plane with a border of zeros and lay it out flat with row length Wp = W + 2. The
output pixel (y, x) then reads the nine pixels at flat positions p + s, p = y * Wp + x, for the
nine shifts s = i * Wp + j (i, j in 0..2), so a whole output plane is nine shifted multiply-adds:

    z[oc, p] = sum over ci, i, j of  w[oc, ci, i, j] * xp[ci, p + i * Wp + j]      p in [0, H * Wp)

(positions with x >= W straddle two rows: they are computed and dropped). Every read of a shift
is contiguous, so a vector of consecutive positions is one load. The kernel holds the sums of
four output channels at three vectors of positions in registers (simd.py's explicit vectors)
and goes once through all input channels and taps: each tap's 3 input loads and 4 weight
broadcasts feed 12 vector multiply-adds, and the sums are stored once at the end. (Written as
loops over arrays, which Numba vectorises by itself, the sums went through memory once per
input channel and kernel row, a load and a store per 3 multiply-adds: 9-17% slower on the Zen 4 in
a prototype, docs/performance.md.)

The backward is two more of the same sums. With xp and dzp the input and dz with their zero
borders (pad_planes, indexed here as 2-D planes), and dz = 0 outside the image:

    dx[n, ci, y, x] = sum over oc, i, j of w[oc, ci, i, j] * dz[n, oc, y + 1 - i, x + 1 - j]
                    = sum over oc, i, j of flip_transpose(w)[ci, oc, i, j] * dzp[n, oc, y + i, x + j]
                      (i, j -> 2 - i, 2 - j): the forward's sum over dzp, with w transposed and flipped
    dw[oc, ci, i, j] = sum over n, y, x of dz[n, oc, y, x] * xp[n, ci, y + i, x + j]

The zero border of the padded dz makes the dropped positions and the image edges add nothing,
as long as the values are finite: an Inf or NaN in the input's first or last column or last row
(or an Inf weight) meets those zeros, and 0 * Inf is NaN, so dw (or dx) has NaN in a few more entries than
im2col + GEMM and PyTorch give. Training never gets there: the loss is already NaN, and
mnist.train stops before the backward.

nn.Conv2d uses it for every 3x3 convolution with stride 1 and padding 1 on planes at least 14
wide. It builds no im2col columns (nine copies of the input, which outgrow the cache as the
batch grows), and its tasks (an image and four output channels; for dw, a pair of output
channels and an input channel) spread over threads. On 7x7 and 4x4 planes im2col + GEMM is
faster: their grids of 63 and 24 positions hold 49 and 16 pixels, and the weight gradient adds
up the lanes of 18 vectors for every 4 or 2 vectors of positions an image (benchmarks.conv_kernels
compares the two; docs/performance.md has the figures).
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.gelu import FAST
from nanotorch.kernels.simd import VECTOR_BYTES, fma, lanes_of, load, splat, store
from nanotorch.kernels.tasks import PRANGE


@njit(cache=True, nogil=True, **PRANGE)
def pad_planes(x, parallel=False, channels_first=False):
    """x: (N, C, H, W), any strides -> (N, C, padded_size(H, W)): each plane with a zero border, flat,
    plus TAIL zeros at the end so that the direct kernel's last reads stay inside. One task per plane.
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
    """Plain NumPy: x (N, C, H, W) (or (C, N, H, W) with ``channels_first``) -> (N, C, (H+2)*(W+2) + TAIL):
    each plane with a zero border, flat, then TAIL zeros."""
    if channels_first:
        x = x.transpose(1, 0, 2, 3)
    n_, c_ = x.shape[:2]
    flat = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).reshape(n_, c_, -1)
    return np.pad(flat, ((0, 0), (0, 0), (0, TAIL)))


# The zeros after each padded plane. The direct kernels compute up to lanes - 1 positions past the
# grid's H * Wp (the forward's last vector, the weight gradient's last vector of dz), and each
# position reads up to 2 * Wp + 2 further on: up to lanes past the padded rows, so TAIL = lanes + 1,
# lanes = VECTOR_BYTES / 4 for float32 (half that for float64).
TAIL = VECTOR_BYTES // 4 + 1


@njit(nogil=True)
def padded_size(h_, w_):
    """The length of a padded plane: H + 2 rows of W + 2 values, and TAIL zeros after them."""
    return (h_ + 2) * (w_ + 2) + TAIL


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
    flat[(h_ + 1) * wp + 1:] = 0                       # the rest of the bottom row and the TAIL zeros


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
        raise ValueError("conv3x3_same: expected xp (N, C, (h+2)*(w+2) + TAIL) from pad_planes and w (OC, C, 3, 3) "
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
    """Output channels oc..oc+3 of image n. The padded grid's positions go in blocks of three
    vectors (48 float32 with AVX-512: simd.py); a block's 4 x 3 vectors of sums stay in registers
    over all the input channels and the nine taps, where each tap's three input loads and four
    weights feed twelve vector multiply-adds. What is left after the last whole block goes in
    single vectors (or in one more block, if more than two vectors are left), so that fewer than
    a vector's worth of positions past the grid are computed. Each sum adds its terms in the order
    of w's axes (input channel, kernel row, kernel column), each multiply-add rounded once. The
    sums go to a small buffer, copied out without the x >= W positions (and those past the grid,
    whose reads padded_size leaves room for)."""
    wp = w_ + 2
    m = h_ * wp
    lanes = lanes_of(xp)
    block = 3 * lanes
    blocks, rest = divmod(m, block)
    if rest > 2 * lanes:
        blocks, rest = blocks + 1, 0
    end = blocks * block + -(-rest // lanes) * lanes
    acc = np.empty((4, end), dtype=xp.dtype)
    for t in range(0, blocks * block, block):
        _three_vectors(xp, w4, n, oc, t, wp, acc)
    for t in range(blocks * block, end, lanes):
        _one_vector(xp, w4, n, oc, t, wp, acc)
    for k in range(min(4, out.shape[0 if channels_first else 1] - oc)):
        dst = out[oc + k, n] if channels_first else out[n, oc + k]
        for y in range(h_):
            row, src = dst[y * w_:(y + 1) * w_], acc[k, y * wp:y * wp + w_]
            for i in range(w_):
                row[i] = src[i]


@njit(inline="always", **FAST)
def _three_vectors(xp, w4, n, oc, t, wp, acc):
    """acc[0..3, t:t + 3 lanes]: the sums of channels oc..oc+3 at three vectors of positions from t."""
    lanes = lanes_of(xp)
    zero = splat(xp.dtype.type(0))
    z0 = z1 = z2 = z3 = (zero, zero, zero)             # z0: channel oc's sums at positions t, t + lanes, t + 2 lanes
    for ci in range(xp.shape[1]):
        x = xp[n, ci]
        for i in range(3):
            for j in range(3):
                s = t + i * wp + j                     # the tap's shift, i * Wp + j
                v = load(x, s), load(x, s + lanes), load(x, s + 2 * lanes)
                z0 = _multiply_add(w4[oc, ci, i, j], v, z0)
                z1 = _multiply_add(w4[oc + 1, ci, i, j], v, z1)
                z2 = _multiply_add(w4[oc + 2, ci, i, j], v, z2)
                z3 = _multiply_add(w4[oc + 3, ci, i, j], v, z3)
    for k, z in enumerate((z0, z1, z2, z3)):
        store(acc[k], t, z[0])
        store(acc[k], t + lanes, z[1])
        store(acc[k], t + 2 * lanes, z[2])


@njit(inline="always", **FAST)
def _one_vector(xp, w4, n, oc, t, wp, acc):
    """acc[0..3, t:t + lanes]: the same sums at one vector of positions (the grid's last few)."""
    z0 = z1 = z2 = z3 = splat(xp.dtype.type(0))
    for ci in range(xp.shape[1]):
        x = xp[n, ci]
        for i in range(3):
            for j in range(3):
                v = load(x, t + i * wp + j)
                z0 = fma(splat(w4[oc, ci, i, j]), v, z0)
                z1 = fma(splat(w4[oc + 1, ci, i, j]), v, z1)
                z2 = fma(splat(w4[oc + 2, ci, i, j]), v, z2)
                z3 = fma(splat(w4[oc + 3, ci, i, j]), v, z3)
    for k, z in enumerate((z0, z1, z2, z3)):
        store(acc[k], t, z)


@njit(inline="always")
def _multiply_add(weight, v, z):
    """One weight times three vectors of inputs, added to three vectors of sums."""
    a = splat(weight)
    return fma(a, v[0], z[0]), fma(a, v[1], z[1]), fma(a, v[2], z[2])


@njit(cache=True, nogil=True, **PRANGE, **FAST)
def conv3x3_same_grad_weight(xp, dzp, h_, w_, parallel=False):
    """xp: (N, C, P), dzp: (N, OC, P), both from pad_planes -> dw: (OC, C, 3, 3).

    dz's pixel (y, x) sits at q = (y+1) * Wp + x + 1 of its padded plane and met the input at
    q + (i-1) * Wp + (j-1) for tap (i, j); q runs over the padded rows 1..H, where dz's border
    zeros cancel the positions outside the image. One task per pair of output channels and input
    channel; ``parallel`` spreads them over Numba's threads."""
    n_, c_, plane = xp.shape
    oc_ = dzp.shape[1]
    wp = w_ + 2
    if plane != padded_size(h_, w_) or dzp.shape[0] != n_ or dzp.shape[2] != plane:
        raise ValueError("conv3x3_same_grad_weight: expected xp (N, C, P) and dzp (N, OC, P) from pad_planes, "
                         "P = (h+2)*(w+2) + TAIL")
    dw = np.empty((oc_, c_, 3, 3), dtype=xp.dtype)                # every entry written by one task
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
    """dw[oc, ci] and dw[oc + 1, ci] (an odd last channel is paired with itself): eighteen vectors
    of sums (nine taps, two channels) held in registers over every image and position, each
    position's two dz vectors and nine shifted input vectors feeding 18 vector multiply-adds. The
    positions go in whole vectors: past the grid's end dz's padded plane holds zeros (its bottom
    border and TAIL), which add nothing. Then each vector's lanes are added up."""
    oc2 = min(oc + 1, dzp.shape[1] - 1)
    lanes = lanes_of(xp)
    zero = splat(xp.dtype.type(0))
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero       # channel oc's sums for the taps (0, 0) ... (2, 2)
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = t8 = zero       # channel oc2's
    for n in range(xp.shape[0]):
        x, d, e = xp[n, ci], dzp[n, oc], dzp[n, oc2]
        for p in range(0, m, lanes):
            g, h = load(d, wp + 1 + p), load(e, wp + 1 + p)          # dz at the grid's positions p...
            s0, t0 = _both(g, h, load(x, p), s0, t0)                 # ... met the input at p + i * Wp + j
            s1, t1 = _both(g, h, load(x, p + 1), s1, t1)
            s2, t2 = _both(g, h, load(x, p + 2), s2, t2)
            s3, t3 = _both(g, h, load(x, p + wp), s3, t3)
            s4, t4 = _both(g, h, load(x, p + wp + 1), s4, t4)
            s5, t5 = _both(g, h, load(x, p + wp + 2), s5, t5)
            s6, t6 = _both(g, h, load(x, p + 2 * wp), s6, t6)
            s7, t7 = _both(g, h, load(x, p + 2 * wp + 1), s7, t7)
            s8, t8 = _both(g, h, load(x, p + 2 * wp + 2), s8, t8)
    lane_sums = np.empty(lanes, dtype=xp.dtype)
    for k, (a, b) in enumerate(((s0, t0), (s1, t1), (s2, t2), (s3, t3), (s4, t4), (s5, t5), (s6, t6), (s7, t7),
                                (s8, t8))):
        dw[oc2, ci, k // 3, k % 3] = _lane_sum(b, lane_sums)
        dw[oc, ci, k // 3, k % 3] = _lane_sum(a, lane_sums)


@njit(inline="always")
def _both(g, h, x, s, t):
    """s + g * x and t + h * x: one input vector's multiply-adds into the two channels' sums."""
    return fma(g, x, s), fma(h, x, t)


@njit(inline="always")
def _lane_sum(v, lane_sums):
    """The sum of v's lanes (through lane_sums, a scratch row of their length)."""
    store(lane_sums, 0, v)
    total = lane_sums[0]
    for k in range(1, lane_sums.size):
        total += lane_sums[k]
    return total


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
