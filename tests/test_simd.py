"""nanotorch/kernels/simd.py: the explicit vectors' operations compiled against their Python
bodies (which are what runs under NUMBA_DISABLE_JIT=1), and the direct convolution with 32-byte
vectors, as on a machine without AVX-512."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from nanotorch.kernels.simd import (VECTOR_BYTES, add, deinterleave, fma, interleave, lanes_of, load, load_first,
                                    maximum, minimum, splat, store, store_first, sub)


# A Haswell's features (AVX2, no AVX-512), as NUMBA_CPU_FEATURES spells them: 32-byte vectors.
AVX2_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,"
                 "+pclmul,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")


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


def _shuffles_and_masks(a, b, out, n):
    """out: a + b, a - b, interleave(a, b), deinterleave(a, b) (a vector each), then the first n of a
    loaded from a[3] and stored at 3 past that, then minimum(a, b), maximum(a, b); the rest of out
    is left as it was."""
    lanes = lanes_of(a)
    va, vb = load(a, 0), load(b, 0)
    store(out, 0, add(va, vb))
    store(out, lanes, sub(va, vb))
    lo, hi = interleave(va, vb)
    store(out, 2 * lanes, lo)
    store(out, 3 * lanes, hi)
    even, odd = deinterleave(va, vb)
    store(out, 4 * lanes, even)
    store(out, 5 * lanes, odd)
    store_first(out, 6 * lanes + 3, load_first(a, 3, n), n)
    store(out, 8 * lanes, minimum(va, vb))
    store(out, 9 * lanes, maximum(va, vb))


_shuffles_and_masks_compiled = njit(_shuffles_and_masks)


@njit
def _touch_nothing_past_the_end(a):
    """A zero-lane load and store far past a's end, as winograd.py's rows make at their last vector."""
    store_first(a, a.size + 1000, load_first(a, a.size + 1000, 0), 0)


@pytest.mark.parametrize("n", [0, 1, 5, "lanes"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_shuffles_and_partial_loads_match_their_python_bodies(dtype, n, rng):
    """add, sub, (de)interleave, minimum, maximum, and load_first / store_first on the first n lanes (a
    partial load's other lanes are zero, a partial store writes nothing past its n values)."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    n = lanes if n == "lanes" else n
    a, b = rng.standard_normal(lanes + 3).astype(dtype), rng.standard_normal(lanes).astype(dtype)
    got, want = np.full(10 * lanes, 7, dtype), np.full(10 * lanes, 7, dtype)
    _shuffles_and_masks_compiled(a, b, got, n)
    _shuffles_and_masks(a, b, want, n)
    np.testing.assert_array_equal(got, want)
    partial = got[6 * lanes:8 * lanes]
    np.testing.assert_array_equal(partial[3:3 + n], a[3:3 + n])
    if n == 0:                                          # zero lanes touch no memory, wherever they point
        far = np.full(4, 7, dtype)
        _touch_nothing_past_the_end(far)
        assert (far == 7).all()
    assert (partial[:3] == 7).all() and (partial[3 + n:] == 7).all()                     # nothing written around
    a = a[:lanes]
    np.testing.assert_array_equal(got[:2 * lanes], np.concatenate([a + b, a - b]))
    both = np.empty(2 * lanes, dtype)
    both[0::2], both[1::2] = a, b
    np.testing.assert_array_equal(got[2 * lanes:4 * lanes], both)                       # interleave
    np.testing.assert_array_equal(got[4 * lanes:6 * lanes],
                                  np.concatenate([np.concatenate([a, b])[0::2], np.concatenate([a, b])[1::2]]))
    np.testing.assert_array_equal(got[8 * lanes:], np.concatenate([np.minimum(a, b), np.maximum(a, b)]))


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
           "NUMBA_CPU_FEATURES": AVX2_FEATURES}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")


