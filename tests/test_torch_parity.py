"""Every layer against PyTorch, in float64, to 1e-10: outputs, input gradients, parameter gradients and
running statistics, with the parameters copied over through ``state_dict`` (which also proves our keys
are PyTorch's: the loads are strict).

A layer is built by the same call on both namespaces, ``build(nn)`` with ``nn`` either ``nanotorch.nn``
or ``torch.nn``: same names, same arguments, same defaults.
"""
import re
import warnings
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nanotorch  # noqa: E402
from nanotorch import nn as nt_nn  # noqa: E402
from mnist.model import build_model  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)
MODES = ("train", "eval")


# --- helpers ------------------------------------------------------------------------------------------
def close(ours, theirs, what):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert np.shape(ours) == theirs.shape, f"{what}: shape {np.shape(ours)} vs torch {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, **TOL, err_msg=what)


def torch_state(ours):
    return {k: torch.from_numpy(v) for k, v in ours.state_dict().items()}


def randomize_batchnorm(model, rng):
    """Non-trivial affine parameters and running statistics, so that eval mode is not near the identity."""
    for m in model.modules():
        if isinstance(m, (nt_nn.BatchNorm1d, nt_nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean[...] = rng.standard_normal(c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
            if m.affine:
                m.weight.data[...] = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
                if m.bias is not None:
                    m.bias.data[...] = rng.standard_normal(c)


def make_pair(build, rng, seed=0):
    """(ours, theirs): ours in float64 with random parameters, theirs loaded from ours' state_dict."""
    nanotorch.manual_seed(seed)
    ours = build(nt_nn).double()
    randomize_batchnorm(ours, rng)
    theirs = build(torch.nn).double()
    theirs.load_state_dict(torch_state(ours))          # strict: same keys, same shapes
    return ours, theirs


def set_mode(mode, *modules):
    for m in modules:
        m.train(mode == "train")


def compare_state(ours, theirs, when):
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd), f"state_dict keys/order differ {when}"
    for k in ours_sd:
        if k.endswith("num_batches_tracked"):
            assert int(ours_sd[k]) == int(theirs_sd[k]), f"{k} {when}: {int(ours_sd[k])} vs {int(theirs_sd[k])}"
        else:
            close(ours_sd[k], theirs_sd[k], f"{k} {when}")


def compare_grads(ours, theirs):
    ours_p, theirs_p = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert list(ours_p) == list(theirs_p)
    for name, p in ours_p.items():
        assert p.grad is not None, f"{name}.grad is None after backward"
        close(p.grad, theirs_p[name].grad, f"grad of {name}")


def run_and_compare(ours, theirs, inputs, upstream):
    """Forward every input (both sides), compare outputs and state after each; backward the last."""
    for i, x in enumerate(inputs):
        x_before = x.copy()
        out = ours(x)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        out_t = theirs(xt)
        assert out.dtype == np.float64
        close(out, out_t, f"output of forward {i}")
        compare_state(ours, theirs, f"after forward {i}")
        np.testing.assert_array_equal(x, x_before, err_msg="forward modified its input")
    g = upstream(out.shape)
    g_before = g.copy()
    dx = ours.backward(g)
    out_t.backward(torch.from_numpy(g_before.copy()))
    close(dx, xt.grad, "grad_input")
    compare_grads(ours, theirs)
    np.testing.assert_array_equal(g, g_before, err_msg="backward modified its upstream gradient")


# --- the layers -----------------------------------------------------------------------------------------
# (id, build(nn), input shape, modes)
LAYER_CASES = [
    # Conv2d: kernel 1, 3, (2, 3); padding 0 and 1; stride 1 and 2; batch 1 and 3; one channel; 7x7 and 5x8
    ("conv-k1-1ch-b1-7x7", lambda nn: nn.Conv2d(1, 1, 1), (1, 1, 7, 7), MODES),
    ("conv-k1-s2-p1-5x8", lambda nn: nn.Conv2d(3, 2, 1, stride=2, padding=1), (3, 3, 5, 8), MODES),
    ("conv-k3-p1-b3-7x7", lambda nn: nn.Conv2d(3, 4, 3, padding=1), (3, 3, 7, 7), MODES),
    ("conv-k3-p0-b3-5x8", lambda nn: nn.Conv2d(3, 4, 3), (3, 3, 5, 8), MODES),
    ("conv-k3-s2-p1-7x7", lambda nn: nn.Conv2d(2, 5, 3, stride=2, padding=1), (3, 2, 7, 7), MODES),
    ("conv-k3-s2-p0-1ch-b1-5x8", lambda nn: nn.Conv2d(1, 2, 3, stride=2), (1, 1, 5, 8), MODES),
    ("conv-k3-p1-to1ch-b1-5x8", lambda nn: nn.Conv2d(4, 1, 3, padding=1), (1, 4, 5, 8), MODES),
    ("conv-k3-p0-input3x3", lambda nn: nn.Conv2d(2, 3, 3), (3, 2, 3, 3), MODES),
    ("conv-k2x3-s2-p1-5x8", lambda nn: nn.Conv2d(2, 3, (2, 3), stride=2, padding=1), (3, 2, 5, 8), MODES),
    ("conv-k2x3-p0-nobias-b1-7x7", lambda nn: nn.Conv2d(2, 3, (2, 3), bias=False), (1, 2, 7, 7), MODES),
    ("conv-k3-p1-nobias-1ch", lambda nn: nn.Conv2d(1, 4, 3, padding=1, bias=False), (3, 1, 7, 7), MODES),
    # 3x3 "same" on planes at least 14 wide: the direct kernel (nanotorch/kernels/conv3x3.py)
    ("conv-k3-p1-direct-b2-9x16", lambda nn: nn.Conv2d(3, 5, 3, padding=1), (2, 3, 9, 16), MODES),
    ("conv-k3-p1-direct-nobias-1ch-b1-14x14", lambda nn: nn.Conv2d(1, 6, 3, padding=1, bias=False), (1, 1, 14, 14),
     MODES),
    # padding given as PyTorch's strings; its other arguments at their defaults
    ("conv-k3x5-same-5x8", lambda nn: nn.Conv2d(2, 3, (3, 5), padding="same"), (3, 2, 5, 8), MODES),
    ("conv-k3-valid-5x8", lambda nn: nn.Conv2d(2, 3, 3, padding="valid", padding_mode="zeros", device="cpu"),
     (3, 2, 5, 8), MODES),
    # MaxPool2d: ceil_mode, padding 1, stride != kernel, overlapping windows
    ("maxpool-2-floor-7x7", lambda nn: nn.MaxPool2d(2), (3, 2, 7, 7), MODES),
    ("maxpool-2-ceil-7x7", lambda nn: nn.MaxPool2d(2, ceil_mode=True), (3, 2, 7, 7), MODES),
    ("maxpool-2-ceil-5x8", lambda nn: nn.MaxPool2d(2, ceil_mode=True), (1, 1, 5, 8), MODES),
    ("maxpool-3-ceil-7x7", lambda nn: nn.MaxPool2d(3, ceil_mode=True), (3, 2, 7, 7), MODES),
    ("maxpool-3-ceil-2x2", lambda nn: nn.MaxPool2d(3, ceil_mode=True), (1, 1, 2, 2), MODES),
    ("maxpool-3-s2-p1-7x7", lambda nn: nn.MaxPool2d(3, stride=2, padding=1), (1, 1, 7, 7), MODES),
    ("maxpool-3-s2-p1-ceil-5x8", lambda nn: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (3, 1, 5, 8),
     MODES),
    ("maxpool-2-s1-overlap-5x8", lambda nn: nn.MaxPool2d(2, stride=1), (1, 3, 5, 8), MODES),
    ("maxpool-2x3-s1x2-p1-5x8", lambda nn: nn.MaxPool2d((2, 3), stride=(1, 2), padding=1), (3, 2, 5, 8), MODES),
    ("maxpool-2x3-s3-p1-ceil-7x7", lambda nn: nn.MaxPool2d((2, 3), stride=3, padding=1, ceil_mode=True),
     (3, 2, 7, 7), MODES),
    # AdaptiveAvgPool2d
    ("adaptiveavg-1-5x8", lambda nn: nn.AdaptiveAvgPool2d(1), (3, 2, 5, 8), MODES),
    ("adaptiveavg-1-7x7-b1", lambda nn: nn.AdaptiveAvgPool2d(1), (1, 1, 7, 7), MODES),
    ("adaptiveavg-2x3-5x8", lambda nn: nn.AdaptiveAvgPool2d((2, 3)), (3, 2, 5, 8), MODES),
    ("adaptiveavg-3-7x7", lambda nn: nn.AdaptiveAvgPool2d(3), (1, 2, 7, 7), MODES),
    ("adaptiveavg-4x6-bigger-than-2x3", lambda nn: nn.AdaptiveAvgPool2d((4, 6)), (3, 1, 2, 3), MODES),
    ("adaptiveavg-None-x3-keeps-H", lambda nn: nn.AdaptiveAvgPool2d((None, 3)), (3, 2, 5, 8), MODES),
    ("adaptiveavg-4x-None-keeps-W", lambda nn: nn.AdaptiveAvgPool2d([4, None]), (1, 2, 7, 5), MODES),
    ("adaptiveavg-None-None-identity", lambda nn: nn.AdaptiveAvgPool2d((None, None)), (2, 1, 3, 4), MODES),
    # activations
    ("gelu-none", lambda nn: nn.GELU(), (3, 2, 5, 8), MODES),
    ("gelu-tanh", lambda nn: nn.GELU(approximate="tanh"), (3, 2, 5, 8), MODES),
    ("gelu-none-2d", lambda nn: nn.GELU(), (1, 7), MODES),
    ("relu", lambda nn: nn.ReLU(), (3, 2, 5, 8), MODES),
    ("relu-2d", lambda nn: nn.ReLU(), (1, 7), MODES),
    ("leakyrelu", lambda nn: nn.LeakyReLU(), (3, 2, 5, 8), MODES),
    ("leakyrelu-0.2-3d", lambda nn: nn.LeakyReLU(0.2), (3, 5, 7), MODES),
    ("leakyrelu-int-slope-2-2d", lambda nn: nn.LeakyReLU(2), (1, 7), MODES),
    ("sigmoid", lambda nn: nn.Sigmoid(), (3, 2, 5, 8), MODES),
    ("sigmoid-1d", lambda nn: nn.Sigmoid(), (7,), MODES),
    ("tanh", lambda nn: nn.Tanh(), (3, 2, 5, 8), MODES),
    ("tanh-2d", lambda nn: nn.Tanh(), (1, 7), MODES),
    ("identity", lambda nn: nn.Identity(), (3, 2, 5, 8), MODES),
    ("identity-args-ignored", lambda nn: nn.Identity(54, unused_argument_one=0.1), (3, 7), MODES),
    # Linear
    ("linear-bias-b3", lambda nn: nn.Linear(5, 3), (3, 5), MODES),
    ("linear-bias-b1", lambda nn: nn.Linear(5, 3), (1, 5), MODES),
    ("linear-nobias-b3", lambda nn: nn.Linear(5, 3, bias=False), (3, 5), MODES),
    ("linear-nobias-b1", lambda nn: nn.Linear(7, 2, bias=False), (1, 7), MODES),
    ("linear-1to1", lambda nn: nn.Linear(1, 1), (3, 1), MODES),
    ("linear-3d", lambda nn: nn.Linear(5, 3), (2, 3, 5), MODES),           # (N, *, in): every leading axis
    ("linear-4d-nobias", lambda nn: nn.Linear(4, 2, bias=False), (2, 1, 3, 4), MODES),
    ("linear-3d-blas", lambda nn: nn.Linear(64, 40), (3, 9, 64), MODES),   # above SMALL_LINEAR: BLAS
    # BatchNorm1d on (N, C) and (N, C, L); BatchNorm2d
    ("bn1d-NC-b3", lambda nn: nn.BatchNorm1d(4), (3, 4), MODES),
    ("bn1d-NC-b2", lambda nn: nn.BatchNorm1d(4), (2, 4), MODES),
    ("bn1d-NC-b1-eval", lambda nn: nn.BatchNorm1d(4), (1, 4), ("eval",)),
    ("bn1d-NCL-b3", lambda nn: nn.BatchNorm1d(4), (3, 4, 5), MODES),
    ("bn1d-NCL-b1", lambda nn: nn.BatchNorm1d(1), (1, 1, 5), MODES),
    ("bn1d-NC-momentum-None", lambda nn: nn.BatchNorm1d(3, momentum=None), (3, 3), MODES),
    ("bn1d-NCL-noaffine", lambda nn: nn.BatchNorm1d(3, affine=False), (3, 3, 4), MODES),
    ("bn2d-b3-7x7", lambda nn: nn.BatchNorm2d(3), (3, 3, 7, 7), MODES),
    ("bn2d-1ch-b1-5x8", lambda nn: nn.BatchNorm2d(1), (1, 1, 5, 8), MODES),
    ("bn2d-b1-1x1-eval", lambda nn: nn.BatchNorm2d(2), (1, 2, 1, 1), ("eval",)),
    ("bn2d-eps-momentum", lambda nn: nn.BatchNorm2d(2, eps=1e-3, momentum=0.3), (3, 2, 5, 8), MODES),
    ("bn2d-momentum-None", lambda nn: nn.BatchNorm2d(2, momentum=None), (3, 2, 5, 8), MODES),
    ("bn2d-noaffine", lambda nn: nn.BatchNorm2d(2, affine=False), (3, 2, 5, 8), MODES),
    ("bn2d-nobias", lambda nn: nn.BatchNorm2d(2, bias=False), (3, 2, 5, 8), MODES),
    ("bn2d-eps-0-eval", lambda nn: nn.BatchNorm2d(2, eps=0.0), (3, 2, 5, 8), ("eval",)),   # (training refuses it)
    ("bn1d-track-device", lambda nn: nn.BatchNorm1d(3, 1e-5, 0.1, True, True, "cpu"), (3, 3), MODES),
    # Flatten
    ("flatten", lambda nn: nn.Flatten(), (3, 2, 5, 8), MODES),
    ("flatten-b1-1ch", lambda nn: nn.Flatten(), (1, 1, 7, 7), MODES),
    ("flatten-start2", lambda nn: nn.Flatten(2), (3, 2, 5, 8), MODES),
    ("flatten-1to2", lambda nn: nn.Flatten(1, 2), (3, 2, 5, 8), MODES),
    # Dropout: identity in eval and with p=0; p=1 zeroes everything in training
    ("dropout-0.15-eval", lambda nn: nn.Dropout(0.15), (3, 2, 5, 8), ("eval",)),
    ("dropout-default-eval", lambda nn: nn.Dropout(), (3, 7), ("eval",)),
    ("dropout-p0", lambda nn: nn.Dropout(0.0), (3, 2, 5, 8), MODES),
    ("dropout-p1-train", lambda nn: nn.Dropout(1.0), (3, 7), ("train",)),
    # small stacks: the chain rule through Sequential, keys "0.weight", "1.running_mean", ...
    ("seq-conv-bn-relu-pool", lambda nn: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3),
                                                        nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)),
     (3, 2, 7, 7), MODES),
    ("seq-linear-bn1d-gelu", lambda nn: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.GELU("tanh"),
                                                       nn.Linear(4, 2, bias=False)), (3, 6), MODES),
]

