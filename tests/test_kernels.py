"""Each Numba kernel equals its plain-NumPy reference (nanotorch/kernels)."""
import itertools

import numpy as np
import pytest

from nanotorch import kernels as K
from nanotorch.kernels.im2col import _col2im_general
from nanotorch.nn.pooling import pool_output_size

# Each test draws from its own generator: the rng fixture of tests/conftest.py.

# (N, C, H, W, kh, kw, sh, sw, ph, pw)
CONV_SHAPES = [(2, 3, 7, 7, 3, 3, 1, 1, 1, 1), (1, 1, 5, 8, 3, 3, 1, 1, 0, 0), (3, 2, 7, 7, 3, 3, 2, 2, 1, 1),
               (2, 4, 5, 8, 2, 3, 2, 1, 0, 1), (4, 16, 28, 28, 3, 3, 1, 1, 1, 1), (2, 3, 6, 6, 1, 1, 1, 1, 0, 0),
                (1, 2, 4, 5, 5, 5, 3, 3, 2, 2), (2, 1, 3, 3, 3, 3, 1, 1, 2, 2), (2, 2, 4, 3, 5, 5, 1, 1, 2, 2),
                (2, 1, 2, 3, 7, 9, 1, 1, 3, 4)]       # "same" outputs of other kernels, padding wider than the image


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_im2col_and_col2im_equal_reference(shape, dtype, rng):
    n, c, h, w, kh, kw, sh, sw, ph, pw = shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    cols = K.im2col(x, kh, kw, sh, sw, ph, pw, oh, ow)
    np.testing.assert_array_equal(cols, K.im2col_reference(x, kh, kw, sh, sw, ph, pw, oh, ow))
    d = rng.standard_normal(cols.shape).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(K.col2im(d, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow),
                               K.col2im_reference(d, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow), **tol)


