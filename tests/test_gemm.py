"""nanotorch/kernels/gemm.py: the register-tiled matrix product against NumPy's, on shapes around
its tiles (8 rows, two vectors of columns), with a transposed left operand, and with its vector
loads and stores checked for bounds; and the rule by which Conv2d's im2col path takes it. (The
path itself: test_conv.py and test_gradcheck.py, against references and finite differences.)"""
import numpy as np
import pytest

from nanotorch.kernels import matmul, matmul_reference
from nanotorch.kernels.gemm import ROWS, product
from nanotorch.kernels.simd import VECTOR_BYTES
from test_simd import run_as_python

LANES = VECTOR_BYTES // 4            # float32 lanes: a tile is ROWS x 2 * LANES

# (M, K, N): the seed model's three products of the 20 -> 24 and 24 -> 28 layers at batch 4
# (forward, grad-input, grad-weight); one row and one column; rows and columns one short of, at,
# and one past a tile; an empty sum (K = 0); and an empty product
SHAPES = [(24, 180, 196), (180, 24, 196), (180, 196, 24), (28, 216, 64), (216, 28, 64), (216, 64, 28),
          (1, 5, 1), (ROWS - 1, 3, 2 * LANES - 1), (ROWS, 7, 2 * LANES), (ROWS + 1, 2, 2 * LANES + 1),
          (3, 11, LANES + 1), (5, 0, 9), (0, 4, 6), (4, 6, 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_matches_numpy(shape, transposed, dtype, rng):
    """Every entry within rounding of NumPy's product (each is the same sum, in its own order, with
    fused multiply-adds); a transposed view as a is read in place."""
    m, k, n = shape
    a = rng.standard_normal((k, m)).astype(dtype).T if transposed else rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    out = matmul(a, b)
    assert out.shape == (m, n) and out.dtype == dtype and out.flags.c_contiguous
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, matmul_reference(a, b), rtol=tol, atol=tol * max(1, np.sqrt(k)))


def test_matmul_by_hand():
    """A 2x3 by 3x2 product worked by hand, with an empty sum: zeros, not garbage."""
    a = np.array([[1.0, 2, 3], [4, 5, 6]])
    b = np.array([[1.0, 0], [0, 1], [1, 1]])
    np.testing.assert_array_equal(matmul(a, b), [[4, 5], [10, 11]])
    np.testing.assert_array_equal(matmul(np.ones((3, 0)), np.ones((0, 40))), np.zeros((3, 40)))


def test_a_nan_stays_in_its_row_and_column():
    """The last tile's repeated row and unused lanes are never stored: a NaN in a[m] or b[:, j]
    makes out[m] and out[:, j] NaN and nothing else."""
    a, b = np.ones((ROWS + 3, 4), np.float32), np.ones((4, 2 * LANES + 3), np.float32)
    a[ROWS + 2, 1] = np.nan                # the last row: the one the last tile repeats
    b[2, 2 * LANES + 2] = np.nan           # the last column
    nan = np.isnan(matmul(a, b))
    expected = np.zeros_like(nan)
    expected[ROWS + 2, :] = expected[:, 2 * LANES + 2] = True
    np.testing.assert_array_equal(nan, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_takes_matmul_from_a_tile_of_rows_and_a_vector_of_columns(dtype, rng):
    """nn.Conv2d's product: matmul's bits from a tile's rows and a vector's columns (and on a b that
    is not contiguous, through a copy); NumPy's with fewer, where a tile would leave most of its
    multiply-adds on repeated rows or empty lanes."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    a, short = rng.standard_normal((ROWS, 500)).astype(dtype), rng.standard_normal((ROWS - 1, 500)).astype(dtype)
    wide, narrow = rng.standard_normal((500, lanes)).astype(dtype), rng.standard_normal((500, lanes - 1)).astype(dtype)
    assert not np.array_equal(matmul(a, wide), a @ wide)        # (the two round differently: tells them apart)
    np.testing.assert_array_equal(product(a, wide), matmul(a, wide))
    np.testing.assert_array_equal(product(a, np.asfortranarray(wide)), matmul(a, wide))
    np.testing.assert_array_equal(product(a, narrow), a @ narrow)
    np.testing.assert_array_equal(product(short, wide), short @ wide)


def test_product_leaves_large_operands_and_other_types_to_numpy(monkeypatch, rng):
    """Past MAX_OPERAND_BYTES of b and out the product is NumPy's (its blocking pays once they
    outgrow the caches); so is any product matmul does not take: mixed dtypes, integers."""
    from nanotorch.kernels import gemm
    a, b = rng.standard_normal((9, 500)), rng.standard_normal((500, 40))
    assert not np.array_equal(matmul(a, b), a @ b)
    monkeypatch.setattr(gemm, "MAX_OPERAND_BYTES", (9 + 500) * 40 * 8)
    np.testing.assert_array_equal(gemm.product(a, b), matmul(a, b))
    monkeypatch.setattr(gemm, "MAX_OPERAND_BYTES", (9 + 500) * 40 * 8 - 1)
    np.testing.assert_array_equal(gemm.product(a, b), a @ b)
    np.testing.assert_array_equal(gemm.product(a, b.astype(np.float32)), a @ b.astype(np.float32))
    np.testing.assert_array_equal(gemm.product(np.ones((9, 3), int), np.ones((3, 40), int)), np.full((9, 40), 3))


def test_matmul_refuses_operands_that_do_not_chain():
    """a (M, K) and b (K', N) with K != K': an error naming the shapes expected, not a product of
    the first K rows of b (nor a read past its end)."""
    for k in (10, 12):
        with pytest.raises(ValueError, match=r"a \(M, K\) and b \(K, N\)"):
            matmul(np.ones((9, k), np.float32), np.ones((11, 40), np.float32))


_BOUNDS_CODE = """
import numpy as np
from nanotorch.kernels import simd, gemm
assert simd.VECTOR_BYTES == {vector_bytes}, simd.VECTOR_BYTES


def inside(name, op):
    def checked(a, i, *rest):
        n = rest[-1]                           # load_first(a, i, n), store_first(a, i, v, n)
        assert n == 0 or (0 <= i and i + n <= a.size), (name, i, n, a.size)
        return op(a, i, *rest)
    return checked


for name in ("load_first", "store_first"):
    setattr(gemm, name, inside(name, getattr(simd, name)))
rng = np.random.default_rng(0)
lanes = simd.VECTOR_BYTES // 4
for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
    for m, k, n in ((9, 5, 2 * lanes + 3), (3, 4, lanes - 1), (8, 2, 2 * lanes), (17, 3, 1)):
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        for parallel in (False, True):
            np.testing.assert_allclose(gemm.matmul(a, b, parallel), a @ b, rtol=tol, atol=tol)
print("ok")
"""


@pytest.mark.parametrize("vector_bytes", [64, 32])
def test_matmul_reads_and_writes_inside_its_arrays(vector_bytes):
    """Compiled, a masked vector load or store does not check its bounds. Run as Python
    (NUMBA_DISABLE_JIT=1) with loads and stores that do, the kernel stays inside b and out, with
    64- and 32-byte vectors, in float32 and float64; and still matches NumPy's product."""
    run_as_python(_BOUNDS_CODE.format(vector_bytes=vector_bytes), vector_bytes)