LAYER_PARAMS = [pytest.param(name, build, shape, mode, id=f"{name}-{mode}")
                for name, build, shape, modes in LAYER_CASES for mode in modes]


@pytest.mark.parametrize("name, build, shape, mode", LAYER_PARAMS)
def test_layer_matches_torch(name, build, shape, mode):
    """Three forwards (running statistics compared after each), then a backward of the last."""
    rng = np.random.default_rng(zlib.crc32(f"{name}-{mode}".encode()))
    ours, theirs = make_pair(build, rng)
    set_mode(mode, ours, theirs)
    inputs = [rng.standard_normal(shape) * 2.0 + 0.5 for _ in range(3)]
    run_and_compare(ours, theirs, inputs, rng.standard_normal)


# Ties (max pooling picks the first maximum in scan order, ReLU's derivative at 0 is 0) and extremes.
SPECIAL_INPUT_CASES = [
    ("maxpool-ties-3-s1-p1", lambda nn: nn.MaxPool2d(3, stride=1, padding=1), lambda r, s: r.integers(0, 3, s)),
    ("maxpool-ties-2-ceil", lambda nn: nn.MaxPool2d(2, ceil_mode=True), lambda r, s: r.integers(0, 2, s)),
    ("maxpool-all-zero", lambda nn: nn.MaxPool2d(3, stride=2, padding=1), lambda r, s: np.zeros(s)),
    ("maxpool-all-negative-padded", lambda nn: nn.MaxPool2d(3, stride=2, padding=1),
     lambda r, s: -1.0 - r.random(s)),
    ("relu-exact-zeros", lambda nn: nn.ReLU(), lambda r, s: r.integers(-1, 2, s)),
    ("gelu-none-extremes", lambda nn: nn.GELU(), lambda r, s: r.standard_normal(s) * 12.0),
    ("gelu-tanh-extremes", lambda nn: nn.GELU("tanh"), lambda r, s: r.standard_normal(s) * 12.0),
    ("gelu-none-zeros", lambda nn: nn.GELU(), lambda r, s: np.zeros(s)),
    ("sigmoid-extremes", lambda nn: nn.Sigmoid(),
     lambda r, s: r.choice([-1000.0, -100.0, -40.0, 40.0, 100.0, 1000.0], s)),
    ("tanh-extremes", lambda nn: nn.Tanh(), lambda r, s: r.choice([-1000.0, -100.0, -20.0, 20.0, 100.0, 1000.0], s)),
    ("leakyrelu-exact-zeros", lambda nn: nn.LeakyReLU(0.3), lambda r, s: r.integers(-1, 2, s)),
    ("bn2d-constant-channel", lambda nn: nn.BatchNorm2d(2), lambda r, s: np.full(s, 3.0)),
]


@pytest.mark.parametrize("build, make_input", [pytest.param(b, f, id=i) for i, b, f in SPECIAL_INPUT_CASES])
@pytest.mark.parametrize("mode", MODES)
def test_special_inputs_match_torch(build, make_input, mode):
    rng = np.random.default_rng(1)
    ours, theirs = make_pair(build, rng)
    set_mode(mode, ours, theirs)
    x = make_input(rng, (3, 2, 7, 7)).astype(np.float64)
    run_and_compare(ours, theirs, [x], rng.standard_normal)


# Arrays that are not C-contiguous (a transposed view, a reversed slice, Fortran order) are ordinary
# NumPy arrays and PyTorch takes the equivalent strided tensors; the results must not depend on layout.
def direct(layer):
    """A nanotorch Conv2d sent through the direct 3x3 kernel at any width (a torch layer is left as is)."""
    if hasattr(layer, "uses_direct_kernel"):
        layer.direct_min_width = 1
    return layer


STRIDED_LAYERS = [
    ("conv", lambda nn: nn.Conv2d(2, 3, 3, stride=2, padding=1)),
    ("conv-direct", lambda nn: direct(nn.Conv2d(2, 3, 3, padding=1))),
    ("maxpool", lambda nn: nn.MaxPool2d(2, ceil_mode=True)),
    ("adaptiveavg", lambda nn: nn.AdaptiveAvgPool2d((2, 3))),
    ("bn2d", lambda nn: nn.BatchNorm2d(2)),
    ("gelu-none", lambda nn: nn.GELU()),
    ("gelu-tanh", lambda nn: nn.GELU("tanh")),
    ("relu", lambda nn: nn.ReLU()),
    ("flatten", lambda nn: nn.Flatten()),
    ("dropout-p0", lambda nn: nn.Dropout(0.0)),
    ("leakyrelu", lambda nn: nn.LeakyReLU(0.2)),
    ("sigmoid", lambda nn: nn.Sigmoid()),
    ("tanh", lambda nn: nn.Tanh()),
]
LAYOUTS = {
    "transposed": lambda a: np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2),
    "reversed": lambda a: np.ascontiguousarray(a[..., ::-1])[..., ::-1],
    "fortran": np.asfortranarray,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("build", [pytest.param(b, id=i) for i, b in STRIDED_LAYERS])
def test_non_contiguous_arrays_match_torch(build, layout):
    rng = np.random.default_rng(2)
    ours, theirs = make_pair(build, rng)
    set_mode("train", ours, theirs)
    x = LAYOUTS[layout](rng.standard_normal((3, 2, 5, 8)))
    assert not x.flags.c_contiguous
    run_and_compare(ours, theirs, [x], lambda shape: LAYOUTS[layout](rng.standard_normal(shape)))


@pytest.mark.parametrize("build", [
    pytest.param(lambda nn: nn.ReLU(), id="relu"),
    pytest.param(lambda nn: nn.GELU(), id="gelu"),
    pytest.param(lambda nn: nn.LeakyReLU(), id="leakyrelu"),
    pytest.param(lambda nn: nn.Sigmoid(), id="sigmoid"),
    pytest.param(lambda nn: nn.Tanh(), id="tanh"),
    pytest.param(lambda nn: nn.MaxPool2d(2), id="maxpool"),
    pytest.param(lambda nn: nn.Conv2d(2, 2, 3, padding=1), id="conv"),
    pytest.param(lambda nn: direct(nn.Conv2d(2, 2, 3, padding=1)), id="conv-direct"),
])
def test_nan_propagates_like_torch(build):
    """A NaN must reach the output (that is how a diverged run is noticed), as in PyTorch."""
    rng = np.random.default_rng(3)
    ours, theirs = make_pair(build, rng)
    x = rng.standard_normal((1, 2, 4, 4))
    x[0, 0, 1, 1] = np.nan
    out, out_t = ours(x), theirs(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(out_t), err_msg="where the output is NaN")
    # and the gradients (NaN where torch's are NaN: assert_allclose compares NaN positions)
    ours, theirs = make_pair(build, rng)
    run_and_compare(ours, theirs, [x], rng.standard_normal)


@pytest.mark.parametrize("build", [
    pytest.param(lambda nn: nn.Conv2d(2, 3, 3, padding=1), id="conv"),
    pytest.param(lambda nn: nn.Linear(4, 3), id="linear"),
    pytest.param(lambda nn: nn.BatchNorm2d(2), id="bn2d"),
])
def test_parameter_grads_accumulate_like_torch(build):
    """Two forward/backward passes without zero_grad: the gradients add up, as in PyTorch."""
    rng = np.random.default_rng(4)
    ours, theirs = make_pair(build, rng)
    shape = (3, 4) if isinstance(ours, nt_nn.Linear) else (3, 2, 5, 8)
    for _ in range(2):
        x = rng.standard_normal(shape)
        g = rng.standard_normal(ours(x).shape)
        ours.backward(g)
        theirs(torch.from_numpy(x)).backward(torch.from_numpy(g))
    compare_grads(ours, theirs)
    ours.zero_grad()
    assert all(p.grad is None for p in ours.parameters())


# --- CrossEntropyLoss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n, k, scale, grad_out, ignore_index", [
    pytest.param(1, 10, 1.0, 1.0, -100, id="b1-k10"),
    pytest.param(3, 10, 3.0, 1.0, -100, id="b3-k10"),
    pytest.param(4, 1, 1.0, 1.0, -100, id="b4-k1"),
    pytest.param(5, 3, 300.0, 1.0, -100, id="b5-k3-huge-logits"),
    pytest.param(3, 4, 1.0, 2.5, -100, id="b3-k4-grad_out-2.5"),
    pytest.param(7, 3, 1.0, 1.0, 1, id="b7-k3-ignore-class-1"),
    pytest.param(6, 4, 1.0, 2.5, -1, id="b6-k4-ignore-minus-1"),
    pytest.param(3, 1, 1.0, 1.0, 0, id="b3-k1-every-row-ignored"),
])
def test_cross_entropy_matches_torch(reduction, n, k, scale, grad_out, ignore_index):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((n, k)) * scale
    targets = rng.integers(0, k, n)
    targets[::3] = ignore_index if ignore_index < 0 else targets[::3]   # every third row skipped
    if ignore_index >= 0:
        targets[1::3] = ignore_index                                    # a class: those rows skipped
    crit = nt_nn.CrossEntropyLoss(reduction=reduction, ignore_index=ignore_index)
    crit_t = torch.nn.CrossEntropyLoss(reduction=reduction, ignore_index=ignore_index)
    loss = crit(logits, targets)
    zt = torch.from_numpy(logits.copy()).requires_grad_(True)
    loss_t = crit_t(zt, torch.from_numpy(targets))
    assert np.shape(loss) == ((n,) if reduction == "none" else ())
    close(loss, loss_t, "loss")
    if reduction == "none":
        upstream = grad_out * rng.random(n)
        grad = crit.backward(upstream)
        loss_t.backward(torch.from_numpy(upstream))
    else:
        grad = crit.backward(grad_out) if grad_out != 1.0 else crit.backward()
        loss_t.backward(torch.tensor(grad_out, dtype=torch.float64))
    close(grad, zt.grad, "d loss / d logits")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_float32_and_uint8_targets_match_torch(reduction):
    """The module in float32 (the dtype it trains in), targets as uint8 with 255 ignored."""
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal((64, 10)) * 3).astype(np.float32)
    targets = rng.integers(0, 10, 64).astype(np.uint8)
    targets[::5] = 255
    crit = nt_nn.CrossEntropyLoss(reduction=reduction, ignore_index=255)
    loss = crit(logits, targets)
    zt = torch.from_numpy(logits.copy()).requires_grad_(True)
    loss_t = torch.nn.CrossEntropyLoss(reduction=reduction, ignore_index=255)(zt, torch.from_numpy(targets).long())
    upstream = rng.random(64).astype(np.float32) if reduction == "none" else None
    grad = crit.backward(upstream)
    loss_t.backward(None if upstream is None else torch.from_numpy(upstream))
    assert np.asarray(loss).dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_allclose(loss, loss_t.detach().numpy(), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=2e-6, atol=1e-8)


@pytest.mark.parametrize("build, shape", [
    pytest.param(lambda nn: nn.BatchNorm2d(3), (0, 3, 4, 4), id="BatchNorm2d"),
    pytest.param(lambda nn: nn.BatchNorm1d(3, momentum=None), (2, 3, 0), id="BatchNorm1d-cumulative"),
])
def test_batchnorm_of_an_empty_training_batch_matches_torch(build, shape):
    """An empty output and zero gradients; the batch is counted and the running statistics kept."""
    ours, theirs = build(nt_nn), build(torch.nn).double()
    ours.running_mean[...], ours.running_var[...] = 5.0, 7.0
    theirs.load_state_dict(torch_state(ours.to(np.float64)))
    x = np.zeros(shape)
    xt = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    y, yt = ours(x), theirs(xt)
    close(y, yt, "output")
    yt.sum().backward()
    close(ours.backward(np.ones_like(y)), xt.grad, "d input")
    for (name, p), pt in zip(ours.named_parameters(), theirs.parameters()):
        close(p.grad, pt.grad, name)
    for name, buf in theirs.state_dict().items():
        close(ours.state_dict()[name], buf, name)


@pytest.mark.filterwarnings("ignore::UserWarning")          # both warn that the pair is deprecated
@pytest.mark.parametrize("size_average", [None, True, False, 0, 1])
@pytest.mark.parametrize("reduce", [None, True, 1])     # (a false one means "none": refused)
def test_cross_entropy_deprecated_size_average_and_reduce_match_torch(size_average, reduce):
    """PyTorch's deprecated pair, which overrides ``reduction`` (here 'sum') whenever either is given."""
    ours = nt_nn.CrossEntropyLoss(size_average=size_average, reduce=reduce, reduction="sum")
    theirs = torch.nn.CrossEntropyLoss(size_average=size_average, reduce=reduce, reduction="sum")
    assert ours.reduction == theirs.reduction


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_of_an_empty_batch_matches_torch(reduction):
    """N = 0: the loss is nan ('mean') or 0 ('sum') and the gradient an empty (0, K) array, as torch."""
    logits, targets = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    crit = nt_nn.CrossEntropyLoss(reduction=reduction)
    loss = crit(logits, targets)
    zt = torch.zeros((0, 4), dtype=torch.float64, requires_grad=True)
    loss_t = torch.nn.CrossEntropyLoss(reduction=reduction)(zt, torch.from_numpy(targets))
    np.testing.assert_equal(float(loss), loss_t.item())
    loss_t.backward()
    close(crit.backward(), zt.grad, "d loss / d logits")


# --- CrossEntropyLoss's options: weight, label_smoothing, (N, C, d1, ...) logits, class probabilities ----------
CE_TOL = dict(rtol=1e-12, atol=1e-12)