# 3x3 kernels with stride 1 and padding 1 take the kernels' 3x3 path (planes of at least 2x2):
# odd sizes, the smallest planes, one row or column (the general loop), the model's shapes
SAME_3X3_SHAPES = [(2, 3, 7, 7), (1, 2, 5, 8), (2, 2, 2, 2), (2, 2, 2, 3), (2, 2, 3, 2), (3, 1, 1, 1), (2, 2, 1, 5),
                   (2, 2, 4, 1), (4, 20, 7, 7), (4, 24, 4, 4), (4, 12, 28, 28)]


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("shape", SAME_3X3_SHAPES)
def test_3x3_path_equals_reference(shape, overwrite, parallel, rng):
    n, c, h, w = shape
    x = rng.standard_normal((n, c, h, w))
    cols = K.im2col(x, 3, 3, 1, 1, 1, 1, h, w, parallel)
    np.testing.assert_array_equal(cols, K.im2col_reference(x, 3, 3, 1, 1, 1, 1, h, w))
    d = rng.standard_normal(cols.shape)
    d_before = d.copy()
    dx = K.col2im(d, n, c, h, w, 3, 3, 1, 1, 1, 1, h, w, overwrite)
    np.testing.assert_allclose(dx, K.col2im_reference(d_before, n, c, h, w, 3, 3, 1, 1, 1, 1, h, w),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(dx, _col2im_general(d_before, n, c, h, w, 3, 3, 1, 1, 1, 1, h, w))   # same order
    if not overwrite:
        np.testing.assert_array_equal(d, d_before)          # cols untouched unless the caller allows it


def test_3x3_path_col2im_scratch_stays_inside_its_view():
    """overwrite_cols lets col2im zero entries of cols, but only inside the array it was given."""
    big = np.arange(1.0, 9 * 10 + 1).reshape(9, 10)
    before = big.copy()
    dx = K.col2im(big[:, :8], 2, 1, 2, 2, 3, 3, 1, 1, 1, 1, 2, 2, True)      # 2x2 images, columns 0..7
    np.testing.assert_array_equal(dx, K.col2im_reference(before[:, :8], 2, 1, 2, 2, 3, 3, 1, 1, 1, 1, 2, 2))
    np.testing.assert_array_equal(big[:, 8:], before[:, 8:])


def test_3x3_path_reads_non_contiguous_input(rng):
    x = rng.standard_normal((5, 5, 3, 2)).transpose(3, 2, 0, 1)             # (2, 3, 5, 5), not contiguous
    np.testing.assert_array_equal(K.im2col(x, 3, 3, 1, 1, 1, 1, 5, 5), K.im2col_reference(x, 3, 3, 1, 1, 1, 1, 5, 5))


def test_col2im_is_the_adjoint_of_im2col(rng):
    """<im2col(x), d> == <x, col2im(d)>: the defining property of the gradient of a copy."""
    x = rng.standard_normal((2, 3, 7, 7))
    cols = K.im2col(x, 3, 3, 2, 2, 1, 1, 4, 4)
    d = rng.standard_normal(cols.shape)
    assert np.isclose(np.sum(cols * d), np.sum(x * K.col2im(d, 2, 3, 7, 7, 3, 3, 2, 2, 1, 1, 4, 4)), rtol=1e-12)


# (N, C, H, W, k, s, p, ceil)
POOL_SHAPES = [(2, 3, 7, 7, 2, 2, 0, True), (2, 3, 7, 7, 2, 2, 0, False), (1, 1, 5, 8, 3, 2, 1, False),
               (2, 2, 5, 8, 3, 2, 0, True), (4, 16, 28, 28, 2, 2, 0, False), (1, 2, 4, 4, 3, 1, 1, True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_maxpool_equals_reference(shape, dtype, rng):
    n, c, h, w, k, s, p, ceil = shape
    oh, ow = pool_output_size(h, k, s, p, ceil), pool_output_size(w, k, s, p, ceil)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    x[0, 0, :2, :2] = np.nan                                 # several NaNs in one window: the last one wins
    out, arg = K.maxpool2d_forward(x, k, k, s, s, p, p, oh, ow)
    ref_out, ref_arg = K.maxpool2d_forward_reference(x, k, k, s, s, p, p, oh, ow)
    np.testing.assert_array_equal(out, ref_out)              # (equal_nan: NaN in the same places)
    np.testing.assert_array_equal(arg, ref_arg)
    d = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(K.maxpool2d_backward(d, arg, h, w), K.maxpool2d_backward_reference(d, arg, h, w),
                               rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 2, 5, 8), (4, 16, 28, 28), (2, 2, 1, 3), (1, 1, 2, 2),
                                   (3, 2, 6, 4), (2, 20, 14, 14)])     # even sizes: the row-pair path
@pytest.mark.parametrize("ceil", [False, True])
def test_maxpool_2x2_fast_path_equals_reference(shape, ceil, rng):
    n, c, h, w = shape
    oh, ow = pool_output_size(h, 2, 2, 0, ceil), pool_output_size(w, 2, 2, 0, ceil)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, :2] = np.nan                                  # NaN handling must match too
    if n > 1 and w > 1:
        x[1, 0, :, 1] = x[1, 0, :, 0]                        # ties: the first in scan order wins
    out, window = K.maxpool2x2_forward(x, oh, ow)
    ref_out, ref_window = K.maxpool2x2_reference(x, oh, ow)
    assert window.dtype == np.int8
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(window, ref_window)       # which pixel won
    np.testing.assert_array_equal(K.maxpool2x2_max(x, oh, ow), ref_out)       # the max alone (no_grad)
    general_arg = K.maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, oh, ow)[1]
    np.testing.assert_array_equal(ref_window,               # the same pixels as the general kernel's argmax
                                  (2 * (general_arg // w - 2 * np.arange(oh)[:, None])
                                   + general_arg % w - 2 * np.arange(ow)[None, :]))
    d = rng.standard_normal(out.shape).astype(np.float32)
    d.reshape(-1)[:1] = -0.0                                 # scatter-added onto zeros: +0.0, as PyTorch
    dx = K.maxpool2d_backward(d, window, h, w, False, True)
    want = K.maxpool2x2_backward_reference(d, window, h, w)
    np.testing.assert_array_equal(dx.view(np.uint32), want.view(np.uint32))                # bitwise
    np.testing.assert_array_equal(dx, K.maxpool2d_backward(d, general_arg, h, w))


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_2x2_max_alone_gives_the_argmax_kernels_bits(dtype, parallel):
    """maxpool2x2_max makes maxpool2x2_forward's comparisons in its order: the same bits, NaN and
    the zero of a +0.0 / -0.0 tie included, in every window of four values from {-1, 0, -0, 1, NaN}."""
    windows = np.array(list(itertools.product([-1.0, 0.0, -0.0, 1.0, np.nan], repeat=4)), dtype)   # (625, 4)
    windows = np.tile(windows, (4, 1))                                   # long rows: the vectorised loop too
    n = len(windows)
    x = np.stack([windows[:, :2].reshape(-1), windows[:, 2:].reshape(-1)])[None, None]   # (1, 1, 2, 2n)
    out, _ = K.maxpool2x2_forward(x, 1, n, parallel)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(K.maxpool2x2_max(x, 1, n, parallel).view(bits), out.view(bits))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.float64])
