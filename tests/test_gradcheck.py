"""Every layer's backward against central finite differences, in float64, train and eval, odd shapes."""
import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn
from nanotorch.gradcheck import gradcheck, gradcheck_directional
from nanotorch.kernels.linear import SMALL_LINEAR
from mnist.model import build_model

TOL = 1e-6


def direct(conv):
    """Send every 3x3 convolution of ``conv`` (a Conv2d, or a module holding some) through the
    direct kernel, whatever the input's size."""
    for m in conv.modules():
        if isinstance(m, nn.Conv2d):
            m.direct_min_width = 1
    return conv


def random_affine(module, seed=4):
    """Random gamma (either sign) and beta for every BatchNorm in ``module``: at their start, 1 and 0,
    a backward that forgot to multiply by gamma passed every check."""
    rng = np.random.default_rng(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.weight is not None:
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features) * rng.choice([-1.0, 1.0], m.num_features)
            if m.bias is not None:
                m.bias.data[...] = rng.standard_normal(m.num_features)
    return module


def fallback(block, child, name, value):
    """A ConvBNGELU whose child no longer fits the fused kernels (``block[child].name = value``, or,
    with name None, child replaced by value): it runs its children one by one."""
    if name is None:
        setattr(block, str(child), value)
    else:
        setattr(block[child], name, value)
    return block


def taken_paths(layer):
    """The code paths that ``layer``'s last forward took, read from what its modules kept."""
    paths = set()
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            paths.add("direct" if m.saved_for_backward()[2] else "im2col")
        elif isinstance(m, nn.ConvBNGELU):
            paths.add("fallback" if m.saved_for_backward()[0] is None else "fused")
        elif isinstance(m, nn.MaxPool2d):
            paths.add("2x2" if m.saved_for_backward()[3] else "general")
        elif isinstance(m, nn.Linear):
            x = m.saved_for_backward()[0]
            paths.add("small" if x.size * m.out_features < SMALL_LINEAR else "blas")
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            paths.add("global" if m._output_hw() == (1, 1) else "windows")
    return paths