def cross_entropy_case(rng, kind, dims, ignore, n=4, c=5):
    """(logits, targets, ignore_index): logits (n, c, *dims); class indices with every third position
    ignored (ignore 'default': set to -100; 'class': class 2 is ignore_index) or none ignored (None),
    or class probabilities of the logits' shape (rows drawn from a Dirichlet)."""
    logits = rng.standard_normal((n, c) + dims) * 2.0
    if kind == "probs":
        return logits, np.moveaxis(rng.dirichlet(np.ones(c), (n,) + dims), -1, 1), -100
    targets = rng.integers(0, c, (n,) + dims)
    if ignore is None:
        return logits, targets, -100
    ignore_index = -100 if ignore == "default" else 2
    targets.reshape(-1)[::3] = ignore_index
    return logits, targets, ignore_index


def compare_cross_entropy(rng, logits, targets, grad_out=2.5, tol=CE_TOL, **kwargs):
    """Loss and d loss / d logits against torch's (float64, a random upstream gradient for 'none')."""
    weight = kwargs.pop("weight", None)
    ours = nt_nn.CrossEntropyLoss(weight=weight, **kwargs)
    theirs = torch.nn.CrossEntropyLoss(weight=None if weight is None else torch.from_numpy(weight.copy()), **kwargs)
    loss = ours(logits, targets)
    zt = torch.from_numpy(logits.copy()).requires_grad_(True)
    tt = torch.from_numpy(targets.copy())
    loss_t = theirs(zt, tt if tt.is_floating_point() else tt.long())
    assert np.asarray(loss).dtype == {torch.float64: np.float64, torch.float32: np.float32}[loss_t.dtype]
    assert np.shape(loss) == tuple(loss_t.shape)
    np.testing.assert_allclose(loss, loss_t.detach().numpy(), **tol, err_msg="loss")
    upstream = grad_out * rng.random(np.shape(loss)) if np.ndim(loss) else np.float64(grad_out)
    grad = ours.backward(upstream)
    loss_t.backward(torch.as_tensor(upstream, dtype=loss_t.dtype))
    assert grad.shape == logits.shape and grad.dtype == logits.dtype and grad.flags.c_contiguous
    np.testing.assert_allclose(grad, zt.grad.numpy(), **tol, err_msg="d loss / d logits")
    return loss, grad


CE_OPTION_CASES = [pytest.param(kind, dims, ignore, weighted, smoothing, reduction,
                                id=f"{kind}-dims{len(dims)}-ignore-{ignore}-w{int(weighted)}-ls{smoothing}-{reduction}")
                   for kind in ("index", "probs") for dims in ((), (2, 3))
                   for ignore in ((None, "default", "class") if kind == "index" else (None,))
                   for weighted in (False, True) for smoothing in (0.0, 0.3) for reduction in ("mean", "sum", "none")]


@pytest.mark.parametrize("kind, dims, ignore, weighted, smoothing, reduction", CE_OPTION_CASES)
def test_cross_entropy_options_match_torch(kind, dims, ignore, weighted, smoothing, reduction, rng):
    """Every combination of weight, label_smoothing, ignore_index and reduction, with class indices
    or class probabilities, for (N, C) and (N, C, d1, d2) logits (the tests below take (N, C, d1)): the
    loss and its gradient to 1e-12 in float64."""
    logits, targets, ignore_index = cross_entropy_case(rng, kind, dims, ignore)
    weight = rng.uniform(0.2, 3.0, logits.shape[1]) if weighted else None
    compare_cross_entropy(rng, logits, targets, weight=weight, label_smoothing=smoothing,
                          ignore_index=ignore_index, reduction=reduction)


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("smoothing", [1.0, 0.05])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_smoothing_at_its_ends_and_one_class_match_torch(kind, smoothing, reduction, rng):
    """label_smoothing 1 (uniform targets), a small one, and a single class (C = 1), with weight."""
    for c in (1, 4):
        logits, targets, ignore_index = cross_entropy_case(rng, kind, (2,), "default", n=3, c=c)
        compare_cross_entropy(rng, logits, targets, weight=rng.uniform(0.5, 2.0, c), label_smoothing=smoothing,
                              ignore_index=ignore_index, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["every-position-ignored", "targets-of-weight-0", "empty-batch", "minus-inf-logit"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_options_edge_cases_match_torch(case, reduction, smoothing, rng):
    """NaN where torch's mean divides by a zero sum of weights (every position ignored: a zero
    gradient; only targets of weight 0: a NaN one), an empty batch, and a class masked with a logit
    of -inf (the loss stays finite without smoothing: no 0 * -inf)."""
    logits, weight = rng.standard_normal((3, 4, 2)), rng.uniform(0.5, 2.0, 4)
    targets = np.array([[1, 0], [3, 1], [0, 0]])
    if case == "every-position-ignored":
        targets[...] = -100
    elif case == "targets-of-weight-0":
        weight[[0, 1, 3]] = 0.0
    elif case == "empty-batch":
        logits, targets = logits[:0], targets[:0]
    else:
        logits[:, 2] = -np.inf
    with np.errstate(all="ignore"):
        loss, grad = compare_cross_entropy(rng, logits, targets, weight=weight, label_smoothing=smoothing,
                                           reduction=reduction, tol=dict(rtol=1e-12, atol=1e-12, equal_nan=True))
    if case == "minus-inf-logit":
        assert np.isfinite(grad).all() and np.isfinite(loss).all() == (smoothing == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_options_in_float32_match_torch(reduction, rng):
    """float32 logits and weight; class probabilities given as float64, which torch promotes the
    loss to (the gradient stays float32, as the logits)."""
    logits = (rng.standard_normal((6, 5, 3)) * 3).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    targets = rng.integers(0, 5, (6, 3))
    targets[::2, 1] = -100
    tol = dict(rtol=2e-6, atol=1e-7)
    compare_cross_entropy(rng, logits, targets, tol=tol, weight=weight, label_smoothing=0.1, reduction=reduction)
    probs = np.moveaxis(rng.dirichlet(np.ones(5), (6, 3)), -1, 1)
    for targets in (probs, probs.astype(np.float32)):
        compare_cross_entropy(rng, logits, targets, tol=tol, weight=weight, label_smoothing=0.1, reduction=reduction)


def test_cross_entropy_more_axes_large_logits_mixed_dtypes_and_a_float32_smoothing_match_torch(rng):
    """(N, C, d1, d2, d3) logits (any number of axes after C, as torch); class-probability targets with
    logits in the thousands (the log-softmax shifted by each row's max: no overflow); float32
    probabilities with float64 logits (the float32 values taken exactly, the rest in float64); and a
    label_smoothing given as a np.float32 (its value as a double, as torch takes it), to 1e-12."""
    logits, targets, _ = cross_entropy_case(rng, "index", (2, 1, 3), "default", n=2, c=3)
    compare_cross_entropy(rng, logits, targets)
    compare_cross_entropy(rng, logits, targets, weight=rng.uniform(0.5, 2.0, 3), label_smoothing=0.2, reduction="none")
    logits, probs, _ = cross_entropy_case(rng, "probs", (2, 1, 3), None, n=2, c=3)
    compare_cross_entropy(rng, logits, probs, label_smoothing=0.2)
    compare_cross_entropy(rng, logits * 500, probs, reduction="none")
    compare_cross_entropy(rng, logits, probs.astype(np.float32), weight=rng.uniform(0.5, 2.0, 3),
                          label_smoothing=0.1, reduction="sum")
    logits, targets, _ = cross_entropy_case(rng, "index", (), None)
    compare_cross_entropy(rng, logits, targets, label_smoothing=np.float32(0.1))


def test_cross_entropy_weight_is_a_buffer_as_torchs(rng):
    """state_dict holds 'weight' when one is given (nothing otherwise), .double() converts it, and
    a state_dict saved by torch loads into nanotorch."""
    weight = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    ours, theirs = nt_nn.CrossEntropyLoss(weight), torch.nn.CrossEntropyLoss(torch.from_numpy(weight))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    assert list(nt_nn.CrossEntropyLoss().state_dict()) == list(torch.nn.CrossEntropyLoss().state_dict()) == []
    assert ours.double().weight.dtype == np.float64 and theirs.double().weight.dtype == torch.float64
    fresh = nt_nn.CrossEntropyLoss(np.ones(4))
    fresh.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_array_equal(fresh.weight, weight.astype(np.float64))
    logits, targets = rng.standard_normal((3, 4)), np.array([0, 3, 1])
    compare_cross_entropy(rng, logits, targets, weight=fresh.weight)


def ce_targets(kind, shape, c=4):
    """Targets of ``kind`` for (N, C, ...) logits of ``shape``."""
    if kind == "index":
        return np.zeros((shape[0],) + shape[2:], np.int64)
    return np.full(shape, 1.0 / c)


# (id, CrossEntropyLoss's keyword arguments as numpy (weight) / torch builds them, logits shape, targets)
CE_BAD_CASES = [
    ("weight-too-short", dict(weight=np.ones(3)), (3, 4), "index"),
    ("weight-too-long-smoothing", dict(weight=np.ones(5), label_smoothing=0.1), (3, 4, 2), "index"),
    ("weight-too-short-probs", dict(weight=np.ones(3)), (3, 4), "probs"),
    ("weight-2d", dict(weight=np.ones((1, 4))), (3, 4), "index"),
    ("weight-int", dict(weight=np.ones(4, np.int64)), (3, 4), "index"),
    ("weight-float32-logits-float64", dict(weight=np.ones(4, np.float32)), (3, 4), "index"),
    ("smoothing-above-1", dict(label_smoothing=1.5), (3, 4), "index"),
    ("smoothing-above-1-probs", dict(label_smoothing=1.01), (3, 4, 2), "probs"),
    ("probs-with-ignore-index", dict(ignore_index=1), (3, 4), "probs"),
    ("probs-with-ignore-index-0", dict(ignore_index=0), (3, 4), "probs"),
    ("probs-complex", dict(), (3, 4), np.full((3, 4), 0.25 + 0j)),
    ("probs-wrong-shape", dict(), (3, 4), np.full((3, 5), 0.2)),
    ("probs-int", dict(), (3, 4), np.ones((3, 4), np.int64)),
    ("index-wrong-dims", dict(), (2, 4, 3), np.zeros((2, 4), np.int64)),
    ("index-missing-dims", dict(), (2, 4, 3), np.zeros(2, np.int64)),
    ("index-out-of-range-weight", dict(weight=np.ones(4)), (3, 4), np.array([0, 4, 1])),
    ("index-out-of-range-first-row", dict(), (3, 4), np.array([4, 0, 1])),
    ("index-out-of-range-first-row-smoothing", dict(label_smoothing=0.1), (3, 4), np.array([-1, 0, 1])),
    ("index-out-of-range-smoothing-dims", dict(label_smoothing=0.2), (2, 4, 3), np.array([[0, 1, 2], [3, -1, 0]])),
]


@pytest.mark.parametrize("kwargs, shape, targets", [pytest.param(k, s, t, id=i) for i, k, s, t in CE_BAD_CASES])
def test_what_torch_refuses_in_cross_entropys_options_nanotorch_refuses(kwargs, shape, targets):
    """Each is refused by torch (a RuntimeError or IndexError at the forward) and by nanotorch (a
    TypeError or ValueError, its message checked in tests/test_bad_input.py)."""
    targets = ce_targets(targets, shape) if isinstance(targets, str) else targets
    logits = np.zeros(shape)
    torch_kwargs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with pytest.raises((RuntimeError, IndexError)):
        torch.nn.CrossEntropyLoss(**torch_kwargs)(torch.from_numpy(logits), torch.from_numpy(targets))
    with pytest.raises((TypeError, ValueError)):
        nt_nn.CrossEntropyLoss(**kwargs)(logits, targets)


@pytest.mark.parametrize("smoothing", [-0.1, float("nan"), True])
def test_label_smoothing_torch_takes_outside_its_documented_range_is_refused(smoothing):
    """torch documents label_smoothing as 'a float in [0.0, 1.0]' but checks only the upper end: a
    negative or NaN value is silently no smoothing there (True is 1.0). nanotorch refuses them."""
    logits, targets = np.zeros((3, 4)), np.array([0, 1, 2])
    smoothed = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(torch.from_numpy(logits), torch.from_numpy(targets))
    assert np.isfinite(smoothed.item())
    with pytest.raises((TypeError, ValueError), match="label_smoothing"):
        nt_nn.CrossEntropyLoss(label_smoothing=smoothing)


# --- what PyTorch refuses as invalid ---------------------------------------------------------------------------
def conv_bn_gelu(nn, eps):
    """nanotorch's fused block, or PyTorch's Sequential of its three layers, with BatchNorm's eps."""
    if nn is nt_nn:
        block = nn.ConvBNGELU(2, 3, 3, padding=1)
        block[1].eps = eps
        return block
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3, eps=eps), nn.GELU())


@pytest.mark.parametrize("build, shape", [
    pytest.param(lambda nn: nn.Conv2d(3, 2, 3, groups=2), (1, 3, 5, 5), id="Conv2d-groups-not-dividing-in"),
    pytest.param(lambda nn: nn.Conv2d(2, 3, 3, groups=2), (1, 2, 5, 5), id="Conv2d-groups-not-dividing-out"),
    pytest.param(lambda nn: nn.Conv2d(2, 2, 3, groups=0), (1, 2, 5, 5), id="Conv2d-groups-0"),
    pytest.param(lambda nn: nn.Conv2d(2, 2, 3, padding_mode="zero"), (1, 2, 5, 5), id="Conv2d-padding_mode-typo"),
    pytest.param(lambda nn: nn.Conv2d(2, 2, 3, padding_mode="same"), (1, 2, 5, 5), id="Conv2d-padding_mode-same"),
    pytest.param(lambda nn: nn.Conv2d(2, 2, 3, dilation=0), (1, 2, 5, 5), id="Conv2d-dilation-0"),
    pytest.param(lambda nn: nn.Conv2d(2, 2, 1, padding=1), (1, 2, 3, 0), id="Conv2d-empty-plane"),
    pytest.param(lambda nn: nn.Conv2d(2, 2, 1, padding=1), (1, 2, 0, 3), id="Conv2d-empty-plane-no-rows"),
    pytest.param(lambda nn: nn.MaxPool2d(2, dilation=0), (1, 2, 5, 5), id="MaxPool2d-dilation-0"),
    pytest.param(lambda nn: nn.MaxPool2d(2, padding=1), (1, 2, 0, 3), id="MaxPool2d-empty-plane-padded"),
    pytest.param(lambda nn: nn.MaxPool2d(2), (1, 0, 4, 4), id="MaxPool2d-no-channels"),
    pytest.param(lambda nn: nn.BatchNorm2d(2, eps=0.0), (3, 2, 4, 4), id="BatchNorm2d-eps-0-training"),
    pytest.param(lambda nn: nn.BatchNorm1d(2, eps=0.0, momentum=None), (0, 2), id="BatchNorm1d-eps-0-empty-batch"),
    pytest.param(lambda nn: nn.BatchNorm1d(2, eps=-1e-3).eval(), (3, 2, 4), id="BatchNorm1d-eps-negative-eval"),
    pytest.param(lambda nn: conv_bn_gelu(nn, 0.0), (2, 2, 4, 4), id="ConvBNGELU-eps-0-training"),
    pytest.param(lambda nn: conv_bn_gelu(nn, -1e-3).eval(), (2, 2, 4, 4), id="ConvBNGELU-eps-negative-eval"),
])
def test_what_torch_refuses_as_invalid_is_a_value_error(build, shape):
    """Where PyTorch refuses the arguments or the input (at construction or at the forward), nanotorch
    refuses them with a ValueError (not "not implemented", nor a result: a padded window of an empty
    plane has no pixel to read), and changes no running statistics first."""
    with pytest.raises((ValueError, RuntimeError)):
        build(torch.nn).double()(torch.zeros(shape, dtype=torch.float64))
    layer = None
    with pytest.raises(ValueError):
        layer = build(nt_nn).double()
        layer(np.zeros(shape))
    for name, buffer in (layer.named_buffers() if layer is not None else ()):
        if name.endswith("num_batches_tracked"):
            assert int(buffer) == 0, f"{name} counted a refused batch"


def test_empty_batches_and_outputs_have_torchs_shapes():
    """An empty batch is taken as PyTorch takes it, even with empty planes (only MaxPool2d refuses
    those), and an output_size of 0 gives an empty output (PyTorch has no backward for that one; ours
    gives the input a zero gradient)."""
    for build, shape in [(lambda nn: nn.Conv2d(1, 2, 1, padding=1), (0, 1, 0, 3)),
                         (lambda nn: nn.MaxPool2d(2, padding=1), (0, 1, 3, 3)),
                         (lambda nn: nn.AdaptiveAvgPool2d((None, 2)), (0, 2, 3, 5)),
                         (lambda nn: nn.AdaptiveAvgPool2d((0, 3)), (2, 2, 5, 8))]:
        want = tuple(build(torch.nn).double()(torch.zeros(shape, dtype=torch.float64)).shape)
        layer = build(nt_nn).double()
        out = layer(np.zeros(shape))
        assert out.shape == want
        assert layer.backward(np.zeros(want)).shape == shape


# --- Flatten's dims and parameters set to None -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3,), ()])
def test_flatten_dims_match_torch(shape):
    """Every (start_dim, end_dim) in and out of range: the same shape, or the same kind of error."""
    x = np.random.default_rng(0).standard_normal(shape)
    rank = max(len(shape), 1)
    for start in range(-rank - 1, rank + 1):
        for end in range(-rank - 1, rank + 1):
            try:
                want = tuple(torch.nn.Flatten(start, end)(torch.from_numpy(x)).shape)
            except (IndexError, RuntimeError) as e:
                with pytest.raises(type(e)):
                    nt_nn.Flatten(start, end)(x)
                continue
            assert nt_nn.Flatten(start, end)(x).shape == want, (shape, start, end)


def test_bias_set_to_none_gives_torchs_state_dict():
    ours, theirs = nt_nn.Conv2d(2, 3, 3), torch.nn.Conv2d(2, 3, 3)
    ours.bias, theirs.bias = None, None
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.double().load_state_dict(torch_state(ours.double()))                 # strict
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    close(ours(x), theirs(torch.from_numpy(x)), "conv without its bias")


def test_sequential_slice_matches_torch():
    build = lambda nn: nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))   # noqa: E731
    ours, theirs = make_pair(build, np.random.default_rng(0))
    assert type(ours[1:]) is nt_nn.Sequential
    assert list(ours[1:].state_dict()) == list(theirs[1:].state_dict())
    x = np.random.default_rng(1).standard_normal((5, 3))
    close(ours[1:](x), theirs[1:](torch.from_numpy(x)), "model[1:]")