@pytest.mark.parametrize("shape, ceil", [((1, 2, 3, 3), True), ((2, 1, 5, 4), True), ((1, 1, 3, 5), False)])
def test_maxpool_2x2_odd_sizes_of_any_dtype(shape, ceil, dtype, rng):
    """Odd sizes are extended to whole windows (-inf, or an integer array's smallest value): the
    added pixels never win, even where the image's own pixels are all at that value."""
    n, c, h, w = shape
    oh, ow = pool_output_size(h, 2, 2, 0, ceil), pool_output_size(w, 2, 2, 0, ceil)
    x = -rng.integers(0, 4, size=shape).astype(dtype)               # ties with the smallest value too
    out, window = K.maxpool2x2_forward(x, oh, ow)
    ref_out, ref_arg = K.maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, oh, ow)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(window, 2 * (ref_arg // w - 2 * np.arange(oh)[:, None])
                                  + ref_arg % w - 2 * np.arange(ow)[None, :])
    np.testing.assert_array_equal(K.maxpool2x2_max(x, oh, ow), ref_out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_avg_pool_equals_reference(dtype, rng):
    x = rng.standard_normal((3, 5, 7, 6)).astype(dtype)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    for view in (x, x.transpose(0, 1, 3, 2)):                # any strides
        out = K.global_avg_pool(view)
        assert out.shape == (3, 5, 1, 1) and out.dtype == dtype
        np.testing.assert_allclose(out, K.global_avg_pool_reference(view), **tol)
    d = rng.standard_normal((3, 5, 1, 1)).astype(dtype)
    np.testing.assert_array_equal(K.global_avg_pool_backward(d, 7, 6), K.global_avg_pool_backward_reference(d, 7, 6))


def test_global_avg_pool_of_a_large_float32_plane_is_correctly_rounded(rng):
    """Summed in float64, rounded once: on 512 x 512 values near 10, an in-order float32 sum was off
    by ~2e-5 relative; this is off by at most half a float32 ulp of the exact mean."""
    x = (rng.standard_normal((1, 2, 512, 512)) + 10).astype(np.float32)
    exact = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    assert np.all(np.abs(K.global_avg_pool(x) - exact) <= np.spacing(exact.astype(np.float32)) / 2)


def test_global_avg_pool_rounds_the_mean_once(rng):
    """The float64 sum is divided in float64 and rounded once to float32: not the sum rounded to
    float32 and then divided (two roundings, which differ in the last bit for many planes)."""
    x = (rng.standard_normal((8, 64, 7, 7)) + 10).astype(np.float32)
    once = (x.astype(np.float64).sum(axis=(2, 3), keepdims=True) / 49).astype(np.float32)
    np.testing.assert_array_equal(K.global_avg_pool(x), once)


@pytest.mark.parametrize("kernel", ["general", "2x2"])
def test_maxpool_ties_pick_the_first_like_pytorch(kernel):
    x = np.zeros((1, 3, 2, 2))
    x[0, 1, 1, :] = 1                        # tie in the bottom row: the left one
    x[0, 2, :, 1] = 1                        # tie in the right column: the top one
    out, arg = (K.maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1) if kernel == "general"
                else K.maxpool2x2_forward(x, 1, 1))
    assert arg.ravel().tolist() == [0, 2, 1] and out.ravel().tolist() == [0, 1, 1]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_float64_equals_reference(approximate, rng):
    x = rng.standard_normal((3, 4, 5)) * 4
    for got, want in zip(K.gelu_forward(x, approximate), K.gelu_forward_reference(x, approximate)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)


def test_gelu_tanh_float32_equals_reference(rng):
    """float32 tanh GELU, computed in float64 and rounded: within one float32 rounding of the
    reference. (atol: from x = -5.8 to -7.2, 1 + tanh u is a float64 rounding, and the values
    below 1e-14 are that rounding in one and 0 in the other.)"""
    x = np.concatenate([np.linspace(-12, 12, 200_001), rng.standard_normal(10_000) * 4]).astype(np.float32)
    for got, want in zip(K.gelu_forward(x, "tanh"), K.gelu_forward_reference(x, "tanh")):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=1e-14)


def test_gelu_float32_vectorised_erf_is_float32_accurate(rng):
    """float32 uses a vectorised erf: within 2.5e-7 (about one float32 rounding) of the exact value."""
    x = np.concatenate([np.linspace(-12, 12, 200_001), rng.standard_normal(10_000) * 3]).astype(np.float32)
    y, d = K.gelu_forward(x)
    y_ref, d_ref = K.gelu_forward_reference(x.astype(np.float64))
    assert y.dtype == d.dtype == np.float32
    assert np.max(np.abs(y - y_ref) / np.maximum(1, np.abs(x))) < 2.5e-7
    assert np.max(np.abs(d - d_ref)) < 2.5e-7