# (layer factory, input shape): odd shapes, batch 1, one channel, padding 0 and 1, stride 2, ceil_mode;
# each of the layer's code paths (PATHS below); BatchNorm's gamma and beta made random (random_affine)
CASES = {
    "conv3x3_pad1": (lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 7, 7)),
    "conv3x3_pad0_5x8": (lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 8)),
    "conv_stride2_pad1": (lambda: nn.Conv2d(3, 2, 3, stride=2, padding=1), (2, 3, 7, 7)),
    "conv_1ch_batch1": (lambda: nn.Conv2d(1, 3, 3, padding=1), (1, 1, 5, 8)),
    "conv3x3_direct": (lambda: direct(nn.Conv2d(3, 5, 3, padding=1)), (2, 3, 5, 6)),
    "conv3x3_direct_1ch_batch1": (lambda: direct(nn.Conv2d(1, 2, 3, padding=1, bias=False)), (1, 1, 4, 7)),
    "conv_bn_gelu_direct": (lambda: direct(nn.ConvBNGELU(2, 3, 3, padding=1)), (2, 2, 5, 5)),
    "conv_1x1_nobias": (lambda: nn.Conv2d(3, 5, 1, bias=False), (2, 3, 5, 8)),
    "conv_2x3_kernel": (lambda: nn.Conv2d(2, 2, (2, 3), stride=2), (3, 2, 7, 7)),
    "conv_stride_1x2_pad_1x0": (lambda: nn.Conv2d(3, 2, (3, 2), stride=(1, 2), padding=(1, 0)), (3, 3, 5, 7)),
    "conv3x3_direct_nobias_odd": (lambda: direct(nn.Conv2d(3, 3, 3, padding=1, bias=False)), (3, 3, 5, 7)),
    "conv_bn_gelu_stride2": (lambda: nn.ConvBNGELU(3, 5, 3, stride=2, padding=1), (3, 3, 7, 5)),
    "conv_bn_gelu_tanh_fallback": (lambda: fallback(nn.ConvBNGELU(2, 3, 3, padding=1), 2, "approximate", "tanh"),
                                   (3, 2, 5, 7)),
    "conv_bn_gelu_no_affine_fallback": (lambda: fallback(nn.ConvBNGELU(2, 3, 3), 1, None,
                                                         nn.BatchNorm2d(3, affine=False)), (3, 2, 5, 7)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3), (2, 3, 5, 8)),
    "batchnorm2d_batch1": (lambda: nn.BatchNorm2d(2), (1, 2, 7, 7)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(5), (3, 5)),
    "batchnorm1d_3d": (lambda: nn.BatchNorm1d(3), (2, 3, 7)),
    "batchnorm1d_no_affine": (lambda: nn.BatchNorm1d(3, affine=False), (4, 3)),
    "batchnorm2d_no_affine": (lambda: nn.BatchNorm2d(2, affine=False), (2, 2, 3, 5)),
    "batchnorm2d_no_bias": (lambda: nn.BatchNorm2d(2, bias=False), (2, 2, 3, 5)),
    "batchnorm2d_momentum_none": (lambda: nn.BatchNorm2d(3, momentum=None), (3, 3, 5, 7)),
    "batchnorm1d_momentum_none": (lambda: nn.BatchNorm1d(3, momentum=None), (3, 3, 5)),
    "conv_same_3x5_kernel": (lambda: nn.Conv2d(2, 3, (3, 5), padding="same"), (2, 2, 5, 6)),
    "gelu": (lambda: nn.GELU(), (2, 3, 5, 8)),
    "gelu_tanh": (lambda: nn.GELU("tanh"), (2, 3, 5, 8)),
    "relu": (lambda: nn.ReLU(), (2, 3, 7, 7)),
    "leaky_relu": (lambda: nn.LeakyReLU(), (2, 3, 7, 5)),
    "leaky_relu_slope_0.3_3d": (lambda: nn.LeakyReLU(0.3), (3, 5, 7)),
    "leaky_relu_slope_-1.5_2d": (lambda: nn.LeakyReLU(-1.5), (5, 3)),
    "sigmoid": (lambda: nn.Sigmoid(), (2, 3, 5, 7)),
    "sigmoid_1d": (lambda: nn.Sigmoid(), (7,)),
    "tanh": (lambda: nn.Tanh(), (3, 2, 7, 5)),
    "tanh_3d": (lambda: nn.Tanh(), (3, 5, 7)),
    "identity": (lambda: nn.Identity(), (3, 5, 7)),
    "identity_with_args": (lambda: nn.Identity(7, bias=False), (2, 3, 5, 7)),
    "maxpool2_ceil_7x7": (lambda: nn.MaxPool2d(2, ceil_mode=True), (2, 3, 7, 7)),
    "maxpool2_floor_5x8": (lambda: nn.MaxPool2d(2), (1, 1, 5, 8)),
    "maxpool3_s2_p1": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 7)),
    "maxpool3_s2_ceil_5x8": (lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True), (2, 2, 5, 8)),
    "maxpool2_exact_6x4": (lambda: nn.MaxPool2d(2), (3, 3, 6, 4)),
    "maxpool2_s1": (lambda: nn.MaxPool2d(2, stride=1), (3, 3, 5, 6)),
    "maxpool2x3_s3x2_p1_ceil": (lambda: nn.MaxPool2d((2, 3), stride=(3, 2), padding=1, ceil_mode=True), (1, 3, 7, 8)),
    "avgpool_global": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 7, 7)),
    "avgpool_2x3_on_5x8": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 8)),
    "avgpool_1x3_on_5x7": (lambda: nn.AdaptiveAvgPool2d((1, 3)), (3, 2, 5, 7)),
    "avgpool_4x5_on_3x2": (lambda: nn.AdaptiveAvgPool2d((4, 5)), (3, 2, 3, 2)),      # larger than the input
    "dropout": (lambda: nn.Dropout(0.3), (2, 3, 7, 7)),
    "dropout_own_generator": (lambda: nn.Dropout(0.4, generator=np.random.default_rng(7)), (3, 5, 7)),
    "linear": (lambda: nn.Linear(7, 5), (3, 7)),
    "linear_nobias_batch1": (lambda: nn.Linear(5, 3, bias=False), (1, 5)),
    "linear_3d": (lambda: nn.Linear(5, 4), (2, 3, 5)),                     # (N, *, in_features)
    "linear_4d_nobias": (lambda: nn.Linear(3, 2, bias=False), (2, 1, 3, 3)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 5, 8)),
    "flatten_dims_1_2": (lambda: nn.Flatten(1, 2), (3, 2, 5, 7)),
    # (no bias before the BatchNorm: in training its gradient is 0 up to rounding, see the conv bias test)
    "head": (lambda: nn.Sequential(nn.Linear(7, 6, bias=False), nn.BatchNorm1d(6), nn.GELU("tanh"), nn.Dropout(0.3),
                                   nn.Linear(6, 3)), (5, 7)),
    "conv_bn_gelu_pool": (lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.GELU(),
                                                nn.MaxPool2d(2, ceil_mode=True)), (2, 1, 7, 7)),
    "mlp_sigmoid_tanh_leaky": (lambda: nn.Sequential(nn.Linear(7, 5), nn.Sigmoid(), nn.Linear(5, 6), nn.Tanh(),
                                                     nn.Identity(), nn.Linear(6, 3), nn.LeakyReLU(0.2)), (5, 7)),
}