def test_vector_width_follows_the_features_numba_compiles_for(monkeypatch):
    """64-byte vectors where the code is compiled for AVX-512, 32 otherwise: NUMBA_CPU_FEATURES, or the
    host's features as Numba takes them (without the AVX ones under NUMBA_ENABLE_AVX=0, when a
    64-byte vector would be four SSE registers)."""
    import numba
    from nanotorch.kernels import simd
    for features, want in (("+avx2,+fma,+avx512f,+avx512bw", 64), ("+avx2,+fma", 32), ("+avx2,-avx512f", 32)):
        monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
        assert simd._vector_bytes() == want, features
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    assert simd._vector_bytes() == VECTOR_BYTES                          # this process's: the host's
    monkeypatch.setattr(numba.config, "ENABLE_AVX", False)
    assert simd._vector_bytes() == 32
    assert VECTOR_BYTES in (32, 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_values_are_copies_of_lanes_floats_of_the_arrays_dtype(dtype):
    """The Python bodies (NUMBA_DISABLE_JIT=1) behave as the compiled values do: a loaded vector is a
    copy (a store over its source afterwards leaves it as it was), and load and splat give lanes_of
    values of the array's dtype; compiled, a load then a store over the same place gives the old values."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    a = np.arange(2 * lanes, dtype=dtype)
    for run in (lambda f: f, njit):
        @run
        def load_then_overwrite(a, i):
            v = load(a, i)
            store(a, i, splat(a.dtype.type(-1)))
            store(a, i + lanes_of(a), v)
        b = a.copy()
        load_then_overwrite(b, 0)
        np.testing.assert_array_equal(b, np.concatenate([np.full(lanes, -1, dtype), a[:lanes]]))
    v, s = load(a, 1), splat(dtype(2))
    assert v.dtype == s.dtype == dtype and v.shape == s.shape == (lanes,) == (lanes_of(a),)


def test_compiled_vectors_refuse_a_strided_row():
    """A vector load or store reads consecutive memory: compiled code refuses a row with a stride
    (whose lanes are not next to each other) at compile time rather than reading the wrong values."""
    from numba.core.errors import TypingError
    a = np.arange(64, dtype=np.float32)
    with pytest.raises(TypingError):
        njit(lambda a: load(a, 0))(a[::2])
    with pytest.raises(TypingError):
        njit(lambda a, b: store(a, 0, load(b, 0)))(a[::2], a)


def test_compiled_store_refuses_a_vector_of_another_dtype():
    """A float64 vector stored into a float32 row would write twice as many values as lanes_of(row)
    says: compiled code refuses it at compile time."""
    from numba.core.errors import TypingError
    with pytest.raises(TypingError):
        njit(lambda a, b: store(a, 0, load(b, 0)))(np.zeros(64, np.float32), np.zeros(64, np.float64))


_BOUNDS_CODE = """
import numpy as np
from nanotorch import kernels as K
from nanotorch.kernels import conv3x3 as C, simd
assert simd.VECTOR_BYTES == {vector_bytes}, simd.VECTOR_BYTES


def load(a, i, _load=C.load):
    n = simd.lanes_of(a)
    assert 0 <= i and i + n <= a.size, ("load past the array", i, n, a.size)
    return _load(a, i)


def store(a, i, v, _store=C.store):
    n = simd.lanes_of(a)
    assert 0 <= i and i + n <= a.size and v.shape == (n,), ("store past the array", i, n, a.size)
    _store(a, i, v)


C.load, C.store = load, store
rng = np.random.default_rng(0)
for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-12)):
    for n, c, oc, h, w in ((2, 3, 5, 7, 5), (1, 2, 3, 1, 1), (1, 2, 3, 3, 12), (1, 2, 3, 2, 14), (1, 2, 3, 1, 14)):
        # grids of 49 = 48 + 1, 3, 42, 32 and 16 positions
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = rng.standard_normal((oc, c, 3, 3)).astype(dtype)
        dz = rng.standard_normal((n, oc, h, w)).astype(dtype)
        xp, dzp = K.pad_planes(x), K.pad_planes(dz)
        z = K.conv3x3_same_reference(x, wt)
        dx = K.conv3x3_same_grad_input_reference(dz, wt)
        for parallel in (False, True):
            got = K.conv3x3_same(xp, wt, h, w, False, parallel)
            np.testing.assert_allclose(got.reshape(z.shape), z, rtol=tol, atol=tol)
            got = K.conv3x3_same(xp, wt, h, w, True, parallel)
            np.testing.assert_allclose(got.transpose(1, 0, 2).reshape(z.shape), z, rtol=tol, atol=tol)
            got = K.conv3x3_same(dzp, wt, h, w, False, parallel, True)
            np.testing.assert_allclose(got.reshape(dx.shape), dx, rtol=tol, atol=tol)
            np.testing.assert_allclose(K.conv3x3_same_grad_weight(xp, dzp, h, w, parallel),
                                       K.conv3x3_same_grad_weight_reference(x, dz), rtol=tol, atol=tol)
print("ok")
"""


@pytest.mark.parametrize("vector_bytes", [64, 32])
def test_direct_kernels_read_and_write_inside_their_arrays(vector_bytes):
    """Compiled, a vector load does not check its bounds: a read past a padded plane takes the next
    plane's values or memory outside the array. Run as Python (NUMBA_DISABLE_JIT=1) with load and
    store that check them, the forward (both layouts, in tasks or not), the input gradient and the
    weight gradient read inside each padded plane and write inside their buffers and outputs (5
    output channels: one group of four and one of one), with 64- and 32-byte vectors, float32 and
    float64, and match the references. On the 7x5 image (a grid of 49 positions, one more than a
    multiple of 48 and of 24) the forward's last float32 vector, and the weight gradient's, starts
    at the grid's last position and reads up to the padded plane's last value: TAIL is just enough.
    The 3x12 image's grid of 42 positions takes one more block of three vectors (more than two
    vectors are left after the whole blocks: none of 48, one of 24), the 1x1 image's single vectors only.
    The 2x14 and 1x14 images' grids of 32 and 16 positions leave exactly two float32 vectors after the
    whole blocks (64- and 32-byte vectors): they go as two single vectors, since one more block of
    three would read past the padded plane."""
    run_as_python(_BOUNDS_CODE.format(vector_bytes=vector_bytes), vector_bytes)


def run_as_python(code, vector_bytes, timeout=300):
    """Run ``code`` in a fresh process under NUMBA_DISABLE_JIT=1 (the kernels as plain Python, where
    the vector operations' bodies run), with the vectors ``vector_bytes`` wide; it must print ok."""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    if vector_bytes == 32:
        env["NUMBA_CPU_FEATURES"] = AVX2_FEATURES
    elif VECTOR_BYTES != 64:
        env["NUMBA_CPU_FEATURES"] = "+64bit,+avx,+avx2,+fma,+avx512f,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")