def test_gelu_alone_for_inference_is_float32_accurate(rng):
    """GELU without its derivative (the rational erf with no exp, for inference): within 2.5e-7 *
    max(1, |x|) in float32, libm's exact erf in float64, and the same values as gelu_forward's to
    float32 rounding."""
    from nanotorch.kernels.gelu import gelu_inference
    x = np.concatenate([np.linspace(-12, 12, 200_001), rng.standard_normal(10_000) * 3,
                        [0.0, -0.0, 1e-30, -5.65, 5.66, 40.0, -40.0]]).astype(np.float32)
    y = gelu_inference(x)
    y_ref = K.gelu_forward_reference(x.astype(np.float64))[0]
    assert y.dtype == np.float32
    assert np.max(np.abs(y - y_ref) / np.maximum(1, np.abs(x))) < 2.5e-7
    np.testing.assert_allclose(y, K.gelu_forward(x)[0], rtol=0, atol=5e-7 * 40)
    x64 = rng.standard_normal((3, 4, 5)) * 4
    np.testing.assert_allclose(gelu_inference(x64), K.gelu_forward_reference(x64)[0], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_module_under_no_grad_computes_gelu_alone_and_keeps_nothing(dtype, rng):
    from nanotorch import nn, no_grad
    layer = nn.GELU()
    x = (rng.standard_normal((4, 56)) * 3).astype(dtype)
    with_grad = layer(x)
    with no_grad():
        y = layer(x)
    assert layer.cache is None and y.dtype == dtype
    np.testing.assert_allclose(y, with_grad, rtol=0, atol=5e-7 * 10 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_tanh_module_under_no_grad_stays_tanh(dtype, rng):
    """Under no_grad only the exact GELU skips its derivative (gelu_inference); approximate='tanh'
    still computes the tanh formula, not the erf one (they differ by up to ~5e-4)."""
    from nanotorch import nn, no_grad
    layer = nn.GELU(approximate="tanh")
    x = (rng.standard_normal((4, 56)) * 3).astype(dtype)
    with no_grad():
        y = layer(x)
    assert y.dtype == dtype
    tol = dict(rtol=2.5e-7, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(y, K.gelu_forward_reference(x, "tanh")[0], **tol)


def test_kernels_run_without_jit_for_debugging():
    """NUMBA_DISABLE_JIT=1 runs every kernel as plain Python (the documented way to step through one),
    with the compiled kernels' numbers: the direct convolution (28x28 and 14x14 planes), im2col
    (7x7), the 2x2 pooling (whose int8 window codes once overflowed a 28x28 index as Python)."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np, nanotorch as nt\n"
            "from nanotorch import nn\n"
            "nt.manual_seed(0)\n"
            "m = nn.Sequential(nn.ConvBNGELU(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.ConvBNGELU(2, 2, 3, padding=1),\n"
            "                  nn.MaxPool2d(2), nn.ConvBNGELU(2, 2, 3, padding=1), nn.MaxPool2d(2, ceil_mode=True),\n"
            "                  nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
            "x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)\n"
            "crit = nn.CrossEntropyLoss()\n"
            "loss = crit(m(x), np.array([1])); dx = m.backward(crit.backward())\n"
            "grads = [np.abs(p.grad).sum() for p in m.parameters()]\n"
            "print(repr([float(loss), float(np.abs(dx).sum()), *map(float, grads)]))\n")
    out = {}
    for jit_off in ("1", "0"):
        env = {**os.environ, "NUMBA_DISABLE_JIT": jit_off}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        out[jit_off] = np.array(eval(run.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(out["1"], out["0"], rtol=1e-5, atol=1e-6)


def test_kernels_compiled_and_loaded_from_the_cache_give_the_same_bits(tmp_path):
    """The first process compiles the kernels and writes Numba's cache; the next loads them. Both
    must compute the same bits, or the first run after an install and the second with the same
    seed drift apart. (They did: a kernel whose multiply-adds LLVM fused one way in the compiling
    process and another way in the cached code.) A few training steps of the seed model on one
    thread and on two, then an evaluation, in two fresh processes sharing an empty cache folder."""
    import os
    import subprocess
    import sys
    code = ("import sys, numpy as np, nanotorch as nt\n"
            "from mnist.model import build_model\n"
            "from nanotorch import nn, optim\n"
            "out = {}\n"
            "for threads in (1, 2):\n"
            "    nt.set_num_threads(threads); nt.manual_seed(0)\n"
            "    model, crit = build_model(), nn.CrossEntropyLoss()\n"
            "    model[0][0].input_requires_grad = False\n"
            "    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)\n"
            "    rng = np.random.default_rng(0)\n"
            "    for step in range(3):\n"
            "        x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)\n"
            "        crit(model(x), rng.integers(0, 10, 4)); opt.zero_grad(); model.backward(crit.backward())\n"
            "        nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()\n"
            "    model.eval()\n"
            "    with nt.no_grad():\n"
            "        out[f'logits{threads}'] = model(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))\n"
            "    out.update({f'{k}{threads}': v for k, v in model.state_dict().items()})\n"
            "np.savez(sys.argv[1], **out)\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    for run in ("compiled", "loaded"):     # both runs: 78 s on the 2 cores at load 6
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{run}.npz")], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
    compiled, loaded = np.load(tmp_path / "compiled.npz"), np.load(tmp_path / "loaded.npz")
    differ = [k for k in compiled.files if not np.array_equal(compiled[k], loaded[k])]
    assert not differ, f"compiled and cached kernels disagree on {differ}"


def test_every_cached_kernel_caches_under_the_sources_digest():
    """A kernel inlining code from another file must not load machine code built from older
    sources: every cached dispatcher of the package keeps its cache in the folder named after
    the digest of all kernel sources (nanotorch/kernels/__init__.py)."""
    import numba
    from nanotorch.kernels import batchnorm_gelu, conv3x3, dropout, gelu, im2col, loss, optim, pooling, winograd
    folder = K._cache_dir().name
    modules = (batchnorm_gelu, conv3x3, dropout, gelu, im2col, loss, optim, pooling, winograd)
    dispatchers = [f for module in modules for f in vars(module).values()
                   if isinstance(f, numba.core.registry.CPUDispatcher) and f._cache is not None
                   and type(f._cache).__name__ == "FunctionCache"]
    assert len(dispatchers) >= 10
    for f in dispatchers:
        assert folder in f._cache._cache_path, f.__name__
    assert not numba.config.CACHE_DIR or folder not in numba.config.CACHE_DIR    # the user's setting is back


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (2, 3, 7, 7)])
@pytest.mark.parametrize("pool", [dict(kernel_size=2), dict(kernel_size=2, ceil_mode=True), dict(kernel_size=3, stride=2)])
def test_maxpool_module_under_no_grad_gives_the_same_output_and_keeps_nothing(shape, pool, rng):
    from nanotorch import nn, no_grad
    layer = nn.MaxPool2d(**pool)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    y = layer(x)
    with no_grad():
        y_no_grad = layer(x)
    np.testing.assert_array_equal(y_no_grad, y)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones_like(y))


DIRECT_SHAPES = [(2, 3, 5, 7, 6), (1, 1, 1, 1, 1), (3, 2, 4, 1, 5), (2, 5, 9, 4, 3), (1, 4, 8, 14, 14), (2, 1, 3, 2, 9)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", DIRECT_SHAPES)           # (N, C, OC, H, W): 1x1, 1x5 and 2x9 planes among them
def test_pad_planes_equals_reference(shape, dtype, rng):
    """The same bits as np.pad, in either layout, through a strided view, on one thread or in tasks."""
    from nanotorch.kernels.conv3x3 import pad_plane
    n, c, _, h, w = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    x_cf = np.ascontiguousarray(x.transpose(1, 0, 2, 3))                # (C, N, H, W)
    want = K.pad_planes_reference(x)
    np.testing.assert_array_equal(K.pad_planes_reference(x_cf, channels_first=True), want)
    for parallel in (False, True):
        for got in (K.pad_planes(x, parallel), K.pad_planes(x_cf, parallel, True),
                    K.pad_planes(x_cf.transpose(1, 0, 2, 3), parallel)):
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    # pad_planes takes fresh memory, which may hold zeros already: every cell of a plane written
    # (a 1x1 plane is all border but one value) shows only in a plane filled with NaN first
    for plane in range(n * c):
        flat = np.full(want.shape[2], np.nan, dtype)
        pad_plane(x[plane // c, plane % c], flat)
        np.testing.assert_array_equal(flat.view(np.uint8), want[plane // c, plane % c].view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", DIRECT_SHAPES)           # (N, C, OC, H, W): odd sizes, OC not a multiple of 4
def test_direct_conv3x3_equals_reference(shape, dtype, rng):
    n, c, oc, h, w = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((oc, c, 3, 3)).astype(dtype)
    dz = rng.standard_normal((n, oc, h, w)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    xp = K.pad_planes(x)
    z = K.conv3x3_same(xp, wt, h, w, False).reshape(n, oc, h, w)
    np.testing.assert_allclose(z, K.conv3x3_same_reference(x, wt), **tol)
    z_cf = K.conv3x3_same(xp, wt, h, w, True)                           # channels first: (OC, N, H*W)
    np.testing.assert_array_equal(z_cf.transpose(1, 0, 2).reshape(z.shape), z)
    dz_cf = dz.transpose(1, 0, 2, 3).copy()                             # (OC, N, H, W), as Conv2d passes it
    dzp = K.pad_planes(dz_cf, channels_first=True)
    np.testing.assert_array_equal(dzp, K.pad_planes(dz))                # the same padded planes
    np.testing.assert_array_equal(dzp, K.pad_planes(dz_cf.transpose(1, 0, 2, 3)))   # through a strided view
    np.testing.assert_array_equal(K.flip_transpose(wt), K.flip_transpose_reference(wt))
    # every argument in both calls: one compiled specialization (see test_fused.py, numba/numba#10617)
    dx = K.conv3x3_same(dzp, K.flip_transpose(wt), h, w, False, False, False).reshape(x.shape)
    np.testing.assert_array_equal(K.conv3x3_same(dzp, wt, h, w, False, False, True).reshape(x.shape), dx)
    dcols = wt.reshape(oc, -1).T @ dz.transpose(1, 0, 2, 3).reshape(oc, -1)
    np.testing.assert_allclose(dx, K.col2im_reference(dcols, n, c, h, w, 3, 3, 1, 1, 1, 1, h, w), **tol)
    np.testing.assert_allclose(K.conv3x3_same_grad_weight(xp, dzp, h, w),
                               K.conv3x3_same_grad_weight_reference(x, dz), **tol)


@pytest.mark.parametrize("h, w", [(5, 14), (3, 12), (1, 1)])   # blocks and single vectors, a block only, single only
def test_direct_conv3x3_adds_in_the_order_of_the_weights_axes(h, w, rng):
    """Each float32 output is its multiply-adds in the order of w's axes (input channel, kernel row,
    kernel column), each rounded once, as the kernel's docstring says, in a block of three vectors
    and in a single vector alike: the bits of that loop in NumPy (fma_reference, one rounding but
    where a float64 sum falls exactly halfway between two float32 values, which these inputs miss)."""
    from nanotorch.kernels.optim import fma_reference
    n, c, oc = 2, 3, 5
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c, 3, 3)).astype(np.float32)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((n, oc, h, w), np.float32)
    for ci in range(c):
        for i in range(3):
            for j in range(3):
                want = fma_reference(np.broadcast_to(wt[None, :, ci, i, j, None, None], want.shape),
                                     np.broadcast_to(xpad[:, ci:ci + 1, i:i + h, j:j + w], want.shape), want)
    got = K.conv3x3_same(K.pad_planes(x), wt, h, w, False).reshape(want.shape)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", DIRECT_SHAPES)           # (N, C, OC, H, W): odd sizes, OC not a multiple of 4
def test_direct_conv3x3_grad_input_equals_reference(shape, dtype, rng):
    """The input gradient as Conv2d computes it (dz padded channels first, the weight flipped inside
    the call) equals the forward's convolution of dz with w transposed and flipped, and is the
    forward's adjoint: <conv(x, w), dz> == <x, dx>, the gradient of a linear map exactly."""
    n, c, oc, h, w = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((oc, c, 3, 3)).astype(dtype)
    dz_cf = rng.standard_normal((oc, n, h, w)).astype(dtype)           # (OC, N, H, W), as Conv2d passes it
    dz = dz_cf.transpose(1, 0, 2, 3)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    want = K.conv3x3_same_grad_input_reference(dz, wt)
    assert want.dtype == dtype
    for parallel in (False, True):
        # every argument in every call: one compiled specialization (numba/numba#10617, as above)
        dzp = K.pad_planes(dz_cf, parallel, True)
        dx = K.conv3x3_same(dzp, wt, h, w, False, parallel, True).reshape(n, c, h, w)
        assert dx.dtype == dtype
        np.testing.assert_allclose(dx, want, rtol=rtol, atol=rtol)
    z = K.conv3x3_same_reference(x, wt).astype(np.float64)
    scale = np.sum(np.abs(z * dz))
    np.testing.assert_allclose(np.sum(x.astype(np.float64) * dx), np.sum(z * dz), rtol=0, atol=10 * rtol * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ignore_index", [-100, 4])                 # 4: the rows whose class is 4 are skipped
@pytest.mark.parametrize("targets_dtype", [np.int64, np.uint8])
def test_cross_entropy_equals_reference(dtype, ignore_index, targets_dtype, rng):
    logits = (rng.standard_normal((5, 10)) * 20).astype(dtype)
    logits[1] = 0.0                                          # a uniform row
    logits[2, 3] = 200.0                                     # exp(z) alone would overflow in float32
    targets = np.array([0, 9, 3, 4, 4], dtype=targets_dtype)
    nll, total, kept, log_p, bad = K.cross_entropy_forward(logits, targets, ignore_index)
    want_nll, want_log_p = K.cross_entropy_forward_reference(logits, targets, ignore_index)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-13)
    assert bad == -1 and log_p.dtype == dtype and nll.dtype == dtype
    assert kept == (5 if ignore_index == -100 else 3)
    np.testing.assert_allclose(log_p, want_log_p, **tol)
    np.testing.assert_allclose(nll, want_nll, **tol)
    np.testing.assert_allclose(total, want_nll.astype(np.float64).sum(), **tol)
    scale = rng.random(5)
    grad = K.cross_entropy_backward(log_p, targets, ignore_index, scale)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, K.cross_entropy_backward_reference(log_p, targets, ignore_index, scale), **tol)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-6)    # softmax sums to 1, the one-hot too
    assert (grad[targets == ignore_index] == 0).all()


