"""nanotorch/kernels/winograd.py: Winograd F(2x2, 3x3) against its NumPy reference and the direct
convolution, and where nn.Conv2d uses it (under no_grad only)."""
import os

import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn, optim
from nanotorch.kernels import conv3x3_same_reference
from nanotorch.kernels.batchnorm_gelu import bn_gelu_inference
from nanotorch.kernels.gelu import gelu_forward_reference
from nanotorch.kernels.pooling import maxpool2x2_max
from nanotorch.kernels.winograd import (conv3x3_winograd, conv3x3_winograd_bn_gelu, conv3x3_winograd_pooled,
                                        conv3x3_winograd_pooled_reference, conv3x3_winograd_reference, winograd_weights,
                                        winograd_weights_reference)
from mnist.model import build_model
from test_simd import run_as_python

# (N, C, OC, H, W): OC not a multiple of 4; planes whose tile rows take part of a vector, exactly one
# (32 wide: 16 tiles, a float32 vector with AVX-512), more than one (40 wide), and a single tile (2 x 2)
SHAPES = [(3, 1, 4, 28, 28), (2, 5, 7, 6, 10), (1, 3, 9, 14, 40), (2, 12, 16, 14, 14), (1, 2, 3, 2, 2),
          (2, 3, 5, 4, 32), (1, 8, 1, 16, 34)]


