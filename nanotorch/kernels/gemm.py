"""A small matrix product, out = a @ b, with its sums in registers: im2col's three products.

On 7x7 and 4x4 planes a convolution runs as im2col + matrix products (nn/conv.py), and at batch 4
those products are small: for the MNIST model's 20 -> 24 layer on 7x7 planes,

    forward       Z    (24 x 196) = W2   (24 x 180)  @ cols (180 x 196)
    grad-input    dcol (180 x 196) = W2^T (180 x 24)  @ D    (24 x 196)
    grad-weight   dW^T (180 x 24)  = cols (180 x 196) @ D^T  (196 x 24)

Each is under a million multiply-adds, a few microseconds of work, where a BLAS spends much of
its time packing its operands into its own layouts and, with OpenBLAS's AVX2 kernels (which this
project's AVX-512 machine asks for in its environment), uses half the vector width.

The kernel: out is cut into tiles of 8 rows by two vectors of columns (32 float32 columns with
AVX-512). A tile's 16 sums live in registers (simd.py's explicit vectors) for the whole sum over
k; each step of it loads row k of b's two vectors, broadcasts the 8 values a[m, k] of the tile's
rows, and makes 16 vector multiply-adds:

    out[m, j:j+2L] = sum over k of  a[m, k] * b[k, j:j+2L]       m in the tile's 8 rows, L lanes

then stores the 16 sums once. The last tile of a row of tiles loads and stores only the columns
there are (simd.load_first / store_first); the last row of tiles repeats row M - 1 where it runs
past M, and does not store it. No operand is copied: b must be C-contiguous (its row k is read as
vectors), and a may have any strides (the grad-input product reads W2^T as a transposed view).
The tiles go a column at a time, so a column's panel of b (K rows of two vectors: 23 KB for the
forward above, 25 KB for the grad-weight) stays in the L1 cache while its row tiles read it.
Each entry is the sum over k in order, one fused multiply-add a term, whichever thread computes
its tile; the tiles are the tasks (kernels/tasks.py), so one thread and two give the same bits.

Measured at batch 4 against NumPy's product (OpenBLAS, AVX2), one thread, on the Zen 5: the 20 ->
24 layer's three products 8.3, 10.3 and 9.6 us against 16.1, 15.5 and 15.9; the 24 -> 28 layer's
4.2, 4.2 and 4.3 against 8.0, 7.5 and 8.5 (docs/performance.md). Two tiles of 8 x 2 vectors fill
a 24- or 28-column product (the grad-weight) better than tiles of 4 rows by 3 or 4 vectors, which
left half of their multiply-adds on empty lanes.
"""
import numpy as np
from numba import njit, prange

from nanotorch.kernels.simd import VECTOR_BYTES, fma, lanes_of, load_first, splat, store_first
from nanotorch.kernels.tasks import PRANGE

ROWS = 8          # a tile's rows; its columns are two vectors
# A product spreads over threads from this many multiply-adds a value (nanotorch/threads.py:
# parallel(work // MULTIPLY_ADDS_PER_VALUE)), 524,288 in all. In a training step, spreading the
# 20 -> 24 layer's products (847k multiply-adds each) over two threads saved 1.1% of the step;
# spreading the 24 -> 28 layer's (387k) as well saved nothing, so they stay below the line.
MULTIPLY_ADDS_PER_VALUE = 64
# product() takes matmul only while b and out together are at most this many bytes (see there)
MAX_OPERAND_BYTES = 8 << 20


