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
