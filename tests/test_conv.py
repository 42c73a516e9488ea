"""nn.Conv2d's two algorithms, im2col + GEMM and the direct 3x3 kernel: which one runs, and that
the layer gives the same outputs and gradients through either."""
import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn
from mnist.model import build_model


def test_which_convolutions_run_the_direct_kernel():
    convs = [m for m in build_model().modules() if isinstance(m, nn.Conv2d)]
    sizes = [28, 28, 28, 28, 14, 7, 4]                       # each convolution's input plane
    chosen = [c.uses_direct_kernel((4, c.in_channels, s, s)) for c, s in zip(convs, sizes)]
    assert chosen == [True, True, True, True, True, False, False]    # 7x7, 4x4: rows too short
    assert not nn.Conv2d(4, 4, 3, padding=1, stride=2).uses_direct_kernel((4, 4, 28, 28))
    assert not nn.Conv2d(4, 4, 5, padding=2).uses_direct_kernel((4, 4, 28, 28))
    assert not nn.Conv2d(4, 4, 3).uses_direct_kernel((4, 4, 28, 28))
    conv = nn.Conv2d(4, 4, 3, padding=1)                     # the rows decide: at least 14 wide, any height
    assert conv.uses_direct_kernel((4, 4, 3, 14)) and not conv.uses_direct_kernel((4, 4, 28, 13))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_direct_and_im2col_layers_agree(dtype, bias):
    nt.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3, padding=1, bias=bias).to(dtype) for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    layers[0].direct_min_width = 17                            # im2col + GEMM
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 16)).astype(dtype)
    dout = rng.standard_normal((2, 6, 9, 16)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert [layer.uses_direct_kernel(x.shape) for layer in layers] == [False, True]
    outs = [layer(x) for layer in layers]
    dxs = [layer.backward(dout) for layer in layers]
    assert outs[1].dtype == dxs[1].dtype == layers[1].weight.grad.dtype == dtype
    np.testing.assert_allclose(outs[1], outs[0], **tol)
    np.testing.assert_allclose(dxs[1], dxs[0], **tol)
    for p0, p1 in zip(layers[0].parameters(), layers[1].parameters()):
        np.testing.assert_allclose(p1.grad, p0.grad, **tol)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("width", [16, 7])                      # the direct kernel, im2col + GEMM
def test_without_input_grad_the_backward_returns_none_and_the_same_parameter_grads(fused, width):
    """input_requires_grad = False (as mnist.train sets on the first convolution) skips dx only."""
    def make():
        nt.manual_seed(0)
        return nn.ConvBNGELU(3, 4, 3, padding=1) if fused else nn.Conv2d(3, 4, 3, padding=1)
    layers = [make(), make()]
    conv = layers[1][0] if fused else layers[1]
    conv.input_requires_grad = False
    rng = np.random.default_rng(3)
    x, dout = rng.standard_normal((2, 3, 6, width), np.float32), rng.standard_normal((2, 4, 6, width), np.float32)
    dxs = []
    for layer in layers:
        layer(x)
        dxs.append(layer.backward(dout))
    assert dxs[0].shape == x.shape and dxs[1] is None
    for p0, p1 in zip(layers[0].parameters(), layers[1].parameters()):
        np.testing.assert_array_equal(p1.grad, p0.grad)


def test_a_nan_on_the_image_edge_propagates_through_both_algorithms():
    """Outputs and input gradients have NaN in the same places; the direct weight gradient has NaN
    wherever im2col's has, and may have more (0 * NaN on the padded border, see kernels/conv3x3.py)."""
    nt.manual_seed(0)
    layers = [nn.Conv2d(2, 3, 3, padding=1) for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    layers[0].direct_min_width, layers[1].direct_min_width = 100, 1
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 16)).astype(np.float32)
    x[0, 1, 2, 15] = np.nan                                   # last column
    dout = np.ones((2, 3, 5, 16), np.float32)
    outs = [layer(x) for layer in layers]
    dxs = [layer.backward(dout) for layer in layers]
    np.testing.assert_array_equal(np.isnan(outs[1]), np.isnan(outs[0]))
    np.testing.assert_array_equal(np.isnan(dxs[1]), np.isnan(dxs[0]))
    nan_im2col, nan_direct = np.isnan(layers[0].weight.grad), np.isnan(layers[1].weight.grad)
    assert nan_im2col.any() and (nan_direct | ~nan_im2col).all()


def test_direct_kernels_reject_inconsistent_shapes():
    from nanotorch.kernels import conv3x3_same, conv3x3_same_grad_weight, pad_planes
    xp = pad_planes(np.zeros((2, 3, 4, 14), np.float32))
    with pytest.raises(ValueError, match="pad_planes"):
        conv3x3_same(xp, np.zeros((5, 3, 3, 3), np.float32), 5, 14, True)           # wrong height
    with pytest.raises(ValueError, match="w \\(OC, C, 3, 3\\)"):
        conv3x3_same(xp, np.zeros((5, 1, 3, 3), np.float32), 4, 14, True)           # wrong input channels
    with pytest.raises(ValueError, match="pad_planes"):
        conv3x3_same_grad_weight(xp, pad_planes(np.zeros((1, 5, 4, 14), np.float32)), 4, 14)   # wrong batch
    with pytest.raises(ValueError, match="pad_planes"):
        conv3x3_same_grad_weight(xp, pad_planes(np.zeros((2, 5, 5, 14), np.float32)), 4, 14)   # dz of another height
    with pytest.raises(ValueError, match="w \\(OC, C, 3, 3\\)"):
        conv3x3_same(xp, np.zeros((5, 3, 1, 1), np.float32), 4, 14, True)           # a 1x1 kernel (would broadcast)


def test_a_padded_gradient_needs_the_direct_kernel_and_no_bias():
    """backward_channels_first(dz, padded=True) takes dz as the direct kernel's zero-bordered planes
    (as ConvBNGELU writes them): the same gradients as dz unpadded for a direct layer with no bias;
    refused by a layer with a bias (whose gradient is a sum over dz) or one that ran im2col + GEMM."""
    from nanotorch.kernels import pad_planes
    rng = np.random.default_rng(5)
    for bias, width in ((False, 16), (True, 16), (False, 7)):
        layer = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        layer(rng.standard_normal((2, 3, 5, width)).astype(np.float32))
        dz = rng.standard_normal((4, 2, 5 * width)).astype(np.float32)            # (OC, N, H*W)
        dzp = pad_planes(dz.reshape(4, 2, 5, width), channels_first=True)
        if bias or width < layer.direct_min_width:
            with pytest.raises(ValueError, match="padded gradient needs the direct kernel and no bias"):
                layer.backward_channels_first(dzp, padded=True)
            continue
        dx = layer.backward_channels_first(dz)
        grad, layer.weight.grad = layer.weight.grad, None
        np.testing.assert_array_equal(layer.backward_channels_first(dzp, padded=True), dx)
        np.testing.assert_array_equal(layer.weight.grad, grad)