# --- the seed model ---------------------------------------------------------------------------------------
def torch_seed_model():
    tnn = torch.nn

    def block(cin, cout):
        return tnn.Sequential(tnn.Conv2d(cin, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.GELU())

    return tnn.Sequential(
        block(1, 4), block(4, 8), block(8, 12), block(12, 16), tnn.MaxPool2d(2),
        block(16, 20), tnn.MaxPool2d(2),
        block(20, 24), tnn.MaxPool2d(2, ceil_mode=True),
        block(24, 28), tnn.MaxPool2d(2),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
        tnn.Linear(28, 56), tnn.GELU(), tnn.Dropout(0.15), tnn.Linear(56, 10),
    )


def seed_pair():
    rng = np.random.default_rng(6)
    nanotorch.manual_seed(6)
    ours = build_model().double()
    randomize_batchnorm(ours, rng)
    theirs = torch_seed_model().double()
    theirs.load_state_dict(torch_state(ours))           # strict: every key and shape matches
    x = rng.standard_normal((4, 1, 28, 28))
    targets = rng.integers(0, 10, 4)
    return ours, theirs, x, targets, rng


def test_seed_model_state_dict_keys_are_torchs():
    ours, theirs, *_ = seed_pair()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert ours.state_dict()[k].shape == tuple(v.shape), k
    # and back: torch's (untouched, differently initialised) weights load into ours
    fresh = torch_seed_model().double()
    ours.load_state_dict({k: v.numpy() for k, v in fresh.state_dict().items()})
    compare_state(ours, fresh, "after loading torch's state_dict into ours")


def test_seed_model_eval_matches_torch():
    ours, theirs, x, _, _ = seed_pair()
    set_mode("eval", ours, theirs)
    close(ours(x), theirs(torch.from_numpy(x)), "seed model output (eval)")
    compare_state(ours, theirs, "after eval forward")


def test_seed_model_train_loss_and_grads_match_torch():
    ours, theirs, x, targets, _ = seed_pair()
    set_mode("train", ours, theirs)
    for m in list(ours.modules()) + list(theirs.modules()):
        if isinstance(m, (nt_nn.Dropout, torch.nn.Dropout)):
            m.p = 0.0
    crit, crit_t = nt_nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    logits = ours(x)
    loss = crit(logits, targets)
    dx = ours.backward(crit.backward())

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    logits_t = theirs(xt)
    loss_t = crit_t(logits_t, torch.from_numpy(targets))
    loss_t.backward()

    close(logits, logits_t, "seed model logits (train)")
    close(loss, loss_t, "seed model loss")
    compare_state(ours, theirs, "after train forward")      # running stats of all seven BatchNorms
    close(dx, xt.grad, "seed model grad_input")
    compare_grads(ours, theirs)


def test_seed_model_several_train_forwards_then_eval():
    """Running statistics after three training batches, then the eval output they produce."""
    ours, theirs, x, _, rng = seed_pair()
    set_mode("train", ours, theirs)
    for i in range(3):
        xi = rng.standard_normal((3, 1, 28, 28)) * 1.5 + 0.2
        ours(xi)
        with torch.no_grad():
            theirs(torch.from_numpy(xi))
        compare_state(ours, theirs, f"after train forward {i}")
    set_mode("eval", ours, theirs)
    with torch.no_grad():
        close(ours(x), theirs(torch.from_numpy(x)), "eval output after training forwards")


# --- printing -------------------------------------------------------------------------------------------
# repr() prints what PyTorch prints for the same construction: the arguments as PyTorch keeps them
# (an int stays an int, 'same' stays 'same'), padding and bias only when they are not the defaults,
# no arguments for a loss, and a container's children one a line.
REPR_CASES = [
    ("conv-p1-nobias", lambda nn: nn.Conv2d(1, 4, 3, padding=1, bias=False)),
    ("conv-k3x2-s2", lambda nn: nn.Conv2d(1, 4, (3, 2), stride=2)),
    ("conv-lists", lambda nn: nn.Conv2d(1, 4, [3, 3], stride=[2, 1], padding=[1, 0])),
    ("conv-same", lambda nn: nn.Conv2d(1, 4, 3, padding="same")),
    ("conv-same-k3x5-nobias", lambda nn: nn.Conv2d(1, 4, (3, 5), padding="same", bias=False)),
    ("conv-valid", lambda nn: nn.Conv2d(1, 4, 3, padding="valid")),
    ("conv-defaults-spelled-out", lambda nn: nn.Conv2d(2, 3, 3, 1, 0, 1, 1, True, "zeros", "cpu", None)),
    ("bn2d", lambda nn: nn.BatchNorm2d(4)),
    ("bn2d-nobias", lambda nn: nn.BatchNorm2d(4, bias=False)),
    ("bn1d-eps-int-momentum-None-noaffine", lambda nn: nn.BatchNorm1d(3, eps=1, momentum=None, affine=False)),
    ("bn1d-eps-float32", lambda nn: nn.BatchNorm1d(3, eps=np.float32(1e-3), momentum=0.3)),
    ("bn2d-affine-1-track-1", lambda nn: nn.BatchNorm2d(2, affine=1, track_running_stats=1)),
    ("maxpool-2", lambda nn: nn.MaxPool2d(2)),
    ("maxpool-2x3-s1-p1", lambda nn: nn.MaxPool2d((2, 3), stride=1, padding=1)),
    ("maxpool-lists-ceil", lambda nn: nn.MaxPool2d([2, 2], padding=(1, 0), ceil_mode=True)),
    ("maxpool-numpy-int", lambda nn: nn.MaxPool2d(np.int64(2), dilation=(1, 1))),
    ("adaptiveavg-1", lambda nn: nn.AdaptiveAvgPool2d(1)),
    ("adaptiveavg-1x1", lambda nn: nn.AdaptiveAvgPool2d((1, 1))),
    ("adaptiveavg-list", lambda nn: nn.AdaptiveAvgPool2d([2, 3])),
    ("dropout-default", lambda nn: nn.Dropout()),
    ("dropout-0.15", lambda nn: nn.Dropout(p=0.15)),
    ("dropout-int-0", lambda nn: nn.Dropout(0)),
    ("dropout-float32", lambda nn: nn.Dropout(np.float32(0.15))),
    ("gelu", lambda nn: nn.GELU()),
    ("gelu-tanh", lambda nn: nn.GELU("tanh")),
    ("relu", lambda nn: nn.ReLU()),
    ("leakyrelu-float32-slope", lambda nn: nn.LeakyReLU(np.float32(0.25))),
    ("leakyrelu-negative-slope", lambda nn: nn.LeakyReLU(negative_slope=-1e-3)),
    ("identity-args", lambda nn: nn.Identity(3, 4, bias=True)),
    ("linear", lambda nn: nn.Linear(28, 56)),
    ("linear-nobias", lambda nn: nn.Linear(3, 2, bias=False)),
    ("flatten", lambda nn: nn.Flatten()),
    ("flatten-0-2", lambda nn: nn.Flatten(0, 2)),
    ("crossentropy", lambda nn: nn.CrossEntropyLoss()),
    ("crossentropy-sum-ignore", lambda nn: nn.CrossEntropyLoss(ignore_index=3, reduction="sum")),
    ("crossentropy-smoothing", lambda nn: nn.CrossEntropyLoss(label_smoothing=0.1, reduction="none")),
    ("module", lambda nn: nn.Module()),
    ("sequential-empty", lambda nn: nn.Sequential()),
    ("sequential-nested", lambda nn: nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()),
                                                   nn.Sequential(nn.Sequential(nn.Flatten())), nn.Linear(2, 3))),
]


@pytest.mark.parametrize("build", [pytest.param(b, id=i) for i, b in REPR_CASES]
                         + [pytest.param(b, id=f"layer-{i}") for i, b, _, _ in LAYER_CASES])
def test_repr_matches_torch(build):
    assert repr(build(nt_nn)) == repr(build(torch.nn))


def test_seed_model_repr_is_torchs():
    """The whole MNIST model prints as the same torch.nn.Sequential; each block is a ConvBNGELU,
    which is the Sequential of its three children (and says so by its own name)."""
    ours, theirs = build_model(), torch_seed_model()
    assert repr(ours).replace("ConvBNGELU(", "Sequential(") == repr(theirs)
    for block, block_t in zip(ours, theirs):
        assert [repr(m) for m in block.children()] == [repr(m) for m in block_t.children()]


def boxed(nn, extra):
    """A Module with a hand-written extra_repr and two children, one of them multi-line."""
    class Box(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)
            self.seq = nn.Sequential(nn.ReLU(), nn.GELU())

        def extra_repr(self):
            return extra
    return Box()


@pytest.mark.parametrize("extra", ["", "a=1", "a=1\nb=2", "a=1\n\nb=2\n   \nc=3"])
def test_extra_repr_beside_children_and_on_several_lines_is_printed_as_torch(extra):
    ours, theirs = boxed(nt_nn, extra), boxed(torch.nn, extra)
    assert repr(ours) == repr(theirs)
    assert repr(nt_nn.Sequential(ours)) == repr(torch.nn.Sequential(theirs))     # indented, blank lines kept empty
    leaf = lambda nn: type("Leaf", (nn.Module,), {"extra_repr": lambda self: extra})()   # noqa: E731
    assert repr(leaf(nt_nn)) == repr(leaf(torch.nn))


def test_repr_after_attributes_are_set_is_torchs():
    """The repr reads the attributes as they are now, as PyTorch's does."""
    def build(nn):
        same, same_unpadded = nn.Conv2d(1, 2, 3, padding="same"), nn.Conv2d(1, 2, 3, padding="same")
        bn, pool, drop = nn.BatchNorm2d(2, eps=1), nn.MaxPool2d(2), nn.Dropout()
        same.bias, same_unpadded.padding, bn.eps, pool.kernel_size, drop.p = None, (0, 0), 1e-3, 3, 0.25
        return nn.Sequential(same, same_unpadded, bn, pool, drop)
    assert repr(build(nt_nn)) == repr(build(torch.nn))


def test_pooling_and_dropout_keep_their_arguments_as_given_like_torch():
    builds = [lambda nn: nn.MaxPool2d(2), lambda nn: nn.MaxPool2d((2, 3), 1, 1, ceil_mode=1),
              lambda nn: nn.AdaptiveAvgPool2d(1), lambda nn: nn.AdaptiveAvgPool2d([1, 2]),
              lambda nn: nn.Dropout(0), lambda nn: nn.Dropout(np.float32(0.25)),
              lambda nn: nn.BatchNorm1d(3, eps=1, momentum=None)]
    names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "output_size", "p", "inplace",
             "eps", "momentum", "affine", "track_running_stats"]
    for build in builds:
        ours, theirs = build(nt_nn), build(torch.nn)
        for name in names:
            if hasattr(theirs, name):
                assert getattr(ours, name) == getattr(theirs, name), f"{theirs}: {name}"


