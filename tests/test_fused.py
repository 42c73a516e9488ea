"""The fused fast paths equal the plain layers they stand for."""
import contextlib
import functools

import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn
from nanotorch.kernels import batchnorm_gelu as K
from nanotorch.kernels import pad_planes
from nanotorch.nn.fused import ConvBNGELU


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_bn_gelu_kernels_equal_reference(dtype, training, rng):
    z = (rng.standard_normal((5, 3, 6 * 7)) * 2 + 1).astype(dtype)      # (C, N, L)
    running = (rng.standard_normal(5).astype(dtype), rng.uniform(0.5, 2, 5).astype(dtype))
    mean, var = running[0].copy(), running[1].copy()                    # updated in place when training
    mean_ref, var_ref = running[0].copy(), running[1].copy()
    gamma, beta = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)
    a, xhat, d, inv_std = K.bn_gelu_forward(z, mean, var, gamma, beta, training, 0.3, 1e-5)
    a_ref, xhat_ref, d_ref, inv_std_ref = K.bn_gelu_forward_reference(z, mean_ref, var_ref, gamma, beta, training, 0.3,
                                                                      1e-5)
    stats_tol = dict(rtol=1e-13, atol=1e-15) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mean, mean_ref, **stats_tol)
    np.testing.assert_allclose(var, var_ref, **stats_tol)
    assert (mean != running[0]).all() if training else (mean == running[0]).all() and (var == running[1]).all()
    assert inv_std.dtype == dtype
    for got, want in ((a, a_ref), (xhat, xhat_ref), (d, d_ref), (inv_std, inv_std_ref)):
        np.testing.assert_allclose(got, want, **tol)
    da = rng.standard_normal((3, 5, 42)).astype(dtype)                   # (N, C, L)
    dgamma, dbeta = np.full(5, 0.5), np.full(5, -0.25)                   # the sums are added into these
    dz = K.bn_gelu_backward(da, xhat, d, inv_std, gamma, training, dgamma, dbeta)
    want = K.bn_gelu_backward_reference(da, xhat, d, inv_std, gamma, training)
    for g, w in zip((dz, dgamma - 0.5, dbeta + 0.25), want):
        # float32: the reference sums in float64 as the kernel does; dz differs by float32 roundings
        # (the kernel's fused multiply-adds): 1.6e-6 relative at most over 20 random channels sets
        np.testing.assert_allclose(g, w, **(tol if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)))
    with pytest.raises(ValueError, match="z.shape"):
        K.bn_gelu_forward(z, mean[:4], var, gamma, beta, training, 0.3, 1e-5)
    # dz written padded for the direct convolution. Both calls pass every argument, as the fused layer
    # does, so that both run one compiled specialization: a float64 prange kernel compiled in this
    # process can round differently in the last bit from the same kernel loaded from Numba's cache
    # (Numba optimises the two differently: numba/numba#10617), and two specializations, one cached
    # and one not, then disagreed (seen after a script had cached only the unpadded one). The
    # float32 kernels of a training run are checked compiled against cached in test_kernels.py.
    for parallel in (False, True):
        dzp = K.bn_gelu_backward(da, xhat, d, inv_std, gamma, training, np.zeros(5), np.zeros(5), parallel, 7)
        plain = K.bn_gelu_backward(da, xhat, d, inv_std, gamma, training, np.zeros(5), np.zeros(5), parallel, 0)
        np.testing.assert_array_equal(dzp, pad_planes(plain.reshape(5, 3, 6, 7), channels_first=True))
    with pytest.raises(ValueError, match="padded_width"):
        K.bn_gelu_backward(da, xhat, d, inv_std, gamma, training, np.zeros(5), np.zeros(5), False, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stats_dtype", [np.float32, np.float64])
def test_update_running_stats_equals_reference(dtype, stats_dtype, rng):
    mean, var = rng.standard_normal(6).astype(stats_dtype), rng.uniform(0.1, 3, 6).astype(stats_dtype)
    for f, m in ((0.1, 4 * 28 * 28), (1.0, 2), (1 / 3, 7)):     # 1.0: momentum=None's first batch
        got = (rng.standard_normal(6).astype(dtype), rng.uniform(0.5, 2, 6).astype(dtype))
        want = (got[0].copy(), got[1].copy())
        K.update_running_stats(*got, mean, var, f, float(m))
        K.update_running_stats_reference(*want, mean, var, f, m)
        for g, w in zip(got, want):
            assert g.dtype == dtype
            np.testing.assert_allclose(g, w, rtol=1e-15 if dtype == np.float64 else 1e-6)
        if f == 1.0:                                          # the batch's statistics alone, the variance unbiased
            np.testing.assert_allclose(got[0], mean, rtol=1e-6)
            np.testing.assert_allclose(got[1], var * 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="one size"):
        K.update_running_stats(np.zeros(6, dtype), np.ones(5, dtype), mean, var, 0.1, 10.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape, stride, padding, bias", [((2, 3, 7, 7), 1, 1, False), ((1, 1, 5, 8), 2, 0, False),
                                                         ((4, 4, 28, 28), 1, 1, False), ((2, 3, 16, 14), 1, 1, True)])