def test_cross_entropy_float32_sums_are_kept_in_float64(rng):
    """The batch sum of a float32 loss is exact to float64 rounding, not off by N float32 roundings
    (at N = 100,000 an in-order float32 sum was off by ~1e-5 relative)."""
    logits = (rng.standard_normal((100_000, 3)) + np.array([3.0, 0.0, 0.0])).astype(np.float32)
    targets = rng.integers(0, 3, 100_000)
    nll, total, kept, log_p, bad = K.cross_entropy_forward(logits, targets, -100)
    assert abs(total - nll.astype(np.float64).sum()) <= 1e-12 * abs(total)
    exact = K.cross_entropy_forward_reference(logits.astype(np.float64), targets, -100)[0]     # nll in float64
    assert abs(total / kept - exact.mean()) < 1e-6 * exact.mean()
    float32_in_order = np.float32(0)
    for v in nll[:20_000]:                                                # (what the loop did before)
        float32_in_order += v
    assert abs(float32_in_order - nll[:20_000].astype(np.float64).sum()) > 1e-6 * float32_in_order


@pytest.mark.parametrize("dtype, big", [(np.float32, 200.0), (np.float64, 800.0)])
def test_cross_entropy_is_stable_whichever_class_has_the_largest_logit(dtype, big):
    """Each row's own maximum is subtracted before exp, in whichever column it is: a logit ``big``
    above the rest (exp(big) overflows the dtype) gives finite log-probabilities, loss and gradient."""
    logits = (np.eye(6) * big).astype(dtype)                           # row k: the max in column k
    targets = (np.arange(6) + 1) % 6                                   # never the max's class
    nll, total, kept, log_p, bad = K.cross_entropy_forward(logits, targets, -100)
    want_nll, want_log_p = K.cross_entropy_forward_reference(logits, targets, -100)
    assert bad == -1 and np.isfinite(log_p).all() and np.isfinite(total)
    np.testing.assert_allclose(log_p, want_log_p, rtol=1e-6)
    np.testing.assert_allclose(nll, big, rtol=1e-6)
    grad = K.cross_entropy_backward(log_p, targets, -100, np.ones(6))
    np.testing.assert_allclose(grad, K.cross_entropy_backward_reference(log_p, targets, -100, np.ones(6)), atol=1e-6)