def _direct(x, w):
    """The direct convolution in float64, in the kernel's (OC, N, H*W) layout."""
    z = conv3x3_same_reference(x.astype(np.float64), w.astype(np.float64))
    return z.reshape(x.shape[0], w.shape[0], -1).transpose(1, 0, 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_the_convolution(shape, rng):
    """The algorithm itself, in float64: A^T [(G g G^T) . (B^T d B)] A is the 3x3 correlation, exactly
    but for rounding."""
    n, c, oc, h, w = shape
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((oc, c, 3, 3))
    np.testing.assert_allclose(conv3x3_winograd_reference(x, wt), _direct(x, wt), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_the_reference(shape, dtype, rng):
    """float64 to rounding; float32 within a few units of the output's scale (the transforms add and
    subtract values of the input's size before the products): measured at most 8e-6 on these shapes
    with standard normal inputs, whose outputs reach about 15."""
    n, c, oc, h, w = shape
    x, wt = rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((oc, c, 3, 3)).astype(dtype)
    z = conv3x3_winograd(x, winograd_weights(wt), oc)
    assert z.shape == (oc, n, h * w) and z.dtype == dtype
    tol = 3e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(z, conv3x3_winograd_reference(x, wt), rtol=tol, atol=tol)
    np.testing.assert_allclose(z, _direct(x, wt), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_transform_matches_the_reference(dtype, rng):
    """G w G^T computed in float64 and rounded once: for float32 weights the same bits as the reference
    (whose einsum adds in another order: each entry sums at most nine float32 values times 1/4, 1/2
    or 1, which float64 holds all but exactly); for float64 ones, to rounding. The padding output
    channels are zero."""
    w = rng.standard_normal((7, 5, 3, 3)).astype(dtype)
    u = winograd_weights(w)
    assert u.shape == (16, 8, 5) and u.dtype == dtype and not u[:, 7].any()
    if dtype == np.float32:
        np.testing.assert_array_equal(u, winograd_weights_reference(w))
    else:
        np.testing.assert_allclose(u, winograd_weights_reference(w), rtol=1e-14, atol=1e-14)


def test_image_edges_read_zeros_not_the_neighbouring_plane(rng):
    """Every plane but one is zero: its output must be the convolution of that plane alone. A read of
    the border that took a neighbouring row, channel or image instead of the zero padding would show."""
    x = np.zeros((3, 4, 8, 10), np.float32)
    x[1, 2] = rng.standard_normal((8, 10))
    x[1, 2, :, [0, -1]] = 100.0                              # large values on the edges that must stay inside
    x[1, 2, [0, -1], :] = -100.0
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    z = conv3x3_winograd(x, winograd_weights(w), 5)
    np.testing.assert_allclose(z, _direct(x, w), rtol=1e-5, atol=2e-3)
    assert not z[:, [0, 2]].any()                            # the other images: zeros, exactly


def test_odd_planes_and_wrong_weights_are_refused(rng):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    u = winograd_weights(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="H and W even"):
        conv3x3_winograd(x, u, 4)
    with pytest.raises(ValueError, match="from winograd_weights"):
        conv3x3_winograd(np.zeros((2, 5, 8, 8), np.float32), u, 4)      # u made for 3 input channels
    assert conv3x3_winograd(np.zeros((0, 3, 8, 8), np.float32), u, 4).shape == (4, 0, 64)


def _pooled_inputs(shape, dtype, rng):
    n, c, oc, h, w = shape
    return (rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((oc, c, 3, 3)).astype(dtype),
            rng.standard_normal(oc).astype(dtype), rng.standard_normal(oc).astype(dtype))


def _separate_passes(x, w, scale, shift):
    """The convolution, BatchNorm + GELU and the pooling as evaluation runs them one by one -> (N, OC, H/2 * W/2)."""
    n, _, h, w_ = x.shape
    a = bn_gelu_inference(conv3x3_winograd(x, winograd_weights(w), w.shape[0]), scale, shift)
    return maxpool2x2_max(a.reshape(n, -1, h, w_), h // 2, w_ // 2).reshape(n, w.shape[0], -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_pooled_kernel_matches_the_reference_and_the_separate_passes(shape, dtype, rng):
    """GELU(scale * z + shift) max-pooled 2x2 in one pass, against the float64 reference that takes all
    four GELUs of each window, and against the three passes it replaces: within float32 rounding (the
    separate passes: the same products and transforms, so at most a few units in the last place of
    values up to ~20 here), float64 to rounding."""
    n, c, oc, h, w = shape
    x, wt, scale, shift = _pooled_inputs(shape, dtype, rng)
    a = conv3x3_winograd_pooled(x, winograd_weights(wt), oc, scale, shift)
    assert a.shape == (n, oc, h // 2 * (w // 2)) and a.dtype == dtype
    tol = dict(rtol=3e-5, atol=3e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, conv3x3_winograd_pooled_reference(x, wt, scale, shift), **tol)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(a, _separate_passes(x, wt, scale, shift), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_bn_gelu_kernel_matches_the_reference_and_the_separate_passes(shape, dtype, rng):
    """GELU(scale * z + shift) in one pass, (N, OC, H*W), against GELU of the float64 reference's z
    and against the two passes it replaces (the same products and transforms, then BatchNorm + GELU
    by bn_gelu_inference): within float32 rounding, float64 to rounding."""
    n, c, oc, h, w = shape
    x, wt, scale, shift = _pooled_inputs(shape, dtype, rng)
    a = conv3x3_winograd_bn_gelu(x, winograd_weights(wt), oc, scale, shift)
    assert a.shape == (n, oc, h * w) and a.dtype == dtype
    z = conv3x3_winograd_reference(x, wt).transpose(1, 0, 2)
    want = gelu_forward_reference(scale.astype(np.float64)[:, None] * z + shift.astype(np.float64)[:, None])[0]
    tol = dict(rtol=3e-5, atol=3e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, want, **tol)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    two_passes = bn_gelu_inference(conv3x3_winograd(x, winograd_weights(wt), oc), scale, shift)
    np.testing.assert_allclose(a, two_passes, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooled_kernel_finds_a_windows_largest_gelu_at_either_end(dtype):
    """The kernel evaluates GELU at each window's smallest and largest u only. Windows built for it
    (the convolution is the identity: one centre tap per channel), each with the end that must win:
    all below GELU's minimum at -0.75, where GELU falls (the smallest u); all between it and 0, where
    it rises (the largest); straddling it (GELU(-3) = -0.004 against GELU(-0.5) = -0.15: the smallest);
    and with a positive value (the largest). A kernel that took either end alone fails."""
    windows = np.array([[-3.0, -2.0, -1.5, -4.0], [-0.1, -0.5, -0.7, -0.3], [-3.0, -0.5, -0.9, -1.0],
                        [-3.0, -0.8, 0.2, -0.1]], dtype)
    winner = np.array([-4.0, -0.1, -3.0, 0.2])
    x = windows.reshape(1, 1, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 1, 4, 4)   # the four as 2x2 windows
    w = np.zeros((1, 1, 3, 3), dtype)
    w[0, 0, 1, 1] = 1
    a = conv3x3_winograd_pooled(x, winograd_weights(w), 1, np.ones(1, dtype), np.zeros(1, dtype)).reshape(4)
    other_end = np.where(winner == windows.min(axis=1), windows.max(axis=1), windows.min(axis=1))
    np.testing.assert_allclose(a, gelu_forward_reference(winner)[0], rtol=0, atol=1e-6)
    assert (np.abs(a - gelu_forward_reference(other_end.astype(np.float64))[0]) > 1e-3).all()
    # a negative scale: u = -1 * (-x) is x again, so the ends are picked after the multiply-add
    flipped = conv3x3_winograd_pooled(-x, winograd_weights(w), 1, -np.ones(1, dtype), np.zeros(1, dtype))
    np.testing.assert_allclose(flipped.reshape(4), a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kernel, windows", [(conv3x3_winograd_pooled, 49), (conv3x3_winograd_bn_gelu, 196)])
def test_a_block_kernel_gives_the_same_bits_on_one_thread_and_two_and_refuses_bad_arguments(kernel, windows, rng):
    """The two kernels that end an evaluation block (pooled, and not): images split over threads."""
    x, w, scale, shift = _pooled_inputs((5, 8, 6, 14, 14), np.float32, rng)
    u = winograd_weights(w)
    np.testing.assert_array_equal(kernel(x, u, 6, scale, shift, 2), kernel(x, u, 6, scale, shift, 1))
    assert kernel(x[:0], u, 6, scale, shift).shape == (0, 6, windows)
    with pytest.raises(ValueError, match="scale and shift of out_channels"):
        kernel(x, u, 6, scale[:5], shift)
    with pytest.raises(ValueError, match="H and W even"):
        kernel(np.ascontiguousarray(x[:, :, :13]), u, 6, scale, shift)


def test_which_convolutions_run_winograd():
    """Under no_grad only, the direct kernel's convolutions with at least 8 input channels on planes
    with even sides: the seed model's 8 -> 12, 12 -> 16 and 16 -> 20 layers."""
    convs = [m for m in build_model().modules() if isinstance(m, nn.Conv2d)]
    sizes = [28, 28, 28, 28, 14, 7, 4]
    assert not any(c.uses_winograd((64, c.in_channels, s, s)) for c, s in zip(convs, sizes))   # grad enabled
    with nt.no_grad():
        chosen = [c.uses_winograd((64, c.in_channels, s, s)) for c, s in zip(convs, sizes)]
        assert chosen == [False, False, True, True, True, False, False]
        conv = nn.Conv2d(8, 4, 3, padding=1)
        assert not conv.uses_winograd((2, 8, 14, 15)) and not conv.uses_winograd((2, 8, 15, 14))
        assert not nn.Conv2d(8, 4, 3, padding=1, stride=2).uses_winograd((2, 8, 28, 28))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_under_no_grad_gives_the_direct_layers_output(dtype, bias, rng):
    nt.manual_seed(0)
    layer = nn.Conv2d(9, 6, 3, padding=1, bias=bias).to(dtype)
    x = rng.standard_normal((3, 9, 14, 16)).astype(dtype)
    y = layer(x)
    with nt.no_grad():
        assert layer.uses_winograd(x.shape)
        y_no_grad = layer(x)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y_no_grad, y, **tol)
    assert y_no_grad.dtype == dtype and y_no_grad.shape == y.shape


def test_conv2d_under_no_grad_takes_a_non_contiguous_input(rng):
    """Conv2d copies a strided input contiguous before the kernel (whose rows must be contiguous)."""
    layer = nn.Conv2d(9, 6, 3, padding=1)
    x = rng.standard_normal((16, 14, 3, 9)).astype(np.float32).transpose(2, 3, 1, 0)     # (3, 9, 14, 16), strided
    y = layer(x)
    with nt.no_grad():
        assert layer.uses_winograd(x.shape)
        np.testing.assert_allclose(layer(x), y, rtol=1e-5, atol=1e-5)


def test_seed_model_evaluates_to_the_same_logits_either_way(monkeypatch, rng):
    """The whole seed model in eval mode under no_grad (its fused blocks' inference path), with the
    Winograd layers and with the direct kernel everywhere, on random images: logits within float32
    rounding. (The next test does the same on a trained model and real images, when they are here.)"""
    from mnist.evaluate import predict_logits
    nt.manual_seed(0)
    model = build_model()
    x = rng.standard_normal((70, 1, 28, 28)).astype(np.float32)
    with_winograd = predict_logits(model, x, 32, threads=1)
    monkeypatch.setattr(nn.Conv2d, "winograd_min_channels", 10 ** 9)
    direct = predict_logits(model, x, 32, threads=1)
    assert 0 < np.abs(with_winograd - direct).max() < 1e-5 * np.abs(direct).max()     # (not the same code)


@pytest.mark.skipif(not os.environ.get("NANOTORCH_DATA"), reason="needs real MNIST (NANOTORCH_DATA)")
def test_a_trained_model_predicts_the_same_classes_either_way(monkeypatch):
    """The seed model after 300 steps on MNIST (so that its weights and BatchNorm statistics are a
    trained model's, not the initial ones), evaluated on 1,000 test images with the Winograd layers
    and with the direct ones: logits within float32 rounding, the same class for every image."""
    from mnist.data import load_mnist, normalize
    from mnist.evaluate import predict_logits
    nt.manual_seed(0)
    model = build_model()
    flat = nn.utils.flatten_parameters(model.parameters())
    sgd, loss = optim.SGD([flat], lr=0.05, momentum=0.9), nn.CrossEntropyLoss()
    images, labels = load_mnist("train")
    for step in range(300):
        batch = slice(16 * step, 16 * step + 16)
        loss(model(normalize(images[batch])), labels[batch].astype(np.int64))
        sgd.zero_grad()
        model.backward(loss.backward())
        sgd.step()
    x = normalize(load_mnist("test")[0][:1000])
    with_winograd = predict_logits(model, x, 64, threads=1)
    monkeypatch.setattr(nn.Conv2d, "winograd_min_channels", 10 ** 9)
    direct = predict_logits(model, x, 64, threads=1)
    assert np.abs(with_winograd - direct).max() < 1e-4 * np.abs(direct).max()
    assert (with_winograd.argmax(1) == direct.argmax(1)).all()
    assert (direct.argmax(1) == load_mnist("test")[1][:1000]).mean() > 0.8     # (a trained model: 90% here)


_BOUNDS_CODE = """
import numpy as np
from nanotorch.kernels import simd, winograd as W
from nanotorch.kernels.winograd import conv3x3_winograd, conv3x3_winograd_reference, winograd_weights
assert simd.VECTOR_BYTES == {vector_bytes}, simd.VECTOR_BYTES


def inside(name, op):
    def checked(a, i, *rest):
        n = rest[-1] if name.endswith("_first") else simd.lanes_of(a)
        assert 0 <= n <= simd.lanes_of(a) and (n == 0 or 0 <= i and i + n <= a.size), (name, i, n, a.size)
        return op(a, i, *rest)
    return checked


for name in ("load", "store", "load_first", "store_first"):
    setattr(W, name, inside(name, getattr(simd, name)))
rng = np.random.default_rng(0)
for dtype, tol in ((np.float32, 3e-5), (np.float64, 1e-12)):
    for n, c, oc, h, w in ((2, 3, 5, 6, 10), (1, 2, 4, 2, 2), (1, 1, 3, 4, 34), (1, 2, 1, 8, 32), (3, 2, 2, 14, 14)):
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = rng.standard_normal((oc, c, 3, 3)).astype(dtype)
        scale, shift = rng.standard_normal(oc).astype(dtype), rng.standard_normal(oc).astype(dtype)
        for threads in (1, 2):
            z = conv3x3_winograd(x, winograd_weights(wt), oc, threads)
            np.testing.assert_allclose(z, conv3x3_winograd_reference(x, wt), rtol=tol, atol=tol)
            a = W.conv3x3_winograd_pooled(x, winograd_weights(wt), oc, scale, shift, threads)
            np.testing.assert_allclose(a, W.conv3x3_winograd_pooled_reference(x, wt, scale, shift), rtol=tol, atol=tol)
            a = W.conv3x3_winograd_bn_gelu(x, winograd_weights(wt), oc, scale, shift, threads)
            u = scale.astype(np.float64)[:, None] * conv3x3_winograd_reference(x, wt).transpose(1, 0, 2)
            np.testing.assert_allclose(a, W.gelu_forward_reference(u + shift.astype(np.float64)[:, None])[0],
                                       rtol=tol, atol=tol)
print("ok")
"""


@pytest.mark.parametrize("vector_bytes", [64, 32])
def test_kernel_reads_and_writes_inside_its_arrays(vector_bytes):
    """Compiled, a vector load or store does not check its bounds. Run as Python (NUMBA_DISABLE_JIT=1)
    with loads and stores that do, the kernel stays inside its parity planes, transformed tiles and
    output, with 64- and 32-byte vectors, in float32 and float64, on planes whose tile rows fill part
    of a vector, exactly one (32 wide with 16 float32 lanes; 16 float64 tiles are two vectors of 8) and
    more than one; and still matches the reference."""
    run_as_python(_BOUNDS_CODE.format(vector_bytes=vector_bytes), vector_bytes, timeout=600)
