"""nanotorch/kernels/winograd_small.py: the pooled Winograd pass with images in the vector lanes,
against its float64 reference (the separate steps), on even and odd planes, with either pooling
rounding; and the scratch rows' length (kernels/winograd.py: row_length)."""
import numpy as np
import pytest

from nanotorch.kernels import simd
from nanotorch.kernels.winograd import conv3x3_winograd_pooled, row_length, winograd_weights
from nanotorch.kernels.winograd_small import conv3x3_winograd_pooled_small, conv3x3_winograd_pooled_small_reference
from test_simd import run_as_python

# (N, C, OC, H, W, ceil_mode): the seed model's 7x7 (ceil) and 4x4 blocks at batch 64; batches of a
# part of a vector of images, one exactly (16 float32 lanes with AVX-512) and one more; odd sides
# with ceil_mode (a last window of one row or column) and without (the last row or column dropped);
# 1-wide and 2-wide planes; OC not a multiple of 4
SHAPES = [(64, 20, 24, 7, 7, True), (64, 24, 28, 4, 4, False), (5, 3, 5, 5, 6, True), (16, 2, 3, 3, 3, False),
          (17, 4, 4, 1, 2, True), (1, 8, 12, 9, 4, True), (33, 2, 2, 2, 2, False), (3, 5, 7, 6, 5, False)]