def test_conv_bn_gelu_equals_its_three_layers(dtype, mode, shape, stride, padding, bias, rng):
    """The 28x28 and 16x14 cases take the direct kernel (with a bias, its gradient is not written padded)."""
    nt.manual_seed(0)
    fused = ConvBNGELU(shape[1], 5, 3, stride=stride, padding=padding, bias=bias).to(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    for _ in range(2):
        fused(x * 1.5 + 0.3)                  # running statistics away from their start
    fused.train(mode == "train")
    before = fused.state_dict()

    def run(forward, backward):
        fused.load_state_dict(before)
        fused.zero_grad()
        y = forward(fused, x)
        dx = backward(fused, np.random.default_rng(1).standard_normal(y.shape).astype(dtype))
        return [y, dx] + [p.grad for p in fused.parameters()] + list(fused.state_dict().values())

    got = run(ConvBNGELU.forward, ConvBNGELU.backward)
    want = run(nn.Sequential.forward, nn.Sequential.backward)       # conv, BN, GELU one by one
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=2e-5)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, **tol)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_grad_forward_is_the_same_forward_and_keeps_nothing(mode, dtype, rng):
    nt.manual_seed(0)
    block = ConvBNGELU(3, 4, 3, padding=1).to(dtype)
    x = rng.standard_normal((2, 3, 7, 7)).astype(dtype)
    block(x * 2 + 1)
    block.train(mode == "train")
    state = block.state_dict()
    y = block(x)
    block.load_state_dict(state)
    with nt.no_grad():
        y_no_grad = block(x)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y_no_grad, y, **tol)
    with pytest.raises(RuntimeError, match="before forward"):
        block.backward(np.ones_like(y))
    assert nt.is_grad_enabled()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_evaluation_block_on_winograd_planes_is_one_pass(dtype, bias, rng, monkeypatch):
    """Eval mode under no_grad, a convolution that runs Winograd (at least 8 input channels, even
    sides at least 14 wide): the block is one pass (kernels/winograd.py: conv3x3_winograd_bn_gelu),
    the three layers' output up to rounding (a conv bias folded into the shift), and keeps nothing."""
    import nanotorch.nn.fused as fused_module
    nt.manual_seed(0)
    block = ConvBNGELU(9, 6, 3, padding=1, bias=bias).to(dtype)
    x = rng.standard_normal((3, 9, 14, 16)).astype(dtype)
    block(x * 2 + 1)
    block.eval()
    one_by_one = nn.Sequential.forward(block, x)
    calls, kernel = [], fused_module.conv3x3_winograd_bn_gelu
    monkeypatch.setattr(fused_module, "conv3x3_winograd_bn_gelu", lambda *a: calls.append(1) or kernel(*a))
    with nt.no_grad():
        y = block(x)
    assert calls == [1] and y.shape == one_by_one.shape == (3, 6, 14, 16) and y.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y, one_by_one, **tol)
    for layer in (block, block[0]):
        with pytest.raises(RuntimeError, match="before forward|did not run|computes this layer"):
            layer.backward(np.ones_like(y))