def test_cross_entropy_sums_over_many_classes_in_float64(rng):
    """The sum of exp over the classes is kept in float64 too: over 2^18 float32 logits a row, an
    in-order float32 sum is off by a few 1e-6 relative, which log p would carry."""
    logits = rng.standard_normal((2, 1 << 18)).astype(np.float32)
    targets = np.array([0, 7])
    nll, total, kept, log_p, bad = K.cross_entropy_forward(logits, targets, -100)
    exact_nll, exact_log_p = K.cross_entropy_forward_reference(logits.astype(np.float64), targets, -100)
    np.testing.assert_allclose(log_p, exact_log_p, rtol=0, atol=4e-6)       # |log p| ~ 13: a few float32 ulps
    np.testing.assert_allclose(nll, exact_nll, rtol=1e-6)


def test_cross_entropy_of_a_confident_row_keeps_its_small_loss():
    """log sum exp is taken of the float64 sum, then rounded: a row whose target's logit is 20 above
    the others has loss 2 exp(-20) ~ 4e-9, which a float32 sum (1 + 4e-9 rounds to 1) would make 0."""
    logits = np.array([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]], np.float32)
    targets = np.array([0, 1])
    nll, total, kept, log_p, bad = K.cross_entropy_forward(logits, targets, -100)
    exact = np.log1p(np.full(2, 2 * np.exp(-20.0)))
    np.testing.assert_allclose(nll, exact, rtol=1e-6)
    np.testing.assert_allclose(nll, K.cross_entropy_forward_reference(logits, targets, -100)[0], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])                 # any strides