@njit(cache=True, nogil=True, **PRANGE)
def matmul(a, b, parallel=False):
    """a: (M, K), any strides; b: (K, N), C-contiguous, both float32 or both float64 -> a @ b,
    (M, N), C-contiguous."""
    m_ = a.shape[0]
    n_ = b.shape[1]
    if a.shape[1] != b.shape[0]:
        raise ValueError("matmul: expected a (M, K) and b (K, N) with the same K")
    out = np.empty((m_, n_), dtype=b.dtype)
    bf, outf = b.reshape(b.size), out.reshape(out.size)
    width = 2 * lanes_of(bf)
    row_tiles = (m_ + ROWS - 1) // ROWS
    tiles = row_tiles * ((n_ + width - 1) // width)
    if parallel:                              # a column of tiles after another: b's panel stays in cache
        for t in prange(tiles):
            _tile(a, bf, outf, n_, ROWS * (t % row_tiles), width * (t // row_tiles))
    else:
        for t in range(tiles):
            _tile(a, bf, outf, n_, ROWS * (t % row_tiles), width * (t // row_tiles))
    return out


def product(a, b, parallel=False):
    """a @ b for nn.Conv2d's im2col path: ``matmul`` for products of at least a tile's rows and a
    vector's columns whose b and out fit in MAX_OPERAND_BYTES, NumPy's product otherwise (and for
    anything but two float32 or two float64 matrices). With fewer rows or columns a tile leaves most
    of its multiply-adds on rows it repeats or on empty lanes (the 1 -> 4 layer's grad-weight, 4
    columns, took 23.3 us against NumPy's 11.8, one thread). Larger operands outgrow the caches, where
    a BLAS's blocking pays (docs/performance.md has the figures)."""
    if (a.ndim == b.ndim == 2 and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
            and a.shape[0] >= ROWS and b.shape[1] >= VECTOR_BYTES // b.itemsize
            and (a.shape[0] + b.shape[0]) * b.shape[1] * b.itemsize <= MAX_OPERAND_BYTES):
        return matmul(a, np.ascontiguousarray(b), parallel)
    return a @ b


def matmul_reference(a, b):
    """Plain NumPy: a @ b."""
    return a @ b


@njit(cache=True, nogil=True)
def _tile(a, bf, outf, n_, m, j):
    """out[m:m+8, j:j+2L] = a[m:m+8] @ b[:, j:j+2L], with b and out flat (row length n_)."""
    m_, k_ = a.shape
    lanes = lanes_of(bf)
    n0 = min(lanes, n_ - j)                   # columns in the first vector (>= 1) and in the second
    n1 = max(0, min(lanes, n_ - j - lanes))
    r1, r2, r3 = min(m + 1, m_ - 1), min(m + 2, m_ - 1), min(m + 3, m_ - 1)      # past M: row M - 1 again
    r4, r5, r6, r7 = min(m + 4, m_ - 1), min(m + 5, m_ - 1), min(m + 6, m_ - 1), min(m + 7, m_ - 1)
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = splat(bf.dtype.type(0))
    s40 = s41 = s50 = s51 = s60 = s61 = s70 = s71 = s00
    for k in range(k_):
        b0 = load_first(bf, k * n_ + j, n0)
        b1 = load_first(bf, k * n_ + j + lanes, n1)
        a0, a1, a2, a3 = splat(a[m, k]), splat(a[r1, k]), splat(a[r2, k]), splat(a[r3, k])
        s00, s01, s10, s11 = fma(a0, b0, s00), fma(a0, b1, s01), fma(a1, b0, s10), fma(a1, b1, s11)
        s20, s21, s30, s31 = fma(a2, b0, s20), fma(a2, b1, s21), fma(a3, b0, s30), fma(a3, b1, s31)
        a4, a5, a6, a7 = splat(a[r4, k]), splat(a[r5, k]), splat(a[r6, k]), splat(a[r7, k])
        s40, s41, s50, s51 = fma(a4, b0, s40), fma(a4, b1, s41), fma(a5, b0, s50), fma(a5, b1, s51)
        s60, s61, s70, s71 = fma(a6, b0, s60), fma(a6, b1, s61), fma(a7, b0, s70), fma(a7, b1, s71)
    rows = min(ROWS, m_ - m)
    for r, s0, s1 in ((0, s00, s01), (1, s10, s11), (2, s20, s21), (3, s30, s31),
                      (4, s40, s41), (5, s50, s51), (6, s60, s61), (7, s70, s71)):
        if r < rows:
            store_first(outf, (m + r) * n_ + j, s0, n0)
            store_first(outf, (m + r) * n_ + j + lanes, s1, n1)