# the code paths each case must take (taken_paths); a case not listed takes none of them
PATHS = {
    **{case: {"im2col"} for case in ("conv3x3_pad1", "conv3x3_pad0_5x8", "conv_stride2_pad1", "conv_1ch_batch1",
                                     "conv_1x1_nobias", "conv_2x3_kernel", "conv_stride_1x2_pad_1x0",
                                     "conv_same_3x5_kernel")},
    **{case: {"direct"} for case in ("conv3x3_direct", "conv3x3_direct_1ch_batch1", "conv3x3_direct_nobias_odd")},
    "conv_bn_gelu_direct": {"direct", "fused"},
    "conv_bn_gelu_stride2": {"im2col", "fused"},
    "conv_bn_gelu_tanh_fallback": {"im2col", "fallback"},
    "conv_bn_gelu_no_affine_fallback": {"im2col", "fallback"},
    **{case: {"2x2"} for case in ("maxpool2_ceil_7x7", "maxpool2_floor_5x8", "maxpool2_exact_6x4")},
    **{case: {"general"} for case in ("maxpool3_s2_p1", "maxpool3_s2_ceil_5x8", "maxpool2_s1",
                                      "maxpool2x3_s3x2_p1_ceil")},
    "avgpool_global": {"global"},
    **{case: {"windows"} for case in ("avgpool_2x3_on_5x8", "avgpool_1x3_on_5x7", "avgpool_4x5_on_3x2")},
    **{case: {"small"} for case in ("linear", "linear_nobias_batch1", "linear_3d", "linear_4d_nobias", "head",
                                    "mlp_sigmoid_tanh_leaky")},
    "conv_bn_gelu_pool": {"im2col", "2x2"},
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_gradcheck(case, mode):
    factory, shape = CASES[case]
    nt.manual_seed(1)
    layer = random_affine(factory().double())
    x = np.random.default_rng(2).standard_normal(shape)
    if mode == "eval":
        for _ in range(3):            # move BatchNorm's running statistics away from (0, 1)
            layer(np.random.default_rng(3).standard_normal(shape) * 2 + 0.5)
    layer.train(mode == "train")
    result = gradcheck(layer, x)
    assert result.max_error < TOL, f"{case} ({mode}): {result}"
    assert set(result.errors) == {"input"} | {n for n, _ in layer.named_parameters()}
    assert taken_paths(layer) == PATHS.get(case, set())


@pytest.mark.parametrize("path", ["im2col", "direct"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_conv_bn_gelu_with_a_conv_bias_gradcheck(mode, path):
    """The fused block with bias=True (im2col with stride 2, or the direct kernel, whose dz is then
    not written padded). In training BatchNorm subtracts each channel's mean, so the conv bias has
    no effect and its gradient is 0, which a relative error cannot check (both sides are rounding
    noise): it is checked to be 0 instead."""
    nt.manual_seed(1)
    if path == "im2col":
        block, shape = nn.ConvBNGELU(2, 3, 3, stride=2, padding=1, bias=True), (2, 2, 7, 6)
    else:
        block, shape = direct(nn.ConvBNGELU(2, 3, 3, padding=1, bias=True)), (3, 2, 5, 7)
    block = random_affine(block.double())
    x = np.random.default_rng(2).standard_normal(shape)
    for _ in range(3):
        block(np.random.default_rng(3).standard_normal(x.shape) * 2 + 0.5)
    block.train(mode == "train")
    params = [n for n, _ in block.named_parameters() if mode == "eval" or n != "0.bias"]
    result = gradcheck(block, x, params=params)
    assert result.max_error < TOL, f"{mode}: {result}"
    assert taken_paths(block) == {path, "fused"}
    if mode == "train":
        block.zero_grad()
        y = block(x)
        block.backward(np.random.default_rng(4).standard_normal(y.shape))
        assert np.abs(block[0].bias.grad).max() < 1e-12


def test_gradcheck_catches_a_wrong_backward():
    class BadGELU(nn.GELU):
        def backward(self, dout):
            return super().backward(dout) * 1.001          # 0.1% off: must be seen
    result = gradcheck(BadGELU().double(), np.random.default_rng(0).standard_normal((2, 3)))
    assert result.max_error > 1e-4
    assert result.where.startswith("input")


def test_gradcheck_catches_a_backward_wrong_in_one_entry_and_names_it():
    """The worst entry is reported, not a typical one: one wrong entry among six must be seen."""
    class OneWrongEntry(nn.GELU):
        def backward(self, dout):
            dx = super().backward(dout).copy()
            dx[1, 2] *= 1.001
            return dx
    result = gradcheck(OneWrongEntry().double(), np.random.default_rng(0).standard_normal((2, 3)))
    assert result.max_error > 1e-4 and result.errors["input"] == result.max_error
    assert result.where == "input[1, 2]"


def test_dropout_train_really_drops_and_is_replayed():
    nt.manual_seed(0)
    d = nn.Dropout(0.5).double()
    x = np.ones((4, 100))
    y = d(x)
    assert 0.3 < (y == 0).mean() < 0.7 and set(np.unique(y)) <= {0.0, 2.0}
    assert gradcheck(d, np.random.default_rng(0).standard_normal((3, 9))).max_error < TOL


@pytest.mark.parametrize("grad_out", [1.0, 2.5])
def test_cross_entropy_gradcheck(grad_out):
    """d (grad_out * loss) / d logits: the upstream gradient must scale the result."""
    rng = np.random.default_rng(0)
    for reduction, ignore_index in (("mean", -100), ("sum", -100), ("none", -100),
                                    ("mean", 3), ("sum", 3), ("none", 3)):
        crit = nn.CrossEntropyLoss(reduction=reduction, ignore_index=ignore_index)
        z, t = rng.standard_normal((5, 7)), np.array([3, 0, 6, 3, 2])
        upstream = grad_out * rng.random(5) if reduction == "none" else grad_out    # d L / d loss
        crit(z, t)
        analytic = crit.backward(upstream)
        numeric = np.zeros_like(z)
        for idx in np.ndindex(z.shape):
            zp, zm = z.copy(), z.copy()
            zp[idx] += 1e-5
            zm[idx] -= 1e-5
            numeric[idx] = np.sum(upstream * (crit(zp, t) - crit(zm, t))) / 2e-5
        rel = np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), 1e-8)
        assert rel.max() < TOL, (reduction, ignore_index)


def _seed_model(mode):
    nt.manual_seed(0)
    model = random_affine(build_model().double())
    rng = np.random.default_rng(5)
    for _ in range(30):                # realistic running statistics for eval mode
        model(rng.standard_normal((4, 1, 28, 28)))
    return model.train(mode == "train")


# The 7-conv MNIST network, a sample of entries of every parameter tensor and of the input, entry by
# entry, plus directional derivatives that involve every entry at once:
# - a batch of 2 at 28x28, the model's own sizes;
# - a batch of 3 of 15x13 images: every convolution takes im2col + GEMM (planes under 14 wide), and the
#   poolings cut a last row or column (15 -> 7 -> 3 -> 2 in ceil mode -> 1; 13 -> 6 -> 3 -> 2 -> 1).
WHOLE_NETWORK = {
    # case: (input shape, seed of the input, entries a tensor, seeds of the directions, code paths taken)
    "28x28": ((2, 1, 28, 28), 0, 12, (0, 1), {"direct", "im2col", "fused", "2x2", "global", "small"}),
    "odd_15x13": ((3, 1, 15, 13), 1, 4, (0,), {"im2col", "fused", "2x2", "global", "small"}),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", sorted(WHOLE_NETWORK))
def test_whole_network_every_parameter(case, mode):
    shape, data_seed, max_entries, directions, paths = WHOLE_NETWORK[case]
    model = _seed_model(mode)
    x = np.random.default_rng(data_seed).standard_normal(shape)
    # eps 1e-7: with ~5,000 max-pool windows a larger step flips some argmax (see nanotorch.gradcheck)
    result = gradcheck(model, x, eps=1e-7, max_entries=max_entries)
    assert set(result.scaled_errors) == {"input"} | {n for n, _ in model.named_parameters()}
    worst = max(result.scaled_errors.items(), key=lambda kv: kv[1])
    assert worst[1] < 1e-5, f"{case} {mode}: worst scaled error {worst}"
    for seed in directions:
        assert gradcheck_directional(model, x, eps=1e-7, seed=seed) < 1e-7
    assert taken_paths(model) == paths


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_keeps_float32(case, mode):
    """Training runs in float32: outputs, input gradients and parameter gradients stay float32."""
    factory, shape = CASES[case]
    nt.manual_seed(1)
    layer = factory().train(mode == "train")
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32, case
    assert all(p.grad.dtype == np.float32 for p in layer.parameters()), case


# --- what gradcheck refuses, and what it leaves behind ------------------------------------------------------
@pytest.mark.parametrize("check", [gradcheck, gradcheck_directional])
def test_checks_leave_batchnorm_buffers_as_they_were(check):
    nt.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.GELU()).double()
    before = model.state_dict()
    check(model, np.random.default_rng(0).standard_normal((2, 1, 4, 4)))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize("check", [gradcheck, gradcheck_directional])
def test_float32_parameters_are_refused(check):
    layer = nn.Linear(3, 2)                                       # float32, not .double()
    with pytest.raises(TypeError, match=r"parameter 'weight' is float32.*module\.double\(\)"):
        check(layer, np.zeros((2, 3)))


@pytest.mark.parametrize("check", [gradcheck, gradcheck_directional])
def test_backward_without_input_gradient_asks_for_check_input_false(check):
    nt.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3).double()
    conv.input_requires_grad = False
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    with pytest.raises(ValueError, match=r"Conv2d\.backward returned None.*check_input=False"):
        check(conv, x)
    result = check(conv, x, check_input=False)
    assert (result.max_error if check is gradcheck else result) < TOL
    if check is gradcheck:
        assert set(result.errors) == {"weight", "bias"}