def test_dropout_gives_the_reference_bits(dtype, transposed, rng):
    x = rng.standard_normal((5, 7)).astype(dtype)
    x[0, :3] = [np.inf, -2.0, np.nan]                 # dropped: NaN, -0.0 and NaN, as x * 0 gives them
    u = rng.random(x.shape)
    u[0, :3] = 0.0
    u[1, 0] = 0.25                                    # exactly p: kept (u >= p)
    if transposed:
        x, u = x.T, u.T
    with np.errstate(invalid="ignore"):
        got, want = K.dropout_forward(x, u, 0.25, 4 / 3), K.dropout_forward_reference(x, u, 0.25, 4 / 3)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == x.shape
        np.testing.assert_array_equal(g.view(np.uint8), np.ascontiguousarray(w).view(np.uint8))


def test_cross_entropy_kernel_reports_a_bad_target_and_propagates_nan(rng):
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    assert K.cross_entropy_forward(logits, np.array([0, 4, 1]), -100)[4] == 1
    assert K.cross_entropy_forward(logits, np.array([0, 1, -1]), -100)[4] == 2
    assert K.cross_entropy_forward(logits, np.array([0, 1, -1]), -1)[4] == -1       # -1 is ignore_index here
    logits[1, 2] = np.nan
    nll, total, kept, log_p, bad = K.cross_entropy_forward(logits, np.array([0, 1, 2]), -100)
    assert bad == -1 and np.isnan(total) and np.isnan(log_p[1]).all() and not np.isnan(log_p[[0, 2]]).any()
    assert K.cross_entropy_forward(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), -100)[2] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_squares_equals_reference(dtype, rng):
    x = rng.standard_normal(24_023).astype(dtype)
    assert np.isclose(K.sum_of_squares(x), K.sum_of_squares_reference(x), rtol=1e-13, atol=0)
    assert K.sum_of_squares(np.zeros(0, dtype)) == 0.0
    assert K.sum_of_squares(np.array([3.0, -4.0], dtype)) == 25.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum, dampening, weight_decay, nesterov",
                         [(0.0, 0.0, 0.0, False), (0.9, 0.0, 0.0, False), (0.85, 0.1, 0.01, False), (0.9, 0.0, 0.05, True)])