def test_pooling_attributes_set_after_construction_are_used_like_torchs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 8))
    for build, changes in [(lambda nn: nn.MaxPool2d(2), dict(kernel_size=3, stride=(2, 1), padding=1)),
                           (lambda nn: nn.AdaptiveAvgPool2d(1), dict(output_size=(2, 3)))]:
        ours, theirs = build(nt_nn), build(torch.nn)
        for name, value in changes.items():
            setattr(ours, name, value)
            setattr(theirs, name, value)
        out = ours(x)
        close(out, theirs(torch.from_numpy(x)), f"{theirs}")
        g = rng.standard_normal(out.shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        theirs(xt).backward(torch.from_numpy(g))
        close(ours.backward(g), xt.grad, f"grad_input of {theirs}")


def test_arguments_set_after_construction_are_checked_when_used():
    """What a forward reads is checked when it reads it: a value set later that nanotorch does not
    implement is refused, as at construction, never printed and ignored; other types are refused
    as at construction; stride None is the kernel size, as in PyTorch."""
    x = np.zeros((1, 1, 6, 6), np.float32)
    for name, value, shown in (("dilation", 2, "(2, 2)"), ("return_indices", True, "True")):
        pool = nt_nn.MaxPool2d(2)
        pool(x)
        setattr(pool, name, value)
        with pytest.raises(NotImplementedError, match=rf"{name}={re.escape(shown)} is not implemented"):
            pool(x)
    pool = nt_nn.MaxPool2d(2)
    pool(x)
    pool.kernel_size = 2.0                      # equal to 2, but a float: refused, as MaxPool2d(2.0) is
    with pytest.raises(ValueError, match="kernel_size must be an int"):
        pool(x)
    pool = nt_nn.MaxPool2d(3, stride=1)
    pool.stride = None
    assert pool(x).shape == torch.nn.MaxPool2d(3, stride=None)(torch.from_numpy(x)).shape == (1, 1, 2, 2)
    drop = nt_nn.Dropout(0.5)
    drop.inplace = True
    with pytest.raises(NotImplementedError, match="inplace=True is not implemented"):
        drop(x)
    drop.inplace, drop.p = False, 1.5
    with pytest.raises(ValueError, match="p must be a probability"):
        drop(x)


@pytest.mark.parametrize("build, name, value, error, message", [
    (lambda nn: nn.Conv2d(1, 2, 3), "dilation", (2, 2), NotImplementedError, r"dilation=\(2, 2\) is not implemented"),
    (lambda nn: nn.Conv2d(1, 2, 3), "groups", 2, ValueError, r"groups must be .* divides in_channels \(1\)"),
    (lambda nn: nn.Conv2d(1, 2, 3), "padding_mode", "reflect", NotImplementedError, "padding_mode='reflect'"),
    (lambda nn: nn.Conv2d(1, 2, 3), "padding", "full", ValueError, "padding must be an int, a pair of ints"),
    (lambda nn: nn.Conv2d(1, 2, 3), "kernel_size", (5, 5), ValueError, r"kernel_size \(5, 5\) does not match"),
    (lambda nn: nn.BatchNorm2d(1), "track_running_stats", False, NotImplementedError, "track_running_stats=False"),
    (lambda nn: nn.BatchNorm2d(1), "running_mean", None, NotImplementedError, "running statistics set to None"),
    (lambda nn: nn.GELU(), "approximate", "erf", ValueError, "approximate must be 'none' or 'tanh'"),
    (lambda nn: nn.ReLU(), "inplace", True, NotImplementedError, "inplace=True is not implemented"),
])
def test_layer_arguments_set_after_construction_are_refused_when_not_implemented(build, name, value, error, message):
    """As MaxPool2d's and Dropout's above: each layer reads its arguments when it runs, so a value
    that nanotorch does not implement is refused there, never ignored (PyTorch would use it)."""
    x = np.ones((2, 1, 5, 5), np.float32)
    layer = build(nt_nn)
    layer(x)
    setattr(layer, name, value)
    with pytest.raises(error, match=message):
        layer(x)


@pytest.mark.parametrize("name, value", [("stride", 2), ("stride", (2, 1)), ("padding", 2), ("padding", [0, 1]),
                                         ("padding", "same"), ("padding", "valid")])
def test_conv_stride_and_padding_set_after_construction_are_used_like_torchs(name, value):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 7, 9))
    ours, theirs = make_pair(lambda nn: nn.Conv2d(2, 3, 3, padding=1), rng)
    setattr(ours, name, value)
    setattr(theirs, name, value)
    out = ours(x)
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = theirs(xt)
    close(out, out_t, f"{name}={value}")
    g = rng.standard_normal(out.shape)
    out_t.backward(torch.from_numpy(g))
    close(ours.backward(g), xt.grad, f"grad_input, {name}={value}")
    close(ours.weight.grad, theirs.weight.grad, f"grad_weight, {name}={value}")
    if not (name == "padding" and isinstance(value, int)):       # (PyTorch's repr fails on an int padding)
        assert repr(ours) == repr(theirs)


def test_conv_keeps_its_arguments_as_torch_keeps_them():
    for build in (lambda nn: nn.Conv2d(1, 2, 3, padding="same"), lambda nn: nn.Conv2d(1, 2, (3, 1), 2, "valid"),
                  lambda nn: nn.Conv2d(1, 2, 3, padding=[1, 0])):
        ours, theirs = build(nt_nn), build(torch.nn)
        for name in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
            assert getattr(ours, name) == getattr(theirs, name), f"{theirs}: {name}"


def test_cross_entropy_arguments_set_after_construction_are_checked_when_used():
    logits, targets = np.zeros((3, 4), np.float32), np.array([0, 1, 2])
    for name, value, error, message in (("label_smoothing", 1.2, ValueError, r"label_smoothing .*\[0, 1\].* 1\.2"),
                                        ("weight", np.ones(5, np.float32), ValueError, r"weight .*\(4,\).*\(5,\)"),
                                        ("reduction", "bogus", ValueError, "reduction must be"),
                                        ("ignore_index", 1.5, TypeError, "ignore_index must be an int")):
        ours, theirs = nt_nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
        assert getattr(ours, name) == getattr(theirs, name) if name != "weight" else ours.weight is theirs.weight
        setattr(ours, name, value)
        with pytest.raises(error, match=message):
            ours(logits, targets)
    ours = nt_nn.CrossEntropyLoss()
    ours(logits, targets)
    ours.reduction = "none"                     # the backward is the forward's: mean
    np.testing.assert_allclose(ours.backward(), (np.full((3, 4), 0.25) - np.eye(4)[targets]) / 3, rtol=1e-6)


def test_cross_entropy_weight_and_smoothing_set_after_construction_are_used_like_torchs(rng):
    logits, targets = rng.standard_normal((3, 4)), np.array([0, 1, 3])
    weight = rng.uniform(0.5, 2.0, 4)
    ours, theirs = nt_nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    ours(logits, targets)
    ours.weight, ours.label_smoothing = weight, 0.2
    theirs.weight, theirs.label_smoothing = torch.from_numpy(weight), 0.2
    zt = torch.from_numpy(logits.copy()).requires_grad_(True)
    loss_t = theirs(zt, torch.from_numpy(targets))
    loss_t.backward()
    close(ours(logits, targets), loss_t, "loss")
    close(ours.backward(), zt.grad, "d loss / d logits")


def test_sgd_refuses_differentiable_set_in_a_group_since():
    p = nt_nn.Parameter(np.ones(2))
    opt = nanotorch.optim.SGD([p], lr=0.1)
    opt.param_groups[0]["differentiable"] = True
    p.grad = np.ones(2)
    with pytest.raises(NotImplementedError, match="differentiable=True is not implemented"):
        opt.step()
    opt.param_groups[0]["lr"] = -1.85e-18             # (LinearLR's end at end_factor=0): still the flag, not the lr
    with pytest.raises(NotImplementedError, match="differentiable=True is not implemented"):
        opt.step()
    assert (p.data == 1).all()


def test_sgd_takes_named_parameters_as_torch():
    ours, theirs = nt_nn.Linear(2, 3), torch.nn.Linear(2, 3)
    kwargs = dict(lr=0.1, momentum=0.9)
    opt, opt_t = nanotorch.optim.SGD(ours.named_parameters(), **kwargs), torch.optim.SGD(theirs.named_parameters(),
                                                                                           **kwargs)
    assert opt.state_dict()["param_groups"] == opt_t.state_dict()["param_groups"]      # param_names among them
    assert opt.param_groups[0]["params"] == list(ours.parameters())


# --- Module's bookkeeping --------------------------------------------------------------------------------
@pytest.mark.parametrize("args, kwargs, dtype", [
    ((np.float64,), {}, np.float64), (("float64",), {}, np.float64), ((torch.float64,), {}, np.float64),
    (("cpu",), {}, np.float32), (("cpu", np.float64), {}, np.float64), ((torch.device("cpu"),), {}, np.float32),
    ((), dict(dtype=torch.float64, non_blocking=True), np.float64), ((), dict(device="cpu"), np.float32),
    (("cpu:0",), {}, np.float32), ((torch.device("cpu", 0), torch.float64, True), {}, np.float64)])
def test_module_to_takes_torchs_call_forms(args, kwargs, dtype):
    ours, theirs = nt_nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    as_torch = {np.float64: torch.float64, "float64": torch.float64}      # (NumPy's dtypes are ours alone)
    assert ours.to(*args, **kwargs) is ours
    assert theirs.to(*[as_torch.get(a, a) if isinstance(a, (type, str)) else a for a in args], **kwargs) is theirs
    assert ours.weight.dtype == ours.running_mean.dtype == dtype and ours.num_batches_tracked.dtype == np.int64
    assert str(theirs.weight.dtype) == f"torch.{np.dtype(dtype)}"


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((np.int32,), {}, TypeError, "dtype must be float32 or float64"), ((np.float16,), {}, TypeError, "float32 or"),
    (("cuda",), {}, NotImplementedError, "device='cuda' is not implemented"), (("cpu", "cpu"), {}, TypeError, "two"),
    ((np.ones(2),), {}, NotImplementedError, r"to\(tensor\) is not implemented"),
    ((), dict(memory_format=torch.channels_last), NotImplementedError, "memory_format=")])
def test_module_to_refuses_what_nanotorch_cannot_run(args, kwargs, error, message):
    layer = nt_nn.Linear(3, 2)
    before = layer.weight.data.copy()
    with pytest.raises(error, match=message):
        layer.to(*args, **kwargs)
    assert layer.weight.data.dtype == np.float32 and (layer.weight.data == before).all()


def test_cpu_is_the_module_itself_and_cuda_is_refused():
    ours, theirs = nt_nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert ours.cpu() is ours and theirs.cpu() is theirs and ours.weight.dtype == np.float32
    for args in ((), (0,), ("cuda:1",)):
        with pytest.raises(NotImplementedError, match="device='cuda.*' is not implemented in nanotorch"):
            ours.cuda(*args)


def test_buffers_none_and_not_persistent_are_left_out_as_torchs():
    def build(nn, array):
        m = nn.Linear(2, 2)
        m.register_buffer("nothing", None)
        m.register_buffer("scratch", array(np.zeros(2)), persistent=False)
        m.register_buffer("kept", array(np.ones(2)))
        return m
    ours, theirs = build(nt_nn, np.asarray), build(torch.nn, torch.from_numpy)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias", "kept"]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()] == ["scratch", "kept"]
    assert ours.double().scratch.dtype == np.float64 and ours.nothing is None
    assert ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()}) == ([], [])


def test_named_parameters_and_buffers_of_shared_modules_follow_remove_duplicate_as_torchs():
    def build(nn):
        box = nn.Module()
        box.a = box.b = nn.Linear(2, 2)             # one module under two names
        box.bn = box.c = nn.BatchNorm1d(2)
        box.tied = box.a.weight                     # one Parameter under two names
        return box
    ours, theirs = build(nt_nn), build(torch.nn)
    for remove_duplicate in (True, False):
        for listing in ("named_parameters", "named_buffers"):
            names = [n for n, _ in getattr(ours, listing)(remove_duplicate=remove_duplicate)]
            assert names == [n for n, _ in getattr(theirs, listing)(remove_duplicate=remove_duplicate)], listing


def test_register_buffer_refuses_a_name_taken_as_torchs():
    for nn in (nt_nn, torch.nn):
        with pytest.raises(KeyError, match="attribute 'weight' already exists"):
            nn.Linear(2, 2).register_buffer("weight", None)


def test_register_buffer_refuses_a_name_torch_refuses():
    """A dotted name would be read as a child's in a state_dict key; an empty one names nothing."""
    for nn, array in ((nt_nn, np.zeros(1)), (torch.nn, torch.zeros(1))):
        for name in ("a.b", ""):
            with pytest.raises(KeyError):
                nn.Linear(2, 2).register_buffer(name, array)
        with pytest.raises(TypeError):
            nn.Linear(2, 2).register_buffer(3, array)


def test_conv_weight_replaced_by_one_of_another_kernel_size_is_refused():
    conv = nt_nn.Conv2d(1, 1, 3)
    conv.weight = nt_nn.Parameter(np.ones((1, 1, 1, 9), np.float32))   # PyTorch would convolve 1x9
    with pytest.raises(ValueError, match=r"kernel_size \(3, 3\) does not match the weight's \(1, 9\)"):
        conv(np.ones((1, 1, 9, 9), np.float32))


def test_conv_padding_list_changed_in_place_is_used_like_torchs():
    class Pair(list):
        pass
    x = np.ones((1, 1, 5, 5))
    for padding in ([0, 0], Pair([0, 0])):
        ours, theirs = nt_nn.Conv2d(1, 1, 3).double(), torch.nn.Conv2d(1, 1, 3).double()
        ours.padding, theirs.padding = padding, list(padding)
        assert ours(x).shape == (1, 1, 3, 3)
        ours.padding[0] = theirs.padding[0] = 2
        assert ours(x).shape == tuple(theirs(torch.from_numpy(x)).shape) == (1, 1, 7, 3)


def test_optimizer_param_names_as_torchs():
    ours, theirs = nt_nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for nn, layer, optim in ((nt_nn, ours, nanotorch.optim), (torch.nn, theirs, torch.optim)):
        with pytest.raises(ValueError, match="with/without names|with names .* or all without"):
            optim.SGD([{"params": [layer.weight]}, {"params": [("bias", layer.bias)]}], lr=0.1)
        named = optim.SGD(layer.named_parameters(), lr=0.1)
        named.load_state_dict(optim.SGD(layer.parameters(), lr=0.1).state_dict())    # an unnamed state
        assert named.param_groups[0]["param_names"] == ["weight", "bias"]