def test_unknown_parameter_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"no parameter named 'wieght'.*\['weight', 'bias'\]"):
        gradcheck(nn.Linear(3, 2).double(), np.zeros((2, 3)), params=["wieght"])
    assert set(gradcheck(nn.Linear(3, 2).double(), np.ones((2, 3)), params=["bias"]).errors) == {"input", "bias"}


def test_params_given_as_one_name_is_that_name():
    """params="bias" was read as the names 'b', 'i', 'a', 's' (and refused, listing them)."""
    result = gradcheck(nn.Linear(3, 2).double(), np.ones((2, 3)), params="bias")
    assert set(result.errors) == {"input", "bias"}


@pytest.mark.parametrize("check", [gradcheck, gradcheck_directional])
def test_a_forward_that_raises_leaves_input_and_parameters_as_they_were(check):
    class Flaky(nn.Linear):
        calls = 0

        def forward(self, x):
            Flaky.calls += 1
            if Flaky.calls == 3:                     # the first perturbed forward or two in
                raise FloatingPointError("boom")
            return super().forward(x)

    layer = Flaky(3, 2).double()
    x = np.random.default_rng(0).standard_normal((2, 3))
    x0, w0 = x.copy(), layer.weight.data.copy()
    with pytest.raises(FloatingPointError):
        check(layer, x)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(layer.weight.data, w0)