@pytest.mark.parametrize("other", ["reference", "python body"])
def test_sgd_update_gives_the_reference_bits(dtype, momentum, dampening, weight_decay, nesterov, other, rng):
    """Three steps (the first starts the momentum buffer) of the compiled loop and of the NumPy formula,
    or of the loop's own body run as Python (what NUMBA_DISABLE_JIT=1 runs), whose multiply-adds round
    once as the kernel's fused ones do (float64 by fractions)."""
    twin = K.sgd_update_reference if other == "reference" else K.sgd_update.py_func
    p0 = rng.standard_normal(1001).astype(dtype)
    p, buf = [p0.copy(), p0.copy()], [np.empty(1001, dtype) for _ in range(2)]
    for step in range(3):
        g = rng.standard_normal(1001).astype(dtype)
        g_before = g.copy()
        args = (0.1 / (step + 1), momentum, dampening, weight_decay, nesterov, step == 0)
        K.sgd_update(p[0], g, buf[0], *args)
        twin(p[1], g, buf[1], *args)
        np.testing.assert_array_equal(p[0], p[1])
        np.testing.assert_array_equal(g, g_before)
        if momentum:
            np.testing.assert_array_equal(buf[0], buf[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k, o", [(4, 28, 56), (4, 56, 10), (1, 5, 3), (3, 7, 1), (5, 1, 4)])
def test_linear_kernels_equal_reference(n, k, o, dtype, rng):
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((n, k), (o, k), (o,)))
    dy = rng.standard_normal((n, o)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(K.linear_forward(x, w, b, True), K.linear_forward_reference(x, w, b), **tol)
    np.testing.assert_allclose(K.linear_forward(x, w, b, False), K.linear_forward_reference(x, w, None), **tol)
    dw, db = np.full((o, k), 0.5, dtype), np.full(o, -0.25, dtype)          # the gradients are added into these
    dx = K.linear_backward(dy, x, w, dw, db, True)
    for got, want in zip((dx, dw - 0.5, db + 0.25), K.linear_backward_reference(dy, x, w)):
        np.testing.assert_allclose(got, want, **tol)
    db_before = db.copy()
    K.linear_backward(dy, x, w, dw, db, False)
    np.testing.assert_array_equal(db, db_before)                           # no bias: db untouched
    with pytest.raises(ValueError, match="w \\(out, in\\)"):
        K.linear_forward(x, w[:, :-1] if k > 1 else w[:0], b, True)
    with pytest.raises(ValueError, match="db \\(out,\\)"):
        K.linear_backward(dy, x, w, dw, db[:-1], True)


def test_gelu_float32_far_tails_keep_the_sign_and_a_bounded_derivative():
    """Beyond the erf fit's range Phi is kept >= 0: GELU of a large negative u is -0.0 (a negative
    Phi would make it positive, growing with |u|), of a large positive u is u to float32 rounding,
    and the derivative there is 0 or 1 to float32 rounding (no u * phi(9) blowing up)."""
    from nanotorch.kernels.gelu import gelu_inference
    x = np.array([-1e30, -1e4, -100.0, -7.0, -5.7, -5.5, -5.2, 5.7, 9.5, 100.0, 1e4, 1e30], dtype=np.float32)
    y, d = K.gelu_forward(x)
    for got in (y, gelu_inference(x)):
        neg = x < 0
        assert np.all(got[neg] <= 0) and np.all(np.signbit(got[x < -5.7]))
        np.testing.assert_allclose(got[x >= 9.5], x[x >= 9.5], rtol=2.5e-7, atol=0)
    assert np.all(np.abs(d[x < -5.7]) < 1e-10)
    np.testing.assert_allclose(d[x >= 9.5], 1, rtol=2.5e-7, atol=0)