def test_load_state_dict_refuses_what_torch_refuses():
    layer = nt_nn.Linear(2, 2)
    with pytest.raises(TypeError, match="expected a dict-like state_dict"):
        layer.load_state_dict([("weight", np.zeros((2, 2)))])
    with pytest.raises(NotImplementedError, match="assign=True is not implemented"):
        layer.load_state_dict(layer.state_dict(), assign=True)


def test_load_state_dict_lists_unexpected_keys_in_torchs_order():
    """Each unexpected key is reported by the module its leading names reach, modules visited
    depth first: not in the state_dict's order."""
    def model(n):
        return n.Sequential(n.Linear(2, 2), n.Sequential(n.Linear(2, 2), n.BatchNorm1d(2)))
    extra = ["1.1.zzz", "top", "1.aaa", "0.bbb", "7.x", "0.weight.q", "1.0.c"]
    ours, theirs = model(nt_nn), model(torch.nn)
    got = ours.load_state_dict({**{k: np.zeros(1) for k in extra}, **ours.state_dict()}, strict=False)
    want = theirs.load_state_dict({**{k: torch.zeros(1) for k in extra}, **theirs.state_dict()}, strict=False)
    assert got.unexpected_keys == want.unexpected_keys == ["top", "7.x", "0.bbb", "0.weight.q", "1.aaa", "1.0.c",
                                                           "1.1.zzz"]
    assert got.missing_keys == want.missing_keys == []


def test_load_state_dict_passes_over_keys_under_a_child_set_to_none():
    """A key whose first name is a child's is the child's to judge (torch's _load_from_state_dict), and
    a child slot holding None judges nothing: its keys are neither loaded nor unexpected, at any depth.
    The other keys are listed in torch's order, and state_dict, named_parameters, named_buffers and
    named_modules skip the empty slots, as torch's do."""
    def model(n):
        m = n.Sequential(n.Linear(2, 2), n.Sequential(n.Linear(2, 2), n.BatchNorm1d(2)), n.Linear(2, 2))
        setattr(m[1], "0", None)
        setattr(m, "2", None)
        return m
    ours, theirs = model(nt_nn), model(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "0.weight", "0.bias", "1.1.weight", "1.1.bias", "1.1.running_mean", "1.1.running_var",
        "1.1.num_batches_tracked"]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()] == ["", "0", "1", "1.1"]
    extra = ["2.weight", "1.zzz", "1.0.bias", "2", "1.0.x.y", "3.weight", "top", "1.1.q", "0.weight.q", "2.a.b"]
    state_ours, state_theirs = ours.state_dict(), theirs.state_dict()
    for state in (state_ours, state_theirs):
        del state["1.1.running_var"]
    got = ours.load_state_dict({**{k: np.zeros(1) for k in extra}, **state_ours}, strict=False)
    want = theirs.load_state_dict({**{k: torch.zeros(1) for k in extra}, **state_theirs}, strict=False)
    assert got.unexpected_keys == want.unexpected_keys == ["2", "3.weight", "top", "0.weight.q", "1.zzz", "1.1.q"]
    assert got.missing_keys == want.missing_keys == ["1.1.running_var"]
    state_ours["1.1.running_var"], state_theirs["1.1.running_var"] = np.ones(2), torch.ones(2)
    ours.load_state_dict({**state_ours, "2.weight": np.zeros(1), "1.0.bias": np.zeros(1)})           # strict
    theirs.load_state_dict({**state_theirs, "2.weight": torch.zeros(1), "1.0.bias": torch.zeros(1)})


def test_parameter_takes_torchs_arguments():
    assert nt_nn.Parameter().shape == tuple(torch.nn.Parameter().shape) == (0,)
    for flag in (True, False):
        assert nt_nn.Parameter(np.ones(2), requires_grad=flag).requires_grad is flag \
            is torch.nn.Parameter(torch.ones(2), requires_grad=flag).requires_grad


def test_no_grad_is_a_decorator_and_a_reusable_context():
    """As PyTorch's, but one instance entered in itself restores the mode when the outer block
    closes (PyTorch's leaves gradients off), and the mode is the process's (see grad_mode.py)."""
    enabled = nanotorch.grad_mode.is_grad_enabled

    @nanotorch.no_grad
    def bare():
        return enabled()

    @nanotorch.no_grad()
    def called():
        return enabled()

    assert bare.__name__ == "bare" and not bare() and not called() and enabled()
    context = nanotorch.no_grad()
    for _ in range(2):
        with context:
            with context:                       # nested in itself: each exit restores what its entry found
                assert not enabled()
            assert not enabled()
        assert enabled()
    with pytest.raises(TypeError, match="cannot decorate the generator function"):
        @nanotorch.no_grad
        def batches():
            yield enabled()


def test_no_grad_calls_overlapping_in_threads_nest():
    """Two decorated calls in two threads, the second starting inside the first and ending after
    it: each runs without gradients, and they are back once both are done."""
    import threading
    first_inside, second_inside = threading.Event(), threading.Event()
    enabled, seen = nanotorch.grad_mode.is_grad_enabled, {}

    @nanotorch.no_grad
    def first():
        first_inside.set()
        second_inside.wait(5)
        seen["first"] = enabled()

    @nanotorch.no_grad
    def second():
        first_inside.wait(5)
        second_inside.set()
        t.join(5)                               # the first has closed its block
        seen["second"] = enabled()

    t = threading.Thread(target=first)
    t.start()
    second()
    assert seen == {"first": False, "second": False} and enabled()


def test_reprs_follow_attributes_set_to_equal_values_like_torchs():
    def build(nn):
        bn, conv = nn.BatchNorm2d(2, eps=1), nn.Conv2d(1, 2, 3, padding="same")
        bn.eps, conv.padding = 1.0, (1, 1)
        return nn.Sequential(bn, conv)
    assert repr(build(nt_nn)) == repr(build(torch.nn))
    assert nt_nn.BatchNorm2d(2, eps=1).eps == 1 and type(nt_nn.BatchNorm2d(2, eps=1).eps) is int


# --- modes and identities --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["no", 1, 0, None, 1.0, "train"])
def test_train_with_a_non_bool_mode_is_a_value_error_as_torchs(mode):
    for model in (nt_nn.Sequential(nt_nn.Linear(2, 2)), torch.nn.Sequential(torch.nn.Linear(2, 2))):
        with pytest.raises(ValueError, match="training mode is expected to be boolean"):
            model.train(mode)
        assert model.training and model[0].training            # left as it was


@pytest.mark.parametrize("p, shape", [(0.0, (3, 4)), (0, (2, 3, 4, 5)), (0.5, (0, 4)), (1.0, (3, 0, 2))])
def test_dropout_that_drops_nothing_returns_its_input_itself_as_torch(p, shape):
    """p=0 (or an empty input) in training: PyTorch returns the input tensor itself, not a copy;
    the gradient passes through unchanged."""
    rng = np.random.default_rng(4)
    ours, theirs = nt_nn.Dropout(p).train(), torch.nn.Dropout(p).train()
    x = rng.standard_normal(shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    y, yt = ours(x), theirs(xt)
    assert yt is xt and y is x
    g = rng.standard_normal(shape)
    yt.backward(torch.from_numpy(g))
    close(ours.backward(g), xt.grad, "grad_input")


# --- default initialisation -------------------------------------------------------------------------------
@pytest.mark.parametrize("build, fan_in", [
    pytest.param(lambda nn: nn.Conv2d(16, 32, 3), 16 * 9, id="conv-16-32-k3"),
    pytest.param(lambda nn: nn.Conv2d(1, 400, (2, 3)), 6, id="conv-1-400-k2x3"),
    pytest.param(lambda nn: nn.Linear(28, 56), 28, id="linear-28-56"),
    pytest.param(lambda nn: nn.Linear(300, 40), 300, id="linear-300-40"),
    pytest.param(lambda nn: nn.Linear(1, 2000), 1, id="linear-1-2000"),
    pytest.param(lambda nn: nn.Linear(300, 1000), 300, id="linear-300-1000"),
])
def test_default_init_is_uniform_within_one_over_sqrt_fan_in(build, fan_in):
    """Weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch's: inside the bound and, with
    enough values to tell, filling it."""
    bound = 1.0 / np.sqrt(fan_in)
    nanotorch.manual_seed(7)
    torch.manual_seed(7)
    for layer, lib in ((build(nt_nn), "nanotorch"), (build(torch.nn), "torch")):
        w = layer.weight.data if lib == "nanotorch" else layer.weight.detach().numpy()
        assert w.dtype == np.float32, f"{lib}: default dtype {w.dtype}"
        assert np.abs(w).max() <= bound * (1 + 1e-6), f"{lib}: weight beyond the bound {bound}"
        assert w.max() > 0.97 * bound and w.min() < -0.97 * bound, f"{lib}: weight does not fill +-{bound}"
        # U(-b, b): mean 0, std b / sqrt(3)
        assert abs(w.mean()) < 0.1 * bound, lib
        assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.1, f"{lib}: std {w.std()}"
        b = layer.bias.data if lib == "nanotorch" else layer.bias.detach().numpy()
        assert np.abs(b).max() <= bound * (1 + 1e-6), f"{lib}: bias beyond the bound {bound}"
        assert np.unique(b).size == b.size, f"{lib}: bias is not random"
        if b.size >= 400:                                 # (enough values to fill the bound)
            assert b.max() > 0.95 * bound and b.min() < -0.95 * bound, f"{lib}: bias does not fill +-{bound}"
            assert abs(b.std() / (bound / np.sqrt(3)) - 1) < 0.1, f"{lib}: bias std {b.std()}"


@pytest.mark.parametrize("build", [
    pytest.param(lambda nn: nn.BatchNorm1d(3), id="bn1d"),
    pytest.param(lambda nn: nn.BatchNorm2d(4), id="bn2d"),
    pytest.param(lambda nn: nn.BatchNorm2d(2, bias=False), id="bn2d-nobias"),
    pytest.param(lambda nn: nn.BatchNorm2d(2, affine=False), id="bn2d-noaffine"),
])
def test_batchnorm_default_parameters_and_buffers_are_torchs(build):
    """As built, before any forward: weight ones, bias zeros, running mean zeros, running var ones,
    count 0, in torch's dtypes (make_pair randomises them, so the layer tests never see these)."""
    ours, theirs = build(nt_nn).state_dict(), build(torch.nn).state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert ours[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


@pytest.mark.parametrize("build", [lambda nn: nn.BatchNorm1d(3, momentum=0.0), lambda nn: nn.BatchNorm1d(3, momentum=None)],
                         ids=["momentum-0", "momentum-None"])
def test_batchnorm_momentum_zero_keeps_the_running_statistics_and_none_averages_them_as_torchs(build):
    """momentum=0.0 is a factor of 0 (the running statistics never move), not the cumulative average
    that momentum=None asks for."""
    ours, theirs = build(nt_nn), build(torch.nn)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.standard_normal((5, 3)) * 2 + 1).astype(np.float32)
        ours(x), theirs(torch.from_numpy(x.copy()))
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-6, atol=1e-7, err_msg=k)


def test_dropout_of_everything_multiplies_by_zero_as_torch():
    """p=1 in training is x * 0, as PyTorch computes it: NaN and +-inf give NaN, negatives -0.0."""
    x = np.array([[np.nan, np.inf, -np.inf, -1.0, 2.0]], np.float32)
    expected = torch.nn.Dropout(1.0)(torch.from_numpy(x.copy())).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # (no NumPy warning at nan * 0 and inf * 0, as torch)
        y = nt_nn.Dropout(1.0)(x)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(expected))