@pytest.mark.parametrize("mode", ["train", "eval", "eval-no_grad"])
def test_conv_bn_gelu_uses_its_batchnorms_eps(mode, rng):
    """A BatchNorm eps set to another value than the default (a large one, so that it shows) is the
    one each fused path uses: training, evaluation, and evaluation under no_grad (the folded scale)."""
    nt.manual_seed(0)
    block = ConvBNGELU(2, 3, 3, padding=1).double()
    block[1].eps = 0.5
    x = rng.standard_normal((2, 2, 6, 6))
    block(x * 2 + 1)                                   # running statistics away from their start
    block.train(mode == "train")
    state = block.state_dict()
    with nt.no_grad() if mode == "eval-no_grad" else contextlib.nullcontext():
        got = block(x)
    assert block.uses_fused_kernels()
    block.load_state_dict(state)
    want = nn.Sequential.forward(block, x)             # conv, BN, GELU one by one
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_gelu_inference_kernel_equals_reference(dtype, rng):
    z = rng.standard_normal((5, 3, 37)).astype(dtype)
    scale, shift = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)
    a = K.bn_gelu_inference(z, scale, shift)
    assert a.dtype == dtype
    np.testing.assert_allclose(a, K.bn_gelu_inference_reference(z, scale, shift), **tol)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_conv_bn_gelu_gradcheck(mode, rng):
    nt.manual_seed(0)
    block = ConvBNGELU(2, 3, 3, padding=1).double()
    block[1].weight.data[...], block[1].bias.data[...] = [0.7, -1.3, 1.1], [0.4, -0.2, 0.9]   # not 1 and 0
    block(rng.standard_normal((2, 2, 5, 8)) + 1)
    block.train(mode == "train")
    assert block.uses_fused_kernels()
    assert nt.gradcheck(block, rng.standard_normal((2, 2, 5, 8))).max_error < 1e-6


def test_conv_bn_gelu_keys_are_sequential_keys():
    assert list(ConvBNGELU(1, 4, 3, padding=1).state_dict()) == [
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]


@pytest.mark.parametrize("child, name, value, error, message", [
    (1, "track_running_stats", False, NotImplementedError, "track_running_stats=False"),
    (1, "running_var", None, NotImplementedError, "running statistics set to None"),
    (2, "approximate", "erf", ValueError, "approximate must be 'none' or 'tanh'"),
    (0, "dilation", 2, NotImplementedError, r"dilation=\(2, 2\)")])   # (groups=2 on 1 channel: invalid, a ValueError)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_conv_bn_gelu_refuses_a_child_setting_it_does_not_implement(child, name, value, error, message, mode):
    """A child's setting changed since construction leaves the fused kernels (which would ignore it)
    for the children, which refuse it."""
    block = ConvBNGELU(1, 2, 3, padding=1).train(mode == "train")
    x = np.ones((2, 1, 5, 5), np.float32)
    block(x)
    setattr(block[child], name, value)
    with pytest.raises(error, match=message):
        block(x)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("change, error, message", [("num_features", ValueError, "BatchNorm2d expects 4 channels"),
                                                    ("dtype", TypeError, "BatchNorm2d expects a float64 input")])
def test_conv_bn_gelu_with_a_batchnorm_that_does_not_fit_refuses_as_its_children(change, error, message, mode):
    """A BatchNorm2d of other channels, or of another dtype, than the conv's output: the block leaves
    its fused kernels (which would take float64 statistics for a float32 conv and compute on) for the
    children, and BatchNorm2d refuses its input, as in the Sequential."""
    block = ConvBNGELU(2, 3, 3, padding=1).train(mode == "train")
    if change == "num_features":
        block[1] = nn.BatchNorm2d(4).train(mode == "train")
    else:
        block[1].double()
    assert not block.uses_fused_kernels()
    with pytest.raises(error, match=message):
        block(np.ones((2, 2, 5, 5), np.float32))


@pytest.mark.parametrize("grad_mode", [True, False])
def test_a_child_backed_up_after_a_fused_pass_says_it_did_not_run(grad_mode, rng):
    """After a pass that ran the children one by one, a fused pass leaves BatchNorm's and GELU's own
    caches from the older pass: their backward must refuse them, not back up that older pass."""
    block, x = ConvBNGELU(2, 3, 3, padding=1).double(), rng.standard_normal((2, 2, 5, 5))
    handle = block[1].register_forward_hook(lambda *a: None)     # a hook: the children one by one
    block(x)
    handle.remove()
    with contextlib.nullcontext() if grad_mode else nt.no_grad():
        block(x)                                                   # fused
    for child in (block[1], block[2]):
        with pytest.raises(RuntimeError, match=f"{type(child).__name__}.backward: the last forward ran its "
                                               "ConvBNGELU fused"):
            child.backward(np.ones((2, 3, 5, 5)))