class LossOf(nn.Module):
    """logits -> crit(logits, targets) as an array, for gradcheck: the targets held fixed."""

    def __init__(self, crit, targets):
        super().__init__()
        self.crit, self.targets = crit, targets

    def forward(self, logits):
        return np.asarray(self.crit(logits, self.targets))

    def backward(self, grad):
        return self.crit.backward(grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind, dims, weighted, smoothing", [
    pytest.param("index", (), True, 0.0, id="index-weight"),
    pytest.param("index", (), False, 0.3, id="index-smoothing"),
    pytest.param("index", (3,), True, 0.3, id="index-NCd-weight-smoothing"),
    pytest.param("index", (2, 2), False, 0.0, id="index-NCdd"),
    pytest.param("index", (), True, 1.0, id="index-weight-smoothing-1"),
    pytest.param("probs", (), False, 0.0, id="probs"),
    pytest.param("probs", (3,), True, 0.2, id="probs-NCd-weight-smoothing"),
])
def test_cross_entropy_options_gradcheck(kind, dims, weighted, smoothing, reduction, rng):
    """d loss / d logits against central differences through nanotorch's gradcheck (a random upstream
    gradient), every third class index ignored (ignore_index 1, a class, or the default -100)."""
    n, c = 3, 4
    logits = rng.standard_normal((n, c) + dims)
    if kind == "index":
        targets = rng.integers(0, c, (n,) + dims)
        targets.reshape(-1)[::3] = 1 if weighted else -100
    else:
        targets = np.moveaxis(rng.dirichlet(np.ones(c), (n,) + dims), -1, 1)
    crit = nn.CrossEntropyLoss(weight=rng.uniform(0.5, 2.0, c) if weighted else None, label_smoothing=smoothing,
                               ignore_index=1 if weighted and kind == "index" else -100, reduction=reduction)
    result = gradcheck(LossOf(crit, targets), logits)
    assert result.max_error < TOL, str(result)