def test_module_to_casts_gradients_and_float_undoes_double_as_torchs():
    """to / double / float cast parameters, their gradients and floating buffers, as torch's _apply does."""
    nanotorch.manual_seed(0)
    ours = nt_nn.Sequential(nt_nn.Linear(3, 2), nt_nn.BatchNorm1d(2))
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    theirs.load_state_dict(torch_state(ours))
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    ours(x)
    ours.backward(g.copy())
    theirs(torch.from_numpy(x)).backward(torch.from_numpy(g))
    for convert in ("double", "float"):
        getattr(ours, convert)(), getattr(theirs, convert)()
        want = np.float64 if convert == "double" else np.float32
        for (name, p), (_, pt) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert p.data.dtype == p.grad.dtype == pt.grad.numpy().dtype == want, (convert, name)
            np.testing.assert_allclose(p.grad, pt.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{convert}: grad of {name}")
        for (name, b), (_, bt) in zip(ours.named_buffers(), theirs.named_buffers()):
            assert b.dtype == bt.numpy().dtype, (convert, name)


def test_a_buffer_registered_again_as_persistent_is_saved_as_torchs():
    ours, theirs = nt_nn.Module(), torch.nn.Module()
    ours.register_buffer("x", np.zeros(1), persistent=False)
    theirs.register_buffer("x", torch.zeros(1), persistent=False)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == []
    ours.register_buffer("x", np.ones(1))
    theirs.register_buffer("x", torch.ones(1))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["x"]
    ours.register_buffer("x", np.ones(1), persistent=False)
    theirs.register_buffer("x", torch.ones(1), persistent=False)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == []


def test_torch_dtypes_are_understood_by_name():
    assert nt_nn.Linear(2, 3, dtype=torch.float64).weight.dtype == np.float64
    with pytest.raises(TypeError, match="torch.float16"):
        nt_nn.Conv2d(1, 2, 3, dtype=torch.float16)


def test_sgd_param_groups_have_torchs_keys_and_a_torch_state_dict_survives_a_checkpoint():
    """PyTorch's SGD groups hold foreach=None and fused=None: a state_dict of theirs loads, and
    goes through the pickle-free checkpoint format (None leaves) and back."""
    from nanotorch.optim import flatten_state_dict, unflatten_state_dict
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    ours = nanotorch.optim.SGD([nt_nn.Parameter(np.zeros(3, np.float32))], lr=0.1, momentum=0.9)
    assert set(ours.state_dict()["param_groups"][0]) == set(theirs.state_dict()["param_groups"][0])
    ours.load_state_dict({"state": {}, "param_groups": theirs.state_dict()["param_groups"]})
    back = unflatten_state_dict(flatten_state_dict(ours.state_dict()))
    assert back["param_groups"] == theirs.state_dict()["param_groups"]


# --- the module tree, parameter groups and seeds: from a parity audit against torch 2.13 ---------------------
def names(pairs):
    return [n for n, _ in pairs]


def tree(m):
    """What a model holds: its state_dict keys and its named parameters, buffers and modules."""
    return list(m.state_dict()), names(m.named_parameters()), names(m.named_buffers()), names(m.named_modules())


def test_a_module_under_two_names_is_one_child_as_torchs():
    def build(nn):
        box = nn.Module()
        box.a = box.b = nn.Linear(2, 2)
        box.c, box.d = nn.ReLU(), None
        return box
    ours, theirs = build(nt_nn), build(torch.nn)
    assert names(ours.named_children()) == names(theirs.named_children()) == ["a", "c"]
    assert len(list(ours.children())) == len(list(theirs.children())) == 2
    assert len(list(ours.modules(remove_duplicate=False))) == len(list(theirs.modules(remove_duplicate=False))) == 4
    for memo_and_prefix in ((None, "top"), ({ours.c},)):        # named_modules(memo, prefix, remove_duplicate)
        theirs_args = tuple({theirs.c} if isinstance(a, set) else a for a in memo_and_prefix)
        assert names(ours.named_modules(*memo_and_prefix)) == names(theirs.named_modules(*theirs_args))


def test_train_and_eval_call_each_childs_own_train_as_torchs():
    """A child that overrides train() (a BatchNorm kept frozen) is asked through it, as PyTorch asks."""
    def build(nn):
        class FrozenBatchNorm(nn.BatchNorm1d):
            def train(self, mode=True):
                return super().train(False)
        return nn.Sequential(nn.Linear(2, 2), nn.Sequential(FrozenBatchNorm(2)))
    ours, theirs = build(nt_nn), build(torch.nn)
    for switch in (lambda m: m.train(), lambda m: m.eval(), lambda m: m.train(True)):
        assert switch(ours) is ours and switch(theirs) is theirs
        assert [m.training for m in ours.modules()] == [m.training for m in theirs.modules()]
    assert not ours[1][0].training


def test_deleting_a_parameter_buffer_or_child_unregisters_it_as_torchs():
    def build(nn):
        conv, bn, seq = nn.Conv2d(1, 2, 3), nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        del conv.bias, bn.running_mean, seq[0].weight
        delattr(seq, "1")
        return nn.Sequential(conv, bn, seq)
    ours, theirs = build(nt_nn), build(torch.nn)
    assert tree(ours) == tree(theirs)
    assert len(ours[2]) == len(theirs[2]) == 1
    for m in (ours[0], theirs[0]):
        with pytest.raises(AttributeError, match="bias"):
            m.bias


def test_an_attribute_given_a_value_of_another_kind_changes_registry_as_torchs():
    """A Parameter set where a buffer or a child was replaces it; a Module set where a buffer was, too;
    a buffer set to anything but an array (or None) is refused."""
    def build(nn, array):
        bn, seq, lin = nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2)
        bn.running_mean = nn.Parameter(array(np.zeros(2, np.float32)))
        seq.__setattr__("0", nn.Parameter(array(np.ones(2, np.float32))))
        lin.register_buffer("extra", array(np.zeros(1, np.float32)))
        lin.extra = nn.ReLU()
        return nn.Sequential(bn, seq, lin)
    ours, theirs = build(nt_nn, np.asarray), build(torch.nn, torch.from_numpy)
    assert tree(ours) == tree(theirs)
    assert theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}) == ([], [])
    for nn, array in ((nt_nn, np.zeros), (torch.nn, torch.zeros)):
        lin = nn.Linear(2, 2)
        lin.register_buffer("extra", array(1))
        with pytest.raises(TypeError, match="cannot assign 'list' as buffer 'extra'"):
            lin.extra = [1.0]
        lin.extra = None                          # (None keeps the name with nothing under it)
        assert "extra" not in lin.state_dict()


def test_apply_and_requires_grad_as_torchs():
    def build(nn):
        shared, box = nn.Linear(2, 2), nn.Module()
        box.first, box.head, box.again = nn.Sequential(shared, nn.ReLU()), nn.Linear(2, 1), shared
        box.second = nn.Sequential(shared)
        return box
    ours, theirs = build(nt_nn), build(torch.nn)
    visits = {}
    for model in (ours, theirs):
        seen = visits[model is ours] = []
        assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    assert visits[True] == visits[False]                       # children first; a shared child each time it is met
    assert ours.requires_grad_() is ours and theirs.requires_grad_() is theirs
    assert all(p.requires_grad for p in ours.parameters())
    assert ours.head.requires_grad_(False) is ours.head and theirs.head.requires_grad_(False) is theirs.head
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()] \
        == [True, True, False, False]


def test_a_set_of_parameters_in_a_group_is_refused_as_torch():
    """A set has no fixed order, so the indices of a saved state_dict would mean other parameters
    in another run: refused in a group, as PyTorch refuses it (a set as ``params`` itself is taken
    as a list by both)."""
    for make, optim in ((lambda: nt_nn.Parameter(np.zeros(2)), nanotorch.optim),
                        (lambda: torch.nn.Parameter(torch.zeros(2)), torch.optim)):
        with pytest.raises(TypeError, match="ordered collections"):
            optim.SGD([{"params": {make(), make()}}], lr=0.1)
        opt = optim.SGD([make()], lr=0.1)
        with pytest.raises(TypeError, match="ordered collections"):
            opt.add_param_group({"params": {make()}})


def test_sgd_checks_nesterov_where_torch_does_so_a_checkpoint_at_zero_momentum_loads():
    """PyTorch checks nesterov's momentum > 0 on the constructor's arguments only. OneCycleLR with
    base_momentum=0 sets momentum 0 at the peak: a checkpoint taken there loads and continues as
    PyTorch's run; a group of its own with momentum 0 runs plain SGD."""
    rng = np.random.default_rng(8)
    start, grads = rng.standard_normal(5), rng.standard_normal((10, 5))
    kwargs = dict(max_lr=0.1, total_steps=10, pct_start=0.5, base_momentum=0.0)

    def run(make, optim, tensor, resume_at=None):
        p = make(start.copy())
        opt = optim.SGD([p], lr=0.01, momentum=0.9, nesterov=True)
        sched = optim.lr_scheduler.OneCycleLR(opt, **kwargs)
        for t, g in enumerate(grads):
            if t == resume_at:
                assert opt.param_groups[0]["momentum"] == 0.0
                saved, saved_sched = opt.state_dict(), sched.state_dict()
                opt = optim.SGD([p], lr=0.01, momentum=0.9, nesterov=True)
                sched = optim.lr_scheduler.OneCycleLR(opt, **kwargs)
                opt.load_state_dict(saved)
                sched.load_state_dict(saved_sched)
            p.grad = tensor(g.copy())
            opt.step()
            sched.step()
        return np.asarray(p.data if isinstance(p, nt_nn.Parameter) else p.detach().numpy())
    ours = run(nt_nn.Parameter, nanotorch.optim, np.asarray, resume_at=4)
    theirs = run(lambda a: torch.tensor(a, requires_grad=True), torch.optim, torch.from_numpy)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    stepped = []
    for make, optim, tensor in ((nt_nn.Parameter, nanotorch.optim, np.asarray),
                                (lambda a: torch.tensor(a, requires_grad=True), torch.optim, torch.from_numpy)):
        p = make(np.ones(2))
        opt = optim.SGD([{"params": [p], "momentum": 0}], lr=0.5, momentum=0.9, nesterov=True)
        for g in grads[:2, :2]:
            p.grad = tensor(g.copy())
            opt.step()
        stepped.append(np.array(p.data if isinstance(p, nt_nn.Parameter) else p.detach().numpy()))
        with pytest.raises(ValueError, match="[Nn]esterov"):
            optim.SGD([p], lr=0.5, nesterov=True)
    np.testing.assert_allclose(stepped[0], stepped[1], rtol=1e-15, atol=0)
    np.testing.assert_allclose(stepped[0], 1 - 0.5 * grads[:2, :2].sum(axis=0), rtol=1e-15, atol=0)   # plain SGD


@pytest.mark.parametrize("seed, same_as", [(-1, 2**64 - 1), (-2**63, 2**63), (2**64 - 1, 2**64 - 1)])
def test_manual_seed_takes_torchs_range_of_seeds(seed, same_as):
    """Negative seeds are taken modulo 2**64, as torch.manual_seed takes them (its initial_seed
    says so); beyond [-2**63, 2**64) both refuse."""
    assert torch.manual_seed(seed).initial_seed() == same_as

    def weights(s):
        nanotorch.manual_seed(s)
        return nt_nn.Linear(3, 2).weight.data.copy()
    np.testing.assert_array_equal(weights(seed), weights(same_as))
    for bad in (2**64, -2**63 - 1):
        for manual_seed in (torch.manual_seed, nanotorch.manual_seed):
            with pytest.raises(ValueError):
                manual_seed(bad)
    with pytest.raises(TypeError, match="seed must be an int"):
        nanotorch.manual_seed(1.5)


# --- the same signatures --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "nn.LeakyReLU", "nn.ModuleList", "nn.ModuleList.insert", "nn.ModuleList.append", "nn.ModuleList.extend",
    "nn.ModuleList.pop",
    "nn.Conv2d", "nn.BatchNorm1d", "nn.BatchNorm2d", "nn.GELU", "nn.ReLU", "nn.MaxPool2d", "nn.AdaptiveAvgPool2d",
    "nn.Linear", "nn.Flatten", "nn.Dropout", "nn.CrossEntropyLoss", "nn.utils.clip_grad_norm_", "optim.SGD",
    "optim.lr_scheduler.OneCycleLR", "optim.lr_scheduler.OneCycleLR.step", "nn.Module.add_module",
    "nn.Module.register_module", "nn.Module.register_parameter", "nn.Module.get_submodule",
    "nn.Module.get_parameter", "nn.Module.get_buffer", "nn.Sequential.append", "nn.Sequential.insert",
    "nn.Sequential.extend", "nn.Sequential.pop", "nn.init.calculate_gain", "nn.init.uniform_", "nn.init.normal_",
    "nn.init.constant_", "nn.init.zeros_", "nn.init.ones_", "nn.init.xavier_uniform_", "nn.init.xavier_normal_",
    "nn.init.kaiming_uniform_", "nn.init.kaiming_normal_"])
def test_positional_arguments_are_pytorchs_in_order_with_its_defaults(path):
    """Every argument that can be passed by position is PyTorch's argument at that position, with
    PyTorch's default: a call written for PyTorch means the same here (or is refused, for the
    arguments nanotorch takes only at their default)."""
    import inspect
    import operator
    ours, theirs = operator.attrgetter(path)(nanotorch), operator.attrgetter(path)(torch)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ours_args = [p for p in inspect.signature(ours).parameters.values() if p.kind in positional]
    theirs_args = list(inspect.signature(theirs).parameters.values())[:len(ours_args)]
    assert [(p.name, p.default) for p in ours_args] == [(p.name, p.default) for p in theirs_args]


# --- API gaps a PyTorch user meets: a second parity audit against torch 2.13 ------------------------------------
@pytest.mark.parametrize("method", ["parameters", "buffers", "modules", "children",
                                    "named_parameters", "named_buffers", "named_modules", "named_children"])
def test_traversals_are_iterators_as_torchs(method):
    """next() takes the first item, len() is refused, and the items are torch's, in its order."""
    import collections.abc

    def build(nn):
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.ReLU()))
    ours, theirs = build(nt_nn), build(torch.nn)
    for model in (ours, theirs):
        assert isinstance(getattr(model, method)(), collections.abc.Iterator), model
        next(getattr(model, method)())
        with pytest.raises(TypeError):
            len(getattr(model, method)())

    def described(model):                  # names, or the items' shapes (or kinds, for modules)
        return [x[0] if isinstance(x, tuple) else type(x).__name__ if hasattr(x, "training") else tuple(x.shape)
                for x in getattr(model, method)()]
    assert described(ours) == described(theirs)


def test_sgd_and_clip_grad_norm_take_parameters_iterator_as_torchs():
    def build(nn):
        return nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    ours, theirs = make_pair(build, np.random.default_rng(0))
    opt = nanotorch.optim.SGD(ours.parameters(), lr=0.1)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1)
    assert len(opt.param_groups[0]["params"]) == len(opt_t.param_groups[0]["params"]) == 4
    for p, pt in zip(ours.parameters(), theirs.parameters()):
        p.grad = np.full_like(p.data, 3.0)
        pt.grad = torch.full_like(pt, 3.0)
    close(nt_nn.utils.clip_grad_norm_(ours.parameters(), 1.0), nn_utils_clip(theirs.parameters()), "total norm")
    for (name, p), pt in zip(ours.named_parameters(), theirs.parameters()):
        close(p.grad, pt.grad, name)


def nn_utils_clip(parameters):
    return torch.nn.utils.clip_grad_norm_(parameters, 1.0)


def linear_layout(seq):
    """The state_dict's keys with each Linear's out_features, which tell the layers apart."""
    return [(key, tuple(value.shape)) for key, value in seq.state_dict().items()]


SEQUENTIAL_STEPS = [
    ("append", lambda nn, s: s.append(nn.Linear(1, 4))),
    ("insert at 1", lambda nn, s: s.insert(1, nn.Linear(1, 5))),
    ("insert at -1", lambda nn, s: s.insert(-1, nn.Linear(1, 6))),
    ("insert at len", lambda nn, s: s.insert(len(s), nn.Linear(1, 7))),
    ("insert at -len", lambda nn, s: s.insert(-len(s), nn.Linear(1, 8))),
    ("del [1]", lambda nn, s: s.__delitem__(1)),
    ("del [-1]", lambda nn, s: s.__delitem__(-1)),
    ("set [-2]", lambda nn, s: s.__setitem__(-2, nn.Linear(1, 9))),
    ("extend a list", lambda nn, s: s.extend([nn.Linear(1, 10), nn.ReLU(), nn.Linear(1, 11)])),
    ("extend a Sequential", lambda nn, s: s.extend(nn.Sequential(nn.Linear(1, 12)))),
    ("pop(0)", lambda nn, s: s.pop(0).out_features),
    ("pop(-2)", lambda nn, s: s.pop(-2).out_features),
    ("del [1:3]", lambda nn, s: s.__delitem__(slice(1, 3))),
    ("del [::2]", lambda nn, s: s.__delitem__(slice(None, None, 2))),
    ("pop(slice)", lambda nn, s: [m.out_features for m in s.pop(slice(-2, None))]),
]


