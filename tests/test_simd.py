"""nanotorch/kernels/simd.py: the explicit vectors' four operations compiled against their Python
bodies (which are what runs under NUMBA_DISABLE_JIT=1), and the direct convolution with 32-byte
vectors, as on a machine without AVX-512."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from nanotorch.kernels.simd import VECTOR_BYTES, fma, lanes_of, load, splat, store


def _ops(a, i, w, c, out, j):
    """out[j:j + lanes] = w * a[i:i + lanes] + c[:lanes], and the lane count."""
    store(out, j, fma(splat(w), load(a, i), load(c, 0)))
    return lanes_of(a)


_ops_compiled = njit(_ops)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_operations_compiled_match_their_python_bodies(dtype):
    rng = np.random.default_rng(0)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    a, c = rng.standard_normal(3 * lanes).astype(dtype), rng.standard_normal(lanes).astype(dtype)
    w = dtype(rng.standard_normal())
    got, want = np.zeros(2 * lanes + 3, dtype), np.zeros(2 * lanes + 3, dtype)
    assert _ops_compiled(a, 5, w, c, got, 3) == _ops(a, 5, w, c, want, 3) == lanes    # unaligned reads and writes
    np.testing.assert_array_equal(got, want)
    assert not got[:3].any() and not got[3 + lanes:].any()                               # nothing written around
    np.testing.assert_allclose(got[3:3 + lanes], w * a[5:5 + lanes] + c, rtol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_fma_rounds_once(dtype):
    """(1 + e)^2 - (1 + 2e) = e^2 exactly, with e = 2^-12 (float32) or 2^-27 (float64): e^2 is below half
    an ulp of 1 + 2e, so a product rounded before the add loses it and gives 0."""
    e = dtype(2.0 ** (-12 if dtype == np.float32 else -27))
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    a, c = np.full(lanes, 1 + e, dtype), np.full(lanes, -(1 + 2 * e), dtype)
    out = np.zeros(lanes, dtype)
    _ops_compiled(a, 0, dtype(1 + e), c, out, 0)
    np.testing.assert_array_equal(out, np.full(lanes, e * e, dtype))
    assert (dtype(1 + e) * (1 + e) + c == 0).all()        # what two roundings give


def test_direct_convolution_with_32_byte_vectors(tmp_path):
    """Compiled for a CPU without AVX-512 (Numba's NUMBA_CPU_NAME / NUMBA_CPU_FEATURES), the vectors
    are 32 bytes, the blocks of positions half as long, and the direct convolution and its
    gradients still match the NumPy references (odd shapes, float32 and float64)."""
    code = (
        "import numpy as np\n"
        "from nanotorch import kernels as K\n"
        "from nanotorch.kernels.simd import VECTOR_BYTES\n"
        "assert VECTOR_BYTES == 32, VECTOR_BYTES\n"
        "rng = np.random.default_rng(0)\n"
        "for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-12)):\n"
        "    for n, c, oc, h, w in ((2, 3, 5, 9, 11), (1, 2, 4, 28, 28), (3, 5, 6, 14, 14)):\n"
        "        x = rng.standard_normal((n, c, h, w)).astype(dtype)\n"
        "        wt = rng.standard_normal((oc, c, 3, 3)).astype(dtype)\n"
        "        dz = rng.standard_normal((n, oc, h, w)).astype(dtype)\n"
        "        xp, dzp = K.pad_planes(x), K.pad_planes(dz)\n"
        "        np.testing.assert_allclose(K.conv3x3_same(xp, wt, h, w, False).reshape(dz.shape),\n"
        "                                   K.conv3x3_same_reference(x, wt), rtol=tol, atol=tol)\n"
        "        np.testing.assert_allclose(K.conv3x3_same(dzp, wt, h, w, False, False, True).reshape(x.shape),\n"
        "                                   K.conv3x3_same_grad_input_reference(dz, wt), rtol=tol, atol=tol)\n"
        "        np.testing.assert_allclose(K.conv3x3_same_grad_weight(xp, dzp, h, w),\n"
        "                                   K.conv3x3_same_grad_weight_reference(x, dz), rtol=tol, atol=tol)\n"
        "print('ok')\n")
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path),
           "NUMBA_CPU_FEATURES": "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,"
                                 "+pclmul,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")