def test_bn_gelu_float32_sums_are_kept_in_float64(rng):
    """The batch statistics and the backward's sums (dgamma, dbeta) of a float32 layer are accumulated
    in float64 and rounded once: over 2^19 values a channel near 10, an in-order float32 sum is off by
    a few 1e-6 relative; these agree with the float64 reference to float32 rounding."""
    z = (rng.standard_normal((2, 4, 1 << 17)) + 10).astype(np.float32)         # (C, N, L)
    mean, var = np.zeros(2, np.float32), np.ones(2, np.float32)
    gamma, beta = np.ones(2, np.float32), np.zeros(2, np.float32)
    a, xhat, d, inv_std = K.bn_gelu_forward(z, mean, var, gamma, beta, True, 1.0, 1e-5)    # momentum 1: the batch's
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(mean, z64.mean(axis=(1, 2)), rtol=1e-7)
    np.testing.assert_allclose(var, z64.var(axis=(1, 2)) * z[0].size / (z[0].size - 1), rtol=1e-6)
    da = (rng.standard_normal((4, 2, 1 << 17)) + 10).astype(np.float32)       # (N, C, L)
    dgamma, dbeta = np.zeros(2), np.zeros(2)
    K.bn_gelu_backward(da, xhat, d, inv_std, gamma, True, dgamma, dbeta)
    _, want_dgamma, want_dbeta = K.bn_gelu_backward_reference(da, xhat, d, inv_std, gamma, True)
    np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-9)
    np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-9, atol=1e-6 * np.abs(want_dbeta).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stats_dtype", [np.float32, np.float64])
def test_update_running_stats_gives_the_reference_bits(dtype, stats_dtype, rng):
    """The same operations in the same dtypes as the reference (the unbiased variance computed in
    float64 and rounded once): the same bits, not only to a tolerance."""
    mean, var = rng.standard_normal(1000).astype(stats_dtype), rng.uniform(0.1, 3, 1000).astype(stats_dtype)
    for f, m in ((0.1, 4 * 28 * 28), (1 / 3, 7), (0.7, 3)):
        got = (rng.standard_normal(1000).astype(dtype), rng.uniform(0.5, 2, 1000).astype(dtype))
        want = (got[0].copy(), got[1].copy())
        K.update_running_stats(*got, mean, var, f, float(m))
        K.update_running_stats_reference(*want, mean, var, f, m)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_bn_gelu_backward_refuses_gradients_of_another_size(rng):
    """dgamma and dbeta are written at every channel: arrays of another size are refused, not overrun."""
    da = rng.standard_normal((2, 3, 4))                                  # (N, C, L)
    xhat, d = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    for dgamma, dbeta in ((np.zeros(2), np.zeros(3)), (np.zeros(3), np.zeros(4))):
        with pytest.raises(ValueError, match="dgamma and dbeta"):
            K.bn_gelu_backward(da, xhat, d, np.ones(3), np.ones(3), True, dgamma, dbeta)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_gelu_forward_inv_std_and_running_stats_are_the_reference_bits(dtype, rng):
    """Inside the fastmath kernel, 1 / sqrt(var + eps) and the running statistics' update are
    rounded as the reference (and BatchNorm2d) round them, bit for bit: a function called from a
    fastmath kernel inherits fastmath unless it says otherwise, and then LLVM computed inv_std from
    an approximate reciprocal square root (1 ulp off in float32 for ~40% of the channels) and the
    running statistics' update under fastmath (other bits for ~19% of the values)."""
    c = 64
    z = (rng.standard_normal((c, 4, 49)) * rng.uniform(0.1, 10, (c, 1, 1)) + rng.uniform(-3, 3, (c, 1, 1)))
    z = z.astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    for training in (True, False):
        stats = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
        got, want = (stats[0].copy(), stats[1].copy()), (stats[0].copy(), stats[1].copy())
        *_, inv_std = K.bn_gelu_forward(z, *got, gamma, beta, training, 0.1, 1e-5)
        *_, want_inv_std = K.bn_gelu_forward_reference(z, *want, gamma, beta, training, 0.1, 1e-5)
        # float64 training: the batch's float64 sums, added in another order than NumPy's, differ in
        # their last bits (in float32 they are rounded to float32 before use)
        check = (functools.partial(np.testing.assert_allclose, rtol=1e-14) if training and dtype == np.float64
                 else np.testing.assert_array_equal)
        check(inv_std, want_inv_std)
        check(got[0], want[0])
        check(got[1], want[1])


def _block_then_pool(dtype, bias=False, in_channels=9, pool=None):
    """Sequential(ConvBNGELU, MaxPool2d(2)) in eval mode, with BatchNorm statistics and parameters not
    the initial ones (so that the folded scale and shift are not 1 and 0)."""
    nt.manual_seed(0)
    model = nn.Sequential(ConvBNGELU(in_channels, 6, 3, padding=1, bias=bias), pool or nn.MaxPool2d(2)).to(dtype)
    bn = model[0][1]
    rng = np.random.default_rng(1)
    for array, low, high in ((bn.running_mean, -1, 1), (bn.running_var, 0.5, 2), (bn.weight.data, -1.5, 1.5),
                             (bn.bias.data, -1, 1)):
        array[...] = rng.uniform(low, high, array.shape)
    return model.eval()