def _inputs(shape, dtype, rng):
    n, c, oc, h, w, _ = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((oc, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    scale = (rng.uniform(0.5, 2, oc) * rng.choice([-1, 1], oc)).astype(dtype)      # either sign
    return x, wt, scale, rng.standard_normal(oc).astype(dtype)


def _pooled_size(h, w, ceil_mode):
    return ((h + 1) // 2, (w + 1) // 2) if ceil_mode else (h // 2, w // 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_the_reference(shape, dtype, rng):
    """Within float32 rounding of values up to ~5 (float64: to rounding), for every image of the batch,
    whether or not it fills its group of lanes."""
    n, c, oc, h, w, ceil_mode = shape
    x, wt, scale, shift = _inputs(shape, dtype, rng)
    oh, ow = _pooled_size(h, w, ceil_mode)
    a = conv3x3_winograd_pooled_small(x, winograd_weights(wt), oc, scale, shift, oh, ow)
    assert a.shape == (n, oc, oh * ow) and a.dtype == dtype
    reference = conv3x3_winograd_pooled_small_reference(x, wt, scale, shift, ceil_mode)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, reference, **tol)


def test_reference_pools_a_clipped_window_over_the_pixels_inside_the_plane():
    """The reference by hand: a 1x1 convolution (centre tap) of a 3x3 plane, GELU's identity-like
    large values: ceil_mode's last windows hold 2, 2 and 1 pixels; without it only the first one."""
    x = np.array([[[[10.0, 20, 30], [40, 50, 60], [70, 80, 90]]]])
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 1] = 1
    one, zero = np.ones(1), np.zeros(1)
    np.testing.assert_allclose(conv3x3_winograd_pooled_small_reference(x, w, one, zero, True).reshape(4),
                               [50, 60, 80, 90])
    np.testing.assert_allclose(conv3x3_winograd_pooled_small_reference(x, w, one, zero, False).reshape(1), [50])
    np.testing.assert_allclose(conv3x3_winograd_pooled_small(x, winograd_weights(w), 1, one, zero, 2, 2).reshape(4),
                               [50, 60, 80, 90])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_equals_the_planes_kernel_on_even_planes(dtype, rng):
    """On even planes both pooled kernels apply: the same transforms and products in the same order
    (the tiles sit in other lanes, which does not change a lane's arithmetic), and GELU compiled
    in other loops: the same numbers up to a unit or two in the last place."""
    shape = (19, 9, 6, 14, 16, False)
    x, wt, scale, shift = _inputs(shape, dtype, rng)
    u = winograd_weights(wt)
    np.testing.assert_allclose(conv3x3_winograd_pooled_small(x, u, 6, scale, shift, 7, 8),
                               conv3x3_winograd_pooled(x, u, 6, scale, shift),
                               rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6 if dtype == np.float32 else 1e-14)


def test_kernel_gives_the_same_bits_on_one_thread_and_two_and_refuses_bad_arguments(rng):
    x, wt, scale, shift = _inputs((40, 8, 6, 7, 7, True), np.float32, rng)
    u = winograd_weights(wt)
    np.testing.assert_array_equal(conv3x3_winograd_pooled_small(x, u, 6, scale, shift, 4, 4, 2),
                                  conv3x3_winograd_pooled_small(x, u, 6, scale, shift, 4, 4, 1))
    assert conv3x3_winograd_pooled_small(x[:0], u, 6, scale, shift, 4, 4).shape == (0, 6, 16)
    with pytest.raises(ValueError, match="scale and shift of out_channels"):
        conv3x3_winograd_pooled_small(x, u, 6, scale[:5], shift, 4, 4)
    with pytest.raises(ValueError, match="from winograd_weights"):
        conv3x3_winograd_pooled_small(x[:, :7].copy(), u, 6, scale, shift, 4, 4)
    for oh, ow in ((5, 4), (2, 4), (4, 0), (0, 3)):
        with pytest.raises(ValueError, match="out_h, out_w"):
            conv3x3_winograd_pooled_small(x, u, 6, scale, shift, oh, ow)


@pytest.mark.parametrize("rows, t_, itemsize", [(20, 256, 4), (24, 256, 4), (16, 64, 4), (12, 224, 4), (8, 64, 8),
                                                (32, 64, 4), (1, 16, 4)])
def test_scratch_rows_keep_the_16_positions_off_a_2048_byte_stride(rows, t_, itemsize):
    """row_length: t_ or one vector more, and 16 positions' rows apart by a stride that is not a
    multiple of 2048 bytes (where a vector of tiles more can change it: with 32 rows of 16 float32
    values, it cannot, and the length stays)."""
    lanes = simd.VECTOR_BYTES // itemsize
    n = row_length(rows, t_, lanes, itemsize)
    assert n >= t_ and n % lanes == 0 and n - t_ <= lanes
    if rows * lanes * itemsize % 2048:
        assert rows * n * itemsize % 2048 != 0
    else:
        assert n == t_


_BOUNDS_CODE = """
import numpy as np
from nanotorch.kernels import simd, winograd as W, winograd_small as S
assert simd.VECTOR_BYTES == {vector_bytes}, simd.VECTOR_BYTES


def inside(name, op):
    def checked(a, i, *rest):
        n = simd.lanes_of(a)
        assert 0 <= i and i + n <= a.size, (name, i, n, a.size)
        return op(a, i, *rest)
    return checked


for module in (W, S):
    for name in ("load", "store"):
        setattr(module, name, inside(name, getattr(simd, name)))
rng = np.random.default_rng(0)
for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
    for n, c, oc, h, w, ceil_mode in ((3, 2, 5, 7, 7, True), (1, 3, 4, 4, 4, False), (9, 2, 3, 1, 2, True),
                                      (2, 2, 2, 5, 6, False)):
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = rng.standard_normal((oc, c, 3, 3)).astype(dtype)
        scale, shift = rng.standard_normal(oc).astype(dtype), rng.standard_normal(oc).astype(dtype)
        oh, ow = ((h + 1) // 2, (w + 1) // 2) if ceil_mode else (h // 2, w // 2)
        for threads in (1, 2):
            a = S.conv3x3_winograd_pooled_small(x, W.winograd_weights(wt), oc, scale, shift, oh, ow, threads)
            np.testing.assert_allclose(a, S.conv3x3_winograd_pooled_small_reference(x, wt, scale, shift, ceil_mode),
                                       rtol=tol, atol=tol)
print("ok")
"""


@pytest.mark.parametrize("vector_bytes", [64, 32])
def test_kernel_reads_and_writes_inside_its_arrays(vector_bytes):
    """Compiled, a vector load or store does not check its bounds. Run as Python (NUMBA_DISABLE_JIT=1)
    with loads and stores that do, the kernel stays inside its padded planes, transformed tiles and
    windows, with 64- and 32-byte vectors, in float32 and float64, on odd and even planes; and still
    matches the reference."""
    run_as_python(_BOUNDS_CODE.format(vector_bytes=vector_bytes), vector_bytes, timeout=600)


def test_which_blocks_take_which_pooled_pass():
    """nn/fused.py's rule, on the seed model's convolutions: under no_grad only, Conv2d's own Winograd
    layers (8 -> 12, 12 -> 16, 16 -> 20) pool with tiles in the lanes, the 7x7 and 4x4 ones with
    images in the lanes, from half a vector of images; the 1 -> 4 and 4 -> 8 layers (fewer than 8
    input channels) with neither."""
    import nanotorch as nt
    from nanotorch import nn
    from nanotorch.nn.fused import winograd_pooled_kind
    from mnist.model import build_model
    convs = [m for m in build_model().modules() if isinstance(m, nn.Conv2d)]
    sizes = [28, 28, 28, 28, 14, 7, 4]
    assert not any(winograd_pooled_kind(c, (64, c.in_channels, s, s)) for c, s in zip(convs, sizes))
    with nt.no_grad():
        kinds = [winograd_pooled_kind(c, (64, c.in_channels, s, s)) for c, s in zip(convs, sizes)]
        assert kinds == [None, None, "planes", "planes", "planes", "images", "images"]
        assert winograd_pooled_kind(nn.Conv2d(8, 4, 3, padding=1, stride=2), (2, 8, 7, 7)) is None
        assert winograd_pooled_kind(nn.Conv2d(8, 4, 3, padding=2), (2, 8, 7, 7)) is None
        assert winograd_pooled_kind(nn.Conv2d(8, 4, 3, padding=1), (2, 8, 15, 15)) is None    # the direct kernel's
        half = simd.VECTOR_BYTES // 8                     # half a vector of float32 images: 8 with AVX-512
        assert winograd_pooled_kind(convs[5], (half, 20, 7, 7)) == "images"
        assert winograd_pooled_kind(convs[5], (half - 1, 20, 7, 7)) is None