def test_sequential_list_operations_give_torchs_keys():
    """append, insert, extend, pop, seq[i] = m and del seq[i] (negative indices, slices) one after
    another: the same state_dict keys after each step, the same values returned."""
    ours, theirs = nt_nn.Sequential(*[nt_nn.Linear(1, s) for s in (1, 2, 3)]), \
        torch.nn.Sequential(*[torch.nn.Linear(1, s) for s in (1, 2, 3)])
    for name, step in SEQUENTIAL_STEPS:
        got, want = step(nt_nn, ours), step(torch.nn, theirs)
        assert (got is ours) == (want is theirs), name
        if got is not ours:
            assert got == want, name
        assert linear_layout(ours) == linear_layout(theirs), name
        assert list(ours._modules) == list(theirs._modules), name
        assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs], name


def test_sequential_of_an_ordered_dict_and_its_renumbering_as_torchs():
    from collections import OrderedDict

    def build(nn):
        return nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3)), ("act", nn.ReLU()), ("fc", nn.Linear(2, 3))]))
    ours, theirs = make_pair(build, np.random.default_rng(0))
    assert tree(ours) == tree(theirs) and type(ours.fc).__name__ == type(theirs.fc).__name__ == "Linear"
    assert repr(ours) == repr(theirs).replace("torch.nn", "nanotorch.nn")
    assert list(ours[1:]._modules) == list(theirs[1:]._modules) == ["act", "fc"]
    for step in (lambda nn, s: s.append(nn.Linear(3, 1)), lambda nn, s: s.__delitem__(1),
                 lambda nn, s: s.append(nn.Linear(1, 1))):
        step(nt_nn, ours), step(torch.nn, theirs)
        assert tree(ours) == tree(theirs)


def test_sequential_index_errors_as_torchs():
    for nn in (nt_nn, torch.nn):
        seq = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 2))
        for index in (2, -3):
            for operation in (lambda: seq[index], lambda: seq.__setitem__(index, nn.ReLU()),
                              lambda: seq.__delitem__(index), lambda: seq.pop(index)):
                with pytest.raises(IndexError, match=f"index {index} is out of range"):
                    operation()
            with pytest.raises(IndexError):
                seq.insert(index + 1 if index > 0 else index - 1, nn.ReLU())
        for operation in (lambda: seq["0"], lambda: seq[1.0]):
            with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
                operation()
        with pytest.raises(TypeError, match="int is not a Module subclass"):
            seq.append(3)
        with pytest.raises(TypeError, match="cannot assign 'int' as child module '1'"):
            seq[1] = 3


def test_registration_by_name_and_its_errors_as_torchs():
    """add_module / register_module / register_parameter, and the errors PyTorch raises for bad names."""
    def build(nn, array):
        box = nn.Module()
        box.add_module("body", nn.Linear(2, 2))
        box.register_module("head", None)
        box.register_parameter("scale", nn.Parameter(array(np.ones(1, np.float32))))
        box.register_parameter("shift", None)
        box.add_module("tail", nn.ReLU())
        box.add_module("tail", nn.Linear(2, 1))                      # replaced, in its place
        box.register_parameter("scale", nn.Parameter(array(np.full(2, 2.0, np.float32))))
        return box
    ours, theirs = build(nt_nn, np.asarray), build(torch.nn, torch.from_numpy)
    assert tree(ours) == tree(theirs) and ours.head is theirs.head is None and ours.shift is theirs.shift is None
    assert theirs.load_state_dict(torch_state(ours)) == ([], [])
    for nn, array in ((nt_nn, np.zeros), (torch.nn, torch.zeros)):
        box = build(nn, np.asarray if nn is nt_nn else torch.from_numpy)
        box.register_buffer("stat", array(1))
        for name, module, error in [("a.b", nn.ReLU(), KeyError), ("", nn.ReLU(), KeyError),
                                    (3, nn.ReLU(), TypeError), ("scale", nn.ReLU(), KeyError),
                                    ("stat", nn.ReLU(), KeyError), ("training", None, KeyError),
                                    ("forward", nn.ReLU(), KeyError), ("x", 3, TypeError), ("x", array(1), TypeError)]:
            with pytest.raises(error):
                box.add_module(name, module)
            with pytest.raises(error):
                box.register_module(name, module)
        for name, param, error in [("a.b", None, KeyError), ("", None, KeyError), (3, None, TypeError),
                                   ("body", None, KeyError), ("stat", None, KeyError), ("training", None, KeyError),
                                   ("w", array(1), TypeError), ("w", 3, TypeError)]:
            with pytest.raises(error):
                box.register_parameter(name, param)
        with pytest.raises(AttributeError, match="before Module.__init__"):
            nn.Module.__new__(nn.Module).register_parameter("w", None)


def test_get_submodule_parameter_and_buffer_as_torchs():
    def build(nn):
        box = nn.Module()
        box.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        box.empty = None
        box.scale = nn.Parameter(torch.ones(1) if nn is torch.nn else np.ones(1, np.float32))
        return box
    ours, theirs = make_pair(build, np.random.default_rng(0))
    for target in ("", "features", "features.1"):
        assert type(ours.get_submodule(target)).__name__ == type(theirs.get_submodule(target)).__name__
    for target in ("scale", "features.0.weight", "features.1.bias"):
        close(ours.get_parameter(target).data, theirs.get_parameter(target), target)
    for target in ("features.1.running_var", "features.1.num_batches_tracked"):
        close(ours.get_buffer(target), theirs.get_buffer(target), target)
    for get, target in [("get_submodule", "missing"), ("get_submodule", "features.2"),
                        ("get_submodule", "features.0.weight"), ("get_submodule", "empty"),
                        ("get_submodule", "empty.x"), ("get_submodule", "features..0"),
                        ("get_parameter", ""), ("get_parameter", "features"), ("get_parameter", "features.0.w"),
                        ("get_parameter", "features.1.running_var"), ("get_parameter", "nothing.weight"),
                        ("get_buffer", "scale"), ("get_buffer", "features.0.weight"), ("get_buffer", "features.x"),
                        ("get_buffer", "training"), ("get_buffer", "features.1")]:
        messages = []
        for model in (ours, theirs):
            with pytest.raises(AttributeError) as caught:
                getattr(model, get)(target)
            messages.append(str(caught.value))
        assert messages[0] == messages[1], (get, target)


# nn.init: the bound or std each initialiser draws with, exactly; then the values' distribution
INIT_CALLS = [
    ("uniform_", (), {}), ("uniform_", (-0.3, 2.0), {}), ("normal_", (), {}), ("normal_", (1.0, 0.02), {}),
    ("xavier_uniform_", (), {}), ("xavier_uniform_", (), {"gain": 5 / 3}), ("xavier_normal_", (0.5,), {}),
    ("kaiming_uniform_", (), {}), ("kaiming_uniform_", (), {"a": 5 ** 0.5}),
    ("kaiming_uniform_", (0.2, "fan_out"), {}), ("kaiming_uniform_", (), {"mode": "FAN_OUT", "nonlinearity": "relu"}),
    ("kaiming_uniform_", (), {"nonlinearity": "tanh"}), ("kaiming_normal_", (), {}),
    ("kaiming_normal_", (), {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_normal_", (0.1,), {"nonlinearity": "leaky_relu"}), ("kaiming_normal_", (), {"nonlinearity": "selu"}),
]
INIT_SHAPES = [(3, 5), (20, 1), (4, 3, 2, 2), (16, 8, 3, 3), (2, 7, 5), (6, 2, 1, 3, 4)]


def test_init_fans_and_gains_are_torchs():
    for shape in INIT_SHAPES + [(4,), ()]:
        results = []
        for calculate, empty in ((nanotorch.nn.init._calculate_fan_in_and_fan_out, np.empty),
                                 (torch.nn.init._calculate_fan_in_and_fan_out, torch.empty)):
            try:
                results.append(calculate(empty(shape)))
            except ValueError as e:
                results.append(str(e))
        assert results[0] == results[1], shape
    for args in [("linear",), ("conv2d",), ("conv_transpose3d",), ("sigmoid",), ("tanh",), ("relu",), ("selu",),
                 ("leaky_relu",), ("leaky_relu", 0.2), ("leaky_relu", 3), ("leaky_relu", -1.5),
                 ("gelu",), ("leaky_relu", True), ("leaky_relu", "0.1")]:
        results = []
        for calculate_gain in (nanotorch.nn.init.calculate_gain, torch.nn.init.calculate_gain):
            try:
                results.append(calculate_gain(*args))
            except ValueError as e:
                results.append(str(e))
        assert results[0] == results[1], args


@pytest.mark.parametrize("shape", INIT_SHAPES)
def test_init_bounds_and_stds_are_torchs_exactly(shape):
    """What each initialiser asks its generator for (U(low, high) or N(mean, std)), recorded on both
    sides: torch's from Tensor.uniform_ / normal_, ours from the generator given. The same floats."""
    from unittest import mock
    theirs, ours = [], []

    def recorded(kind):
        def fill(tensor, low, high, generator=None):
            theirs.append((kind, low, high))
            return tensor
        return fill

    class Recorder:
        def uniform(self, low, high, size):
            ours.append(("uniform", low, high))
            return np.zeros(size)

        def normal(self, loc, scale, size):
            ours.append(("normal", loc, scale))
            return np.zeros(size)
    with mock.patch.object(torch.Tensor, "uniform_", recorded("uniform")), \
            mock.patch.object(torch.Tensor, "normal_", recorded("normal")):
        for name, args, kwargs in INIT_CALLS:
            getattr(torch.nn.init, name)(torch.empty(shape), *args, **kwargs)
    for name, args, kwargs in INIT_CALLS:
        getattr(nanotorch.nn.init, name)(nt_nn.Parameter(np.empty(shape, np.float32)), *args, **kwargs,
                                          generator=Recorder())
    assert len(ours) == len(theirs) == len(INIT_CALLS)
    for call, got, want in zip(INIT_CALLS, ours, theirs):
        assert got == want, call


@pytest.mark.parametrize("name, args, kwargs", INIT_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(INIT_CALLS)])
def test_init_values_are_distributed_as_torchs(name, args, kwargs):
    """On 147,456 values of a (256, 64, 3, 3) weight: the same quantiles as torch's draws, to a
    fraction of the std (0.05) that sampling noise stays under (3.6 standard errors at the 1% quantile); inside
    the bounds, for a uniform."""
    shape = (256, 64, 3, 3)
    nanotorch.manual_seed(0)
    torch.manual_seed(0)
    w = nt_nn.Parameter(np.empty(shape, np.float32))
    ours = getattr(nanotorch.nn.init, name)(w, *args, **kwargs).data
    theirs = getattr(torch.nn.init, name)(torch.empty(shape), *args, **kwargs).numpy()
    levels = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    spread = theirs.std()
    np.testing.assert_allclose(np.quantile(ours, levels), np.quantile(theirs, levels), rtol=0, atol=0.05 * spread)
    assert abs(ours.std() / spread - 1) < 0.02 and abs(ours.mean() - theirs.mean()) < 0.02 * spread
    if "uniform" in name:
        assert ours.min() >= theirs.min() - 1e-3 * spread and ours.max() <= theirs.max() + 1e-3 * spread


def test_one_cycle_step_with_an_epoch_warns_and_jumps_there_as_torchs():
    """The deprecated step(epoch): a UserWarning, last_epoch set to epoch, and that step's lr and
    momentum; stepping on goes from there. Past total_steps, both raise."""
    kwargs = dict(max_lr=0.1, total_steps=20, pct_start=0.25)
    opt = nanotorch.optim.SGD([nt_nn.Parameter(np.zeros(1))], lr=0.01, momentum=0.9)
    opt_t = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    sched = nanotorch.optim.lr_scheduler.OneCycleLR(opt, **kwargs)
    sched_t = torch.optim.lr_scheduler.OneCycleLR(opt_t, **kwargs)
    opt_t.step()
    for epoch, then in ((7, 1), (3, 0), (3, 2), (19, 1), (0, 0), (20, 0)):
        for scheduler in (sched, sched_t):
            with pytest.warns(UserWarning, match="The epoch parameter in `scheduler.step"):
                scheduler.step(epoch)
            for _ in range(then):
                scheduler.step()
        assert sched.last_epoch == sched_t.last_epoch == epoch + then
        assert sched.get_last_lr() == sched_t.get_last_lr()
        assert opt.param_groups[0]["momentum"] == opt_t.param_groups[0]["momentum"]
    assert sched.state_dict()["_step_count"] == sched_t.state_dict()["_step_count"]
    for scheduler in (sched, sched_t):
        with pytest.raises(ValueError, match="Tried to step 21 times"), pytest.warns(UserWarning):
            scheduler.step(21)


def test_sequential_add_and_mul_as_torchs():
    """``a + b``, ``a += b``, ``a * 1``, ``1 * a``, ``a *= 1``: the same keys and layers as torch's; the
    errors of a bad operand as torch's; ``a * 2`` (the same instances twice) refused here, as a
    Sequential refuses a layer it would run twice (torch builds it)."""
    from collections import OrderedDict

    def build(nn):
        return (nn.Sequential(OrderedDict(conv=nn.Linear(1, 2), act=nn.ReLU())), nn.Sequential(nn.Linear(2, 3)))
    results = {}
    for nn in (nt_nn, torch.nn):
        a, b = build(nn)
        total = a + b
        assert total[0] is a.conv and total[2] is b[0] and list(a._modules) == ["conv", "act"]
        once, once_left = a * 1, 1 * a
        assert once is not a and list(once) == list(a) == list(once_left)
        b += a
        b *= 1
        results[nn] = [list(s._modules) for s in (total, once, once_left, b)]
        for bad, error in ((nn.Linear(1, 1), ValueError), ([nn.ReLU()], ValueError)):
            with pytest.raises(error, match="supports only objects of Sequential class"):
                a + bad
            with pytest.raises(error, match="supports only objects of Sequential class"):
                a += bad
        for bad, error, message in ((0, ValueError, "Non-positive multiplication factor 0"),
                                    (-1, ValueError, "Non-positive"), (2.0, TypeError, "unsupported operand")):
            for operation in (lambda: a * bad, lambda: bad * a, lambda: a.__imul__(bad)):
                with pytest.raises(error, match=message):
                    operation()
    assert results[nt_nn] == results[torch.nn]
    a, _ = build(nt_nn)
    for operation in (lambda: a * 2, lambda: 2 * a, lambda: a.__imul__(2)):
        with pytest.raises(ValueError, match="Sequential \\* 2 would hold each of its layers 2 times"):
            operation()
    assert list(a._modules) == ["conv", "act"]
    with pytest.raises(TypeError, match="unsupported operand"):          # (stricter: torch takes True for 1)
        a * True