def _count_pooled_passes(monkeypatch):
    """The pooled passes run from here on: the name of each kernel called (fused.py's two)."""
    import nanotorch.nn.fused as fused
    calls = []
    for name in ("conv3x3_winograd_pooled", "conv3x3_winograd_pooled_small"):
        kernel = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args))
    return calls


# (input H x W, ceil_mode) -> the kernel: even planes the direct kernel covers (at least 14 wide) take
# the one with a plane's tiles in the lanes; narrower ones, odd sides included, the one with images in
# the lanes (the seed model's 7x7 block with ceil_mode, and its 4x4 one)
PLANES = {(14, 16, False): "conv3x3_winograd_pooled", (7, 7, True): "conv3x3_winograd_pooled_small",
          (7, 7, False): "conv3x3_winograd_pooled_small", (4, 4, False): "conv3x3_winograd_pooled_small",
          (5, 6, True): "conv3x3_winograd_pooled_small"}


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_block_and_the_pooling_after_it_run_as_one_pass_under_no_grad(dtype, bias, plane, rng, monkeypatch):
    """Evaluation under no_grad: Sequential hands the MaxPool2d(2) to the ConvBNGELU before it
    (kernels/winograd.py's conv3x3_winograd_pooled, or winograd_small.py's on narrow planes), which
    gives the two layers' output up to rounding (a conv bias folded into the shift; with ceil_mode
    an odd side's last windows hold one row or column), keeps nothing (the caches of an earlier
    forward with gradients are gone: every module's backward is an error), as the two would."""
    h, w, ceil_mode = plane
    model = _block_then_pool(dtype, bias, pool=nn.MaxPool2d(2, ceil_mode=ceil_mode))
    x = rng.standard_normal((9, 9, h, w)).astype(dtype)     # (9 images: at least half a vector's lanes)
    model(x)                                  # with gradients: every module keeps what its backward needs
    calls = _count_pooled_passes(monkeypatch)
    with nt.no_grad():
        y = model(x)
        assert calls == [PLANES[plane]]
        one_by_one = model[1](model[0](x))
    oh, ow = ((h + 1) // 2, (w + 1) // 2) if ceil_mode else (h // 2, w // 2)
    assert y.shape == one_by_one.shape == (9, 6, oh, ow) and y.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y, one_by_one, **tol)
    model(x)
    with nt.no_grad():
        model(x)
    for layer, grad in ((model, y), (model[0], np.ones((9, 6, h, w), dtype)), (model[1], y),
                        (model[0][0], np.ones((9, 6, h, w), dtype)), (model[0][1], np.ones((9, 6, h, w), dtype))):
        with pytest.raises(RuntimeError, match="before forward|did not run|computes this layer"):
            layer.backward(np.ones_like(grad))


@pytest.mark.parametrize("case", ["empty batch", "ceil_mode", "float64 running statistics", "subclass without a forward"])
def test_the_one_pass_takes_what_the_layers_would_compute_alike(case, rng, monkeypatch):
    """An empty batch; ceil_mode, which changes nothing on even planes; BatchNorm buffers of another
    dtype (set by assignment, which does not cast them), used as the block's dtype; a subclass that
    keeps ConvBNGELU's forward."""
    model = _block_then_pool(np.float32, pool=nn.MaxPool2d(2, ceil_mode=True) if case == "ceil_mode" else None)
    if case == "float64 running statistics":
        model[0][1].running_var = model[0][1].running_var.astype(np.float64)
        model[0][1].running_mean = model[0][1].running_mean.astype(np.float64)
    if case == "subclass without a forward":
        class Block(ConvBNGELU):
            pass
        block = Block(9, 6, 3, padding=1)
        block.load_state_dict(model[0].state_dict())
        model = nn.Sequential(block, model[1]).eval()
    x = rng.standard_normal((0 if case == "empty batch" else 2, 9, 14, 14)).astype(np.float32)
    calls = _count_pooled_passes(monkeypatch)
    with nt.no_grad():
        y = model(x)
        one_by_one = model[1](model[0](x))
    assert calls == ["conv3x3_winograd_pooled"] and y.shape == one_by_one.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, one_by_one, rtol=1e-5, atol=1e-6)


class _Twice(ConvBNGELU):
    def forward(self, x):
        return 2 * super().forward(x)


class _Pool(nn.MaxPool2d):
    pass


POOLS = {"3x3 pooling": nn.MaxPool2d(3, 2), "stride 1": nn.MaxPool2d(2, 1), "padding 1": nn.MaxPool2d(2, padding=1),
         "a MaxPool2d subclass": _Pool(2)}


_EITHER_SIDE = ["train mode", "grad enabled", "hook on the block", "hook on the pooling", *POOLS, "4 input channels",
                "pooling first", "a NaN", "an Inf", "an Inf weight", "a NaN running_mean", "a subclass's forward",
                "padding 2"]


@pytest.mark.parametrize("case, side", [(case, side) for case in _EITHER_SIDE for side in (14, 7)]
                         + [("odd plane", 14), ("too few images", 7)])
def test_a_block_and_its_pooling_run_one_by_one_where_one_pass_does_not_apply(case, side, rng, monkeypatch):
    """Where the one pass would not compute what the layers do (other poolings; a subclass whose forward
    is its own; a convolution other than 3x3 "same"; an input with a NaN, which must win its windows,
    or an Inf), or a hook must see a layer's output, or something needs a backward, the two run as
    they are (the same bits): on planes of either pooled kernel (14 and 7 wide, 9 images). An odd
    plane 14 wide runs the direct kernel, not Winograd, and is not pooled in one pass either (odd
    planes narrower than 14 are); on 7-wide planes, fewer than half a vector of images are not (a
    group computes a whole vector; where the conv itself runs Winograd, any batch is)."""
    model = _block_then_pool(np.float32, in_channels=4 if case == "4 input channels" else 9, pool=POOLS.get(case))
    if case == "a subclass's forward":
        block = _Twice(9, 6, 3, padding=1)
        block.load_state_dict(model[0].state_dict())
        model = nn.Sequential(block, model[1]).eval()
    if case == "padding 2":
        block = ConvBNGELU(9, 6, 3, padding=2)
        block.load_state_dict(model[0].state_dict())
        model = nn.Sequential(block, model[1]).eval()
    n = 2 if case == "too few images" else 9
    if case == "an Inf weight":
        model[0][0].weight.data[0, 0, 1, 1] = np.inf
    if case == "a NaN running_mean":
        model[0][1].running_mean[1] = np.nan
    x = rng.standard_normal((n, model[0][0].in_channels, side - 1 if case == "odd plane" else side, side))
    x = x.astype(np.float32)
    x[1, 2, 5, 6] = np.nan if case == "a NaN" else np.inf if case == "an Inf" else x[1, 2, 5, 6]
    if case == "train mode":
        model.train()
    seen = []
    if case.startswith("hook"):
        (model[0] if case.endswith("block") else model[1]).register_forward_hook(lambda m, a, out: seen.append(out))
    if case == "pooling first":
        model = nn.Sequential(nn.MaxPool2d(1), model[0])
    calls = _count_pooled_passes(monkeypatch)
    with (contextlib.nullcontext() if case == "grad enabled" else nt.no_grad()):
        state = model.state_dict()
        one_by_one = model[1](model[0](x))
        model.load_state_dict(state)
        y = model(x)
    assert not calls
    np.testing.assert_array_equal(y, one_by_one)
    assert len(seen) == (2 if case.startswith("hook") else 0)
    if case == "a NaN":
        assert np.isnan(y[1]).sum() >= 6 and not np.isnan(y[0]).any()      # every channel's window(s) around it


@pytest.mark.parametrize("x_shape, dtype", [((2, 8, 14, 14), np.float32), ((2, 9, 14, 14), np.float64), ((9, 14, 14),
                                                                                                       np.float32),
                                            ((9, 9, 2, 1), np.float32), ((9, 9, 1, 5), np.float32)])
def test_a_bad_input_gets_the_blocks_error_either_way(x_shape, dtype):
    """The error the block gives a wrong input (channels, dtype, dimensions), or the pooling a plane
    too small for its window, is the same whether or not the pooling could have joined the block's
    pass."""
    model = _block_then_pool(np.float32)
    x = np.zeros(x_shape, dtype)
    with nt.no_grad():
        with pytest.raises(Exception) as alone:
            model[1](model[0](x))
        with pytest.raises(type(alone.value)) as together:
            model(x)
    assert str(together.value) == str(alone.value)
