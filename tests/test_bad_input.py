"""Bad input gets a clear error: the exception type, the layer's class name, and what it expected.

Every check uses ``pytest.raises(..., match=<layer name>)`` and then looks for the expected fragments
(a shape signature, a dtype, a key name) in the message, so a failure says which part was missing.
"""
import re
from contextlib import contextmanager

import numpy as np
import pytest

from nanotorch import nn, optim
from mnist.model import build_model


@contextmanager
def raises(exc, layer, *fragments):
    """pytest.raises for ``exc`` whose message names ``layer`` and contains every regex in ``fragments``."""
    with pytest.raises(exc, match=rf"\b{layer}\b") as info:
        yield info
    message = str(info.value)
    for f in fragments:
        assert re.search(f, message), f"{layer}: {f!r} not in the message {message!r}"


def floats(*shape):
    """float32, the layers' default dtype (a float64 input to a float32 layer is its own error)."""
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


# --- wrong number of dimensions -----------------------------------------------------------------------------
NCHW = re.escape("(N, C, H, W)")


@pytest.mark.parametrize("layer, x, expected", [
    pytest.param(nn.Conv2d(3, 4, 3), floats(2, 3, 8), NCHW, id="Conv2d-NCH"),
    pytest.param(nn.Conv2d(3, 4, 3), floats(2, 8, 8, 3, 1), NCHW, id="Conv2d-NHWC1"),
    pytest.param(nn.Conv2d(3, 4, 3), floats(3, 8, 8), NCHW, id="Conv2d-unbatched-CHW"),
    pytest.param(nn.Linear(4, 2), floats(4), re.escape("(N, "), id="Linear-1d"),
    pytest.param(nn.BatchNorm2d(3), floats(2, 3), NCHW, id="BatchNorm2d-2d"),
    pytest.param(nn.BatchNorm1d(3), floats(2, 3, 4, 4), re.escape("(N, C)"), id="BatchNorm1d-4d"),
    pytest.param(nn.MaxPool2d(2), floats(3, 8, 8), NCHW, id="MaxPool2d-3d"),
    pytest.param(nn.AdaptiveAvgPool2d(1), floats(3, 8, 8), NCHW, id="AdaptiveAvgPool2d-3d"),
])
def test_wrong_number_of_dims(layer, x, expected):
    with raises(ValueError, type(layer).__name__, expected, re.escape(str(x.shape))):
        layer(x)


@pytest.mark.parametrize("layer, x", [
    pytest.param(nn.Conv2d(1, 4, 3), floats(1, 28, 28), id="Conv2d-one-image"),
    pytest.param(nn.MaxPool2d(2), floats(3, 8, 8), id="MaxPool2d-one-image"),
    pytest.param(nn.Linear(4, 2), floats(4), id="Linear-one-row"),
])
def test_one_example_without_its_batch_axis_is_told_to_add_it(layer, x):
    """PyTorch takes an unbatched input here; nanotorch does not, and says how to add the axis."""
    with raises(ValueError, type(layer).__name__, re.escape("x[None]")):
        layer(x)


def test_more_dims_missing_than_the_batch_axis_gets_no_batch_hint():
    with pytest.raises(ValueError) as info:
        nn.Conv2d(1, 4, 3)(floats(28, 28))
    assert "x[None]" not in str(info.value)


# --- wrong channel count ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layer, x, expected", [
    pytest.param(nn.Conv2d(3, 4, 3), floats(2, 4, 8, 8), "3", id="Conv2d"),
    pytest.param(nn.Conv2d(1, 4, 3), floats(2, 8, 8, 1), "1", id="Conv2d-channels-last"),
    pytest.param(nn.BatchNorm2d(3), floats(2, 5, 4, 4), "3", id="BatchNorm2d"),
    pytest.param(nn.BatchNorm1d(3), floats(2, 5), "3", id="BatchNorm1d-NC"),
    pytest.param(nn.BatchNorm1d(3), floats(2, 5, 4), "3", id="BatchNorm1d-NCL"),
    pytest.param(nn.Linear(4, 2), floats(2, 5), "4", id="Linear-in_features"),
])
def test_wrong_channel_count(layer, x, expected):
    with raises(ValueError, type(layer).__name__, rf"\b{expected}\b", re.escape(str(x.shape))):
        layer(x)


# --- spatial size too small for the kernel -----------------------------------------------------------------
@pytest.mark.parametrize("layer, x", [
    pytest.param(nn.Conv2d(1, 1, 3), floats(1, 1, 2, 2), id="Conv2d-3x3-on-2x2"),
    pytest.param(nn.Conv2d(1, 1, (2, 3)), floats(1, 1, 4, 2), id="Conv2d-2x3-on-4x2"),
    pytest.param(nn.MaxPool2d(3), floats(1, 1, 2, 2), id="MaxPool2d-3-on-2x2"),
    pytest.param(nn.MaxPool2d(3, stride=1), floats(1, 1, 5, 2), id="MaxPool2d-3-on-5x2"),
])
def test_input_smaller_than_kernel(layer, x):
    h, w = x.shape[2:]
    with raises(ValueError, type(layer).__name__, f"{h}x{w}", "kernel"):
        layer(x)


def test_padding_makes_a_small_input_big_enough():
    assert nn.Conv2d(1, 1, 3, padding=1)(floats(1, 1, 2, 2)).shape == (1, 1, 2, 2)


# --- integer arrays and non-arrays ------------------------------------------------------------------------
COMPUTE_LAYERS = [
    pytest.param(lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5), id="Conv2d"),
    pytest.param(lambda: nn.Linear(4, 2), (2, 4), id="Linear"),
    pytest.param(lambda: nn.BatchNorm1d(4), (2, 4), id="BatchNorm1d"),
    pytest.param(lambda: nn.BatchNorm2d(2), (2, 2, 5, 5), id="BatchNorm2d"),
    pytest.param(lambda: nn.GELU(), (2, 4), id="GELU"),
    pytest.param(lambda: nn.ReLU(), (2, 4), id="ReLU"),
    pytest.param(lambda: nn.LeakyReLU(), (2, 4), id="LeakyReLU"),
    pytest.param(lambda: nn.Sigmoid(), (2, 4), id="Sigmoid"),
    pytest.param(lambda: nn.Tanh(), (2, 4), id="Tanh"),
    pytest.param(lambda: nn.MaxPool2d(2), (2, 2, 4, 4), id="MaxPool2d"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d(1), (2, 2, 4, 4), id="AdaptiveAvgPool2d"),
    pytest.param(lambda: nn.Dropout(0.5), (2, 4), id="Dropout"),
]


@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool"])
@pytest.mark.parametrize("make, shape", COMPUTE_LAYERS)
def test_integer_array_is_a_type_error_naming_the_dtype(make, shape, dtype):
    layer = make()
    with raises(TypeError, type(layer).__name__, dtype, "float"):
        layer(np.ones(shape, dtype=dtype))


@pytest.mark.parametrize("make, shape", COMPUTE_LAYERS + [pytest.param(lambda: nn.Flatten(), (2, 4), id="Flatten")])
def test_python_list_is_a_type_error(make, shape):
    layer = make()
    with raises(TypeError, type(layer).__name__, "numpy array", "list"):
        layer(np.ones(shape).tolist())


def test_cross_entropy_integer_logits_and_list_logits():
    crit = nn.CrossEntropyLoss()
    with raises(TypeError, "CrossEntropyLoss", "int64", "logits"):
        crit(np.ones((2, 3), dtype=np.int64), np.array([0, 1]))
    with raises(TypeError, "CrossEntropyLoss", "numpy array", "list"):
        crit([[0.0, 1.0], [1.0, 0.0]], np.array([0, 1]))


def test_float32_and_float64_are_accepted():
    for dtype in (np.float32, np.float64):
        assert nn.GELU()(np.ones((2, 3), dtype=dtype)).dtype == dtype


# --- backward before forward ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [
    nn.Conv2d(1, 1, 3), nn.Linear(2, 2), nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.GELU(), nn.GELU("tanh"),
    nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Dropout(0.5), nn.Dropout(0.0), nn.Flatten(),
    nn.CrossEntropyLoss(), nn.Sequential(nn.Linear(2, 3), nn.ReLU()), nn.LeakyReLU(), nn.Sigmoid(), nn.Tanh(),
    nn.Identity(),
], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backward_before_forward(layer, mode):
    layer.train(mode == "train")
    name = type(layer).__name__ if not isinstance(layer, nn.Sequential) else "ReLU"   # the last layer speaks
    with raises(RuntimeError, name, "before forward"):
        layer.backward(np.ones((2, 2))) if not isinstance(layer, nn.CrossEntropyLoss) else layer.backward()


def test_backward_before_forward_in_the_seed_model():
    with raises(RuntimeError, "Linear", "before forward"):
        build_model().backward(np.ones((2, 10), dtype=np.float32))


# --- a gradient that does not fit the forward's output -------------------------------------------------------
@pytest.mark.parametrize("make, shape", COMPUTE_LAYERS + [
    pytest.param(lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 5, 5), id="MaxPool2d-3x3"),
    pytest.param(lambda: nn.MaxPool2d(2, ceil_mode=True), (2, 2, 5, 5), id="MaxPool2d-ceil"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d(2), (2, 2, 5, 5), id="AdaptiveAvgPool2d-2"),
    pytest.param(lambda: nn.ConvBNGELU(2, 3, 3, padding=1), (2, 2, 5, 5), id="ConvBNGELU"),
    pytest.param(lambda: nn.Flatten(), (2, 3, 2), id="Flatten"),
    pytest.param(lambda: nn.Dropout(0.0), (2, 4), id="Dropout-p0"),
])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backward_with_a_gradient_of_the_wrong_shape(make, shape, mode):
    """Before any kernel reads it: a compiled loop does not check its indices."""
    layer = make().train(mode == "train")
    out = layer(np.ones(shape, dtype=np.float32))
    one_wider = np.ones(out.shape[:-1] + (out.shape[-1] + 1,), dtype=np.float32)
    for bad in (one_wider, np.ones(out.size, dtype=np.float32)):
        with raises(ValueError, type(layer).__name__, "gradient", re.escape(str(out.shape)), re.escape(str(bad.shape))):
            layer.backward(bad)


class ForgetsToReturn(nn.Module):
    """A hand-written layer whose backward forgets its ``return``."""

    def forward(self, x):
        return x

    def backward(self, grad_out):
        grad_out * 1


def test_a_backward_that_returned_none_is_named_as_the_cause():
    """The next layer back got None and blamed only itself ('expects a gradient ... got NoneType')."""
    model = nn.Sequential(nn.Linear(3, 4), ForgetsToReturn(), nn.Linear(4, 2))
    out = model(floats(5, 3))
    with raises(ValueError, "Linear", re.escape("(5, 4)"), "got None", "returned None instead of"):
        model.backward(np.ones_like(out))


# --- CrossEntropyLoss targets -----------------------------------------------------------------------------
@pytest.mark.parametrize("targets, fragments", [
    pytest.param(np.array([0.0, 1.0, 2.0]), ["integer", "float64"], id="float-targets"),
    pytest.param(np.array([[0], [1], [2]]), ["integer", re.escape("(3,)"), re.escape("(3, 1)")],
                 id="column-targets"),
    pytest.param(np.array([0, 1]), [re.escape("(3,)"), re.escape("(2,)")], id="too-few-targets"),
    pytest.param(np.array([0, 1, 2, 1]), [re.escape("(3,)"), re.escape("(4,)")], id="too-many-targets"),
    pytest.param(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=np.int64),
                 [re.escape("(3,)"), re.escape("(3, 4)")], id="one-hot-int-targets"),
    pytest.param(np.array([0, 4, 1]), [re.escape("[0, 4)"), r"\b4\b"], id="class-too-large"),
    pytest.param(np.array([0, -1, 1]), [re.escape("[0, 4)"), "-1"], id="negative-class"),
])
def test_cross_entropy_bad_targets(targets, fragments):
    with raises(ValueError, "CrossEntropyLoss", *fragments):
        nn.CrossEntropyLoss()(floats(3, 4), targets)


def test_cross_entropy_logits_need_the_batch_axis():
    """(C,) logits, which PyTorch takes unbatched, are refused with the batch-axis hint (as for the layers)."""
    with raises(ValueError, "CrossEntropyLoss", re.escape("(N, C)"), "logits", re.escape("x[None]")):
        nn.CrossEntropyLoss()(floats(4), np.array(1))
    with raises(ValueError, "CrossEntropyLoss", re.escape("(N, C)"), "logits", re.escape("()")):
        nn.CrossEntropyLoss()(floats(), np.array(1))


def test_cross_entropy_targets_of_nd_logits_name_the_shapes_expected():
    """(N, C, d1, ...) logits take (N, d1, ...) class indices or probabilities of the logits' shape."""
    with raises(ValueError, "CrossEntropyLoss", re.escape("(3, 1)"), re.escape("(3, 4, 1)"), re.escape("(3,)")):
        nn.CrossEntropyLoss()(floats(3, 4, 1), np.array([0, 1, 2]))


# --- inputs PyTorch takes: (N, *, in_features) for Linear; (N, C, d1, ...) logits and class probabilities for
# CrossEntropyLoss (each checked against PyTorch in tests/test_torch_parity.py; here against the 2-D case)
def test_linear_takes_any_number_of_leading_axes():
    """Each row of in_features is multiplied alike: the same bits as the rows stacked in two dimensions."""
    layer = nn.Linear(4, 2)
    x = floats(2, 3, 5, 4)
    y = layer(x)
    assert y.shape == (2, 3, 5, 2)
    dy = floats(2, 3, 5, 2) * 0.5
    dx = layer.backward(dy)
    dw = layer.weight.grad.copy()
    layer.zero_grad()
    np.testing.assert_array_equal(y, layer(x.reshape(-1, 4)).reshape(y.shape))
    np.testing.assert_array_equal(dx, layer.backward(dy.reshape(-1, 2)).reshape(x.shape))
    np.testing.assert_array_equal(dw, layer.weight.grad)


def test_cross_entropy_takes_nd_logits_as_their_positions_stacked():
    """(N, C, d1, d2) logits and (N, d1, d2) targets: the loss of the N d1 d2 positions as rows."""
    logits, targets = floats(2, 4, 3, 2), np.array([[[0, 1], [2, 3], [3, -100]], [[1, 1], [0, 2], [-100, 3]]])
    rows, row_targets = np.moveaxis(logits, 1, -1).reshape(-1, 4), targets.reshape(-1)
    for reduction in ("mean", "sum", "none"):
        crit, flat = nn.CrossEntropyLoss(reduction=reduction), nn.CrossEntropyLoss(reduction=reduction)
        loss = crit(logits, targets)
        want = flat(rows, row_targets)
        np.testing.assert_array_equal(loss, want if reduction != "none" else want.reshape(2, 3, 2))
        upstream = floats(*np.shape(loss)) if reduction == "none" else None
        grad = crit.backward(upstream)
        want_grad = flat.backward(None if upstream is None else upstream.reshape(-1))
        np.testing.assert_array_equal(grad, np.moveaxis(want_grad.reshape(2, 3, 2, 4), -1, 1))


def test_cross_entropy_one_hot_probabilities_are_class_indices():
    """Class-probability targets that are one-hot give the loss and gradient of those class indices."""
    logits, targets = floats(5, 4).astype(np.float64), np.array([0, 3, 1, 1, 2])
    for reduction in ("mean", "sum", "none"):
        by_index, by_probs = nn.CrossEntropyLoss(reduction=reduction), nn.CrossEntropyLoss(reduction=reduction)
        np.testing.assert_allclose(by_probs(logits, np.eye(4)[targets]), by_index(logits, targets), rtol=1e-14)
        upstream = np.arange(1.0, 6.0) if reduction == "none" else None
        np.testing.assert_allclose(by_probs.backward(upstream), by_index.backward(upstream), rtol=1e-14, atol=1e-16)


def test_cross_entropy_weight_and_smoothing_by_hand():
    """Two rows, three classes, weight (1, 2, 3), label_smoothing 0.3, the mean: torch's formula, by hand."""
    logits, targets = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), np.array([1, 2])
    weight, eps = np.array([1.0, 2.0, 3.0]), 0.3
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    per_row = [(1 - eps) * weight[t] * -log_p[n, t] + eps / 3 * -(weight * log_p[n]).sum()
               for n, t in enumerate(targets)]
    crit = nn.CrossEntropyLoss(weight=weight, label_smoothing=eps)
    np.testing.assert_allclose(crit(logits, targets), sum(per_row) / (2.0 + 3.0), rtol=1e-14)


# --- BatchNorm needs more than one value per channel to train --------------------------------------------
@pytest.mark.parametrize("layer, shape, out_shape", [
    pytest.param(nn.BatchNorm1d(3), (1, 3), (1, 3), id="BatchNorm1d-NC-batch1"),
    pytest.param(nn.BatchNorm1d(3), (1, 3, 1), (1, 3, 1), id="BatchNorm1d-NCL-batch1-L1"),
    pytest.param(nn.BatchNorm2d(3), (1, 3, 1, 1), (1, 3, 1, 1), id="BatchNorm2d-batch1-1x1"),
    pytest.param(nn.ConvBNGELU(2, 3, 3, padding=1), (1, 2, 1, 1), (1, 3, 1, 1), id="ConvBNGELU-batch1-1x1"),  # fused
])
def test_batchnorm_train_with_one_value_per_channel(layer, shape, out_shape):
    batchnorm = next(m for m in layer.modules() if hasattr(m, "num_batches_tracked"))   # (the block's child)
    with raises(ValueError, type(layer).__name__, "more than 1 value per channel", re.escape(str(shape))):
        layer(floats(*shape))
    assert int(batchnorm.num_batches_tracked) == 0, "a rejected batch must not count"
    layer.eval()
    assert layer(floats(*shape)).shape == out_shape, "eval mode uses the running statistics: one value is fine"


# --- constructor errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, name, fragments", [
    pytest.param(lambda: nn.Dropout(p=1.5), "Dropout", ["1.5", r"\[0, 1\]"], id="Dropout-p1.5"),
    pytest.param(lambda: nn.Dropout(p=-0.1), "Dropout", ["-0.1"], id="Dropout-negative"),
    pytest.param(lambda: nn.GELU(approximate="x"), "GELU", ["'x'", "'none'", "'tanh'"], id="GELU-approximate"),
    pytest.param(lambda: nn.Conv2d(0, 4, 3), "Conv2d", ["in=0", ">= 1"], id="Conv2d-0-in-channels"),
    pytest.param(lambda: nn.Conv2d(3, 0, 3), "Conv2d", ["out=0", ">= 1"], id="Conv2d-0-out-channels"),
    pytest.param(lambda: nn.Conv2d(3, 4, 0), "Conv2d", ["kernel_size", ">= 1"], id="Conv2d-kernel-0"),
    pytest.param(lambda: nn.Conv2d(3, 4, 3, stride=0), "Conv2d", ["stride", ">= 1"], id="Conv2d-stride-0"),
    pytest.param(lambda: nn.Conv2d(3, 4, 3, padding=-1), "Conv2d", ["padding", ">= 0"], id="Conv2d-padding-neg"),
    pytest.param(lambda: nn.Conv2d(3, 4, (1, 2, 3)), "Conv2d", ["kernel_size", re.escape("(1, 2, 3)")],
                 id="Conv2d-kernel-3-tuple"),
    pytest.param(lambda: nn.MaxPool2d(2, padding=2), "MaxPool2d", ["padding", "half"], id="MaxPool2d-pad2-k2"),
    pytest.param(lambda: nn.MaxPool2d(3, padding=2), "MaxPool2d", ["padding", "half"], id="MaxPool2d-pad2-k3"),
    pytest.param(lambda: nn.MaxPool2d((2, 4), padding=(2, 1)), "MaxPool2d", ["padding", "half"],
                 id="MaxPool2d-pad-rect"),
    pytest.param(lambda: nn.MaxPool2d(2, stride=0), "MaxPool2d", ["stride", ">= 1"], id="MaxPool2d-stride-0"),
    pytest.param(lambda: nn.Linear(0, 3), "Linear", ["in_features", ">= 1"], id="Linear-0-in"),
    pytest.param(lambda: nn.CrossEntropyLoss(reduction="avg"), "CrossEntropyLoss", ["'avg'", "'mean'", "'none'"],
                 id="CrossEntropyLoss-reduction"),
])
def test_constructor_errors(make, name, fragments):
    with raises(ValueError, name, *fragments):
        make()


@pytest.mark.parametrize("make, name, fragments", [
    pytest.param(lambda: nn.Conv2d(3.0, 4, 3), "Conv2d", ["in_channels", "int", "3.0"], id="Conv2d-float-in"),
    pytest.param(lambda: nn.Conv2d(3, 4.7, 3), "Conv2d", ["out_channels", "int", "4.7"], id="Conv2d-float-out"),
    pytest.param(lambda: nn.Conv2d(True, 4, 3), "Conv2d", ["in_channels", "int", "bool"], id="Conv2d-bool-in"),
    pytest.param(lambda: nn.Linear(4.0, 2), "Linear", ["in_features", "int", "4.0"], id="Linear-float-in"),
    pytest.param(lambda: nn.Linear(4, "2"), "Linear", ["out_features", "int", "str"], id="Linear-str-out"),
])
def test_constructor_counts_must_be_ints(make, name, fragments):
    with raises(TypeError, name, *fragments):
        make()


@pytest.mark.parametrize("make, name, fragments", [
    pytest.param(lambda: nn.AdaptiveAvgPool2d(-1), "AdaptiveAvgPool2d", ["output_size", ">= 0", "-1"], id="neg"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d((2, -1)), "AdaptiveAvgPool2d", ["output_size", ">= 0"], id="neg-in-pair"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d((2, 3, 4)), "AdaptiveAvgPool2d", ["output_size", "pair", "None"],
                 id="triple"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d(None), "AdaptiveAvgPool2d", ["output_size", "got None"],
                 id="None-alone"),                   # (None keeps a side in a pair; alone, torch refuses it too)
    pytest.param(lambda: nn.Dropout(True), "Dropout", [r"\[0, 1\]", "True"], id="Dropout-bool"),
])
def test_more_constructor_errors(make, name, fragments):
    with raises(ValueError, name, *fragments):
        make()


# --- a bool is not an int, alone or inside a pair ----------------------------------------------------------
# (PyTorch itself takes Conv2d(1, 1, True) and Linear(True, 2), where Python's True is the int 1, but
# refuses True as a stride, padding, dilation or groups, and anywhere in MaxPool2d, AdaptiveAvgPool2d,
# BatchNorm or Flatten: nanotorch refuses a bool wherever it expects an int.)
X = np.zeros((1, 1, 6, 6), np.float32)


@pytest.mark.parametrize("make, name, error, fragments", [
    pytest.param(lambda: nn.Conv2d(1, 1, kernel_size=True), "Conv2d", ValueError, ["kernel_size", "True", "bool"],
                 id="Conv2d-kernel-True"),
    pytest.param(lambda: nn.Conv2d(1, 1, kernel_size=(True, True)), "Conv2d", ValueError,
                 ["kernel_size", re.escape("(True, True)"), "bool"], id="Conv2d-kernel-True-True"),
    pytest.param(lambda: nn.Conv2d(1, 1, [3, np.True_]), "Conv2d", ValueError, ["kernel_size", "bool"],
                 id="Conv2d-kernel-list-numpy-bool"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, stride=True), "Conv2d", ValueError, ["stride", "bool"],
                 id="Conv2d-stride-True"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, stride=(1, True)), "Conv2d", ValueError, ["stride", "bool"],
                 id="Conv2d-stride-1-True"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, padding=False), "Conv2d", ValueError, ["padding", "bool"],
                 id="Conv2d-padding-False"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, padding=(True, False)), "Conv2d", ValueError, ["padding", "bool"],
                 id="Conv2d-padding-True-False"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, dilation=(True, True)), "Conv2d", ValueError, ["dilation", "bool"],
                 id="Conv2d-dilation-True-True"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, groups=True), "Conv2d", TypeError, ["groups", "int", "bool"],
                 id="Conv2d-groups-True"),
    pytest.param(lambda: nn.Conv2d(1, False, 3), "Conv2d", TypeError, ["out_channels", "bool"],
                 id="Conv2d-out-False"),
    pytest.param(lambda: nn.ConvBNGELU(1, 1, (True, True)), "Conv2d", ValueError, ["kernel_size", "bool"],
                 id="ConvBNGELU-kernel-True-True"),
    pytest.param(lambda: nn.MaxPool2d(True), "MaxPool2d", ValueError, ["kernel_size", "bool"], id="MaxPool2d-True"),
    pytest.param(lambda: nn.MaxPool2d((True, True)), "MaxPool2d", ValueError, ["kernel_size", "bool"],
                 id="MaxPool2d-True-True"),
    pytest.param(lambda: nn.MaxPool2d(2, stride=(True, True)), "MaxPool2d", ValueError, ["stride", "bool"],
                 id="MaxPool2d-stride-True-True"),
    pytest.param(lambda: nn.MaxPool2d(2, padding=(False, False)), "MaxPool2d", ValueError, ["padding", "bool"],
                 id="MaxPool2d-padding-False-False"),
    pytest.param(lambda: nn.MaxPool2d(2, dilation=(True, True)), "MaxPool2d", ValueError, ["dilation", "bool"],
                 id="MaxPool2d-dilation-True-True"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d(True), "AdaptiveAvgPool2d", ValueError, ["output_size", "bool"],
                 id="AdaptiveAvgPool2d-True"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d((True, True)), "AdaptiveAvgPool2d", ValueError,
                 ["output_size", "bool"], id="AdaptiveAvgPool2d-True-True"),
    pytest.param(lambda: nn.Linear(True, 2), "Linear", TypeError, ["in_features", "bool"], id="Linear-in-True"),
    pytest.param(lambda: nn.Linear(2, True), "Linear", TypeError, ["out_features", "bool"], id="Linear-out-True"),
    pytest.param(lambda: nn.BatchNorm2d(True), "BatchNorm2d", TypeError, ["num_features", "bool"], id="BatchNorm2d"),
    pytest.param(lambda: nn.Flatten(True)(X), "Flatten", TypeError, ["start_dim", "int", "bool"],
                 id="Flatten-start-True"),
    pytest.param(lambda: nn.Flatten(0, True)(X), "Flatten", TypeError, ["end_dim", "int", "bool"],
                 id="Flatten-end-True"),
    pytest.param(lambda: nn.CrossEntropyLoss(ignore_index=True), "CrossEntropyLoss", TypeError,
                 ["ignore_index", "int"], id="CrossEntropyLoss-ignore-index-True"),
])
def test_a_bool_is_refused_where_an_int_is_expected(make, name, error, fragments):
    with raises(error, name, *fragments):
        make()


@pytest.mark.parametrize("make, name, value", [
    pytest.param(lambda: nn.Conv2d(1, 1, 3), "stride", (True, True), id="Conv2d-stride"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3), "groups", True, id="Conv2d-groups"),
    pytest.param(lambda: nn.MaxPool2d(2), "kernel_size", (True, True), id="MaxPool2d-kernel_size"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d(2), "output_size", (True, 1), id="AdaptiveAvgPool2d-output_size"),
    pytest.param(lambda: nn.Flatten(), "start_dim", True, id="Flatten-start_dim"),
])
def test_a_bool_set_after_construction_is_refused_when_used(make, name, value):
    """Layers read their arguments when they run: a bool set later is refused there, as at construction."""
    layer = make()
    layer(X)
    setattr(layer, name, value)
    with pytest.raises((TypeError, ValueError), match=rf"{type(layer).__name__}: {name} must be an int.*bool"):
        layer(X)


def test_numpy_numbers_are_accepted_by_constructors():
    assert nn.Dropout(np.float32(0.5)).p == 0.5
    assert nn.Conv2d(np.int64(3), np.int32(4), 3).in_channels == 3
    assert nn.Linear(np.int64(4), 2).in_features == 4
    assert nn.AdaptiveAvgPool2d(7)(floats(1, 1, 3, 3)).shape == (1, 1, 7, 7)   # larger than the input is fine


@pytest.mark.parametrize("layer", [nn.GELU(), nn.ReLU(), nn.Dropout(0.5), nn.LeakyReLU(), nn.Sigmoid(), nn.Tanh()],
                         ids=lambda m: type(m).__name__)
def test_0d_input_to_an_elementwise_layer_says_what_it_expects(layer):
    with raises(ValueError, type(layer).__name__, "1-D to 8-D", re.escape("()")):
        layer(np.array(1.0))


@pytest.mark.parametrize("slope", ["0.1", None, True, np.array([0.1]), [0.1]], ids=repr)
def test_leaky_relu_negative_slope_must_be_a_real_number(slope):
    """Refused at construction and, set since, when used (PyTorch's F.leaky_relu refuses a str when called)."""
    with raises(TypeError, "LeakyReLU", "negative_slope", "real number", re.escape(type(slope).__name__)):
        nn.LeakyReLU(slope)
    layer = nn.LeakyReLU()
    layer(floats(2, 3))
    layer.negative_slope = slope
    with raises(TypeError, "LeakyReLU", "negative_slope", "real number"):
        layer(floats(2, 3))


def test_leaky_relu_inplace_set_since_construction_is_refused_when_used():
    layer = nn.LeakyReLU()
    layer.inplace = True
    with raises(NotImplementedError, "LeakyReLU", "inplace=True", "not implemented"):
        layer(floats(2, 3))


def test_identity_backward_wants_a_gradient_of_its_inputs_shape():
    """Identity passes any input on, as PyTorch; for an array, the gradient must have its shape."""
    layer = nn.Identity()
    x = floats(2, 3)
    assert layer(x) is x
    for bad in (floats(2, 4), floats(6)):
        with raises(ValueError, "Identity", "gradient", re.escape("(2, 3)"), re.escape(str(bad.shape))):
            layer.backward(bad)
    g = floats(2, 3)
    assert layer.backward(g) is g


def test_maxpool_padding_of_exactly_half_the_kernel_is_allowed():
    assert nn.MaxPool2d(2, padding=1)(floats(1, 1, 4, 4)).shape == (1, 1, 3, 3)


# --- load_state_dict --------------------------------------------------------------------------------------
def test_load_state_dict_wrong_shape_lists_key_and_both_shapes():
    layer = nn.Linear(4, 2)
    before = layer.weight.data.copy()
    state = layer.state_dict()
    state["weight"] = np.zeros((3, 4), dtype=np.float32)
    with raises(ValueError, "Linear", r"\bweight\b", re.escape("(3, 4)"), re.escape("(2, 4)")):
        layer.load_state_dict(state)
    np.testing.assert_array_equal(layer.weight.data, before, err_msg="a failed load must change nothing")


def test_load_state_dict_missing_key():
    layer = nn.BatchNorm2d(3)
    state = layer.state_dict()
    del state["running_var"]
    with raises(ValueError, "BatchNorm2d", "missing", "running_var"):
        layer.load_state_dict(state)
    layer.load_state_dict(state, strict=False)          # non-strict: what is there is loaded


def test_load_state_dict_unexpected_key():
    layer = nn.Conv2d(1, 2, 3, bias=False)
    state = layer.state_dict()
    state["bias"] = np.zeros(2, dtype=np.float32)
    with raises(ValueError, "Conv2d", "unexpected", r"\bbias\b"):
        layer.load_state_dict(state)


def test_load_state_dict_lists_every_problem_at_once_with_full_key_paths():
    model = build_model()
    state = model.state_dict()
    state["0.0.weight"] = np.zeros((4, 1, 5, 5), dtype=np.float32)     # wrong shape
    state["13.bias"] = np.zeros(57, dtype=np.float32)                  # wrong shape
    del state["2.1.running_var"]                                       # missing
    state["17.weight"] = np.zeros(3, dtype=np.float32)                 # unexpected
    with raises(ValueError, "Sequential",
                re.escape("0.0.weight"), re.escape("(4, 1, 5, 5)"), re.escape("(4, 1, 3, 3)"),
                re.escape("13.bias"), re.escape("(57,)"), re.escape("(56,)"),
                "missing", re.escape("2.1.running_var"),
                "unexpected", re.escape("17.weight")):
        model.load_state_dict(state)


# --- an input (or gradient) of another dtype than the layer's parameters ----------------------------------
@pytest.mark.parametrize("build, shape", [
    pytest.param(lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 16), id="Conv2d"),
    pytest.param(lambda: nn.ConvBNGELU(2, 3, 3, padding=1), (2, 2, 5, 16), id="ConvBNGELU"),
    pytest.param(lambda: nn.Linear(4, 2), (3, 4), id="Linear"),
    pytest.param(lambda: nn.BatchNorm2d(2), (3, 2, 4, 4), id="BatchNorm2d"),
    pytest.param(lambda: nn.BatchNorm1d(2, affine=False), (3, 2), id="BatchNorm1d-no-affine"),
])
@pytest.mark.parametrize("layer_dtype, x_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_input_of_another_dtype_than_the_parameters(build, shape, layer_dtype, x_dtype):
    """PyTorch refuses the mix; computing silently in the input's dtype would turn a float64 check
    into a float32 run (or write float64 gradients into float32 ones)."""
    layer = build().to(layer_dtype)
    name = type(layer).__name__ if not isinstance(layer, nn.ConvBNGELU) else "Conv2d"
    x = floats(*shape)
    with raises(TypeError, name, np.dtype(layer_dtype).name, np.dtype(x_dtype).name, r"\.to\("):
        layer(x.astype(x_dtype))
    y = layer(x.astype(layer_dtype))
    with raises(TypeError, type(layer).__name__, "gradient of the output's dtype"):
        layer.backward(np.ones_like(y, dtype=x_dtype))


# --- PyTorch's positional arguments that nanotorch does not implement -----------------------------------
@pytest.mark.parametrize("build, fragment", [
    pytest.param(lambda: nn.Conv2d(2, 4, 3, 1, 1, 2), "dilation", id="Conv2d-dilation"),
    pytest.param(lambda: nn.Conv2d(2, 4, 3, 1, 1, 1, 2), "groups", id="Conv2d-groups"),
    pytest.param(lambda: nn.ConvBNGELU(2, 4, 3, 1, 1, 2), "dilation", id="ConvBNGELU-dilation"),
    pytest.param(lambda: nn.MaxPool2d(3, 2, 1, 2), "dilation", id="MaxPool2d-dilation"),
    pytest.param(lambda: nn.MaxPool2d(3, 2, 1, 1, True), "return_indices", id="MaxPool2d-return_indices"),
    pytest.param(lambda: nn.Dropout(0.5, True), "inplace", id="Dropout-inplace"),
    pytest.param(lambda: nn.ReLU(True), "inplace", id="ReLU-inplace"),
    pytest.param(lambda: nn.LeakyReLU(0.2, True), "inplace", id="LeakyReLU-inplace"),
])
def test_pytorch_arguments_not_implemented_are_refused_not_ignored(build, fragment):
    """They sit where PyTorch's do, so Conv2d(c, c, 3, 1, d, d) is not read as bias=d (it used to be)."""
    with pytest.raises(NotImplementedError, match=rf"{fragment}=.* not implemented in nanotorch"):
        build()


@pytest.mark.parametrize("build, fragment", [
    pytest.param(lambda: nn.Conv2d(2, 4, 3, padding_mode="reflect"), "padding_mode", id="Conv2d-padding_mode"),
    pytest.param(lambda: nn.Conv2d(2, 4, 3, padding_mode="replicate"), "padding_mode", id="Conv2d-replicate"),
    pytest.param(lambda: nn.Conv2d(2, 4, 3, padding_mode="circular"), "padding_mode", id="Conv2d-circular"),
    pytest.param(lambda: nn.BatchNorm2d(3, track_running_stats=False), "track_running_stats", id="BatchNorm2d-track"),
    pytest.param(lambda: nn.Conv2d(2, 4, 2, padding="same"), "even kernel_size", id="Conv2d-same-even-kernel"),
    pytest.param(lambda: nn.Linear(2, 3, device="cuda"), "device='cuda'", id="Linear-cuda"),
    pytest.param(lambda: optim.SGD([nn.Parameter(np.zeros(2, np.float32))], differentiable=True),
                 "differentiable=True", id="SGD-differentiable"),
])
def test_more_pytorch_arguments_not_implemented(build, fragment):
    with pytest.raises(NotImplementedError, match=fragment) as error:
        build()
    other = {"differentiable=True": "maximize"}.get(fragment)
    assert other is None or other not in str(error.value)       # names the argument given, not the others


def test_pytorch_keyword_arguments_at_their_defaults_are_accepted():
    """Code written for PyTorch that spells out its defaults (or picks its implementation) runs."""
    conv = nn.Conv2d(2, 4, 3, padding="same", padding_mode="zeros", device="cpu", dtype=np.float64)
    assert conv.padding == "same" and conv.geometry()[2] == (1, 1)      # kept by name, as PyTorch keeps it
    assert conv.weight.dtype == np.float64 and conv.bias.dtype == np.float64
    assert nn.Conv2d(2, 4, 3, padding="valid").geometry()[2] == (0, 0)
    assert nn.Linear(2, 3, True, "cpu", "float32").weight.dtype == np.float32
    bn = nn.BatchNorm2d(3, 1e-5, 0.1, True, True, None, np.float64, bias=False)
    assert bn.bias is None and bn.running_mean.dtype == np.float64 and list(bn.state_dict()) == [
        "weight", "running_mean", "running_var", "num_batches_tracked"]
    p = nn.Parameter(np.zeros(2, np.float32))
    optim.SGD([p], lr=0.1, maximize=False, foreach=True, differentiable=False, fused=False)
    p.grad = np.ones(2, np.float32)
    assert nn.utils.clip_grad_norm_([p], 1.0, foreach=True) == np.float32(np.sqrt(2))


@pytest.mark.parametrize("build, exc, fragments", [
    pytest.param(lambda: nn.Conv2d(2, 4, 3, stride=2, padding="same"), ValueError, ["strided"], id="same-strided"),
    pytest.param(lambda: nn.Conv2d(2, 4, 3, padding="full"), ValueError, ["'full'", "'same'"], id="padding-word"),
    pytest.param(lambda: nn.Linear(2, 3, dtype=np.int32), TypeError, ["float32 or float64", "int32"], id="int-dtype"),
    pytest.param(lambda: nn.Linear(2, 3, dtype="bogus"), TypeError, ["float32 or float64", "'bogus'"], id="bad-dtype"),
    pytest.param(lambda: nn.BatchNorm2d(2, dtype=np.float16), TypeError, ["float16"], id="half-dtype"),
])
def test_constructor_argument_errors_name_what_was_expected(build, exc, fragments):
    with pytest.raises(exc) as info:
        build()
    for f in fragments:
        assert f in str(info.value)


def test_a_gradient_assigned_by_hand_must_be_the_parameters_twin():
    """The optimisers' compiled loops read grad as data's twin: a grad of another size once made
    SGD read past its end (wrong numbers, or a crash); now it is refused when assigned, as in PyTorch."""
    p = nn.Parameter(np.zeros(3, np.float32))
    for bad, exc, fragment in ((np.ones(1, np.float32), ValueError, r"\(3,\) and dtype float32, got \(1,\)"),
                               (np.ones((3, 1), np.float32), ValueError, r"got \(3, 1\)"),
                               (np.ones(3, np.float64), ValueError, "float64"),
                               ([1.0, 2.0, 3.0], TypeError, "list")):
        with pytest.raises(exc, match=fragment):
            p.grad = bad
        assert p.grad is None
    p.grad = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="floating-point"):
        nn.Parameter(np.array([1, 2, 3]))


def test_pytorch_positional_arguments_at_their_defaults_land_where_pytorchs_do():
    assert nn.Conv2d(2, 4, 3, 1, 1, 1, 1, False).bias is None
    assert nn.MaxPool2d(2, 2, 0, 1, False, True).ceil_mode
    assert nn.CrossEntropyLoss(None, None, -100, None, "sum").reduction == "sum"
    weight = np.ones(3)
    crit = nn.CrossEntropyLoss(weight, None, -100, None, "sum", 0.25)
    assert crit.weight is weight and crit.label_smoothing == 0.25


@pytest.mark.parametrize("size_average, reduce, reduction", [
    (None, True, "mean"), (True, None, "mean"), (False, None, "sum"), (False, True, "sum"), (0, 1, "sum"),
])
def test_cross_entropy_deprecated_size_average_and_reduce_set_the_reduction(size_average, reduce, reduction):
    """As in PyTorch (None means True), and they override ``reduction``, with a warning."""
    with pytest.warns(UserWarning, match=rf"deprecated.*reduction='{reduction}'"):
        crit = nn.CrossEntropyLoss(None, size_average, -100, reduce, "sum" if reduction == "mean" else "mean")
    assert crit.reduction == reduction


def test_cross_entropy_reduce_false_is_reduction_none():
    with pytest.warns(UserWarning, match="reduction='none'"):
        assert nn.CrossEntropyLoss(reduce=False).reduction == "none"


def test_cross_entropy_reduction_none_backward_needs_a_gradient_per_row():
    crit = nn.CrossEntropyLoss(reduction="none")
    assert crit(floats(3, 4), np.array([0, 1, 2])).shape == (3,)
    for bad in (None, 1.0, np.ones(2)):
        with raises(ValueError, "CrossEntropyLoss", re.escape("(3,)")):
            crit.backward(bad)


def test_cross_entropy_elementwise_mean_is_mean_with_a_warning():
    with pytest.warns(UserWarning, match="elementwise_mean.*deprecated"):
        assert nn.CrossEntropyLoss(reduction="elementwise_mean").reduction == "mean"


# --- CrossEntropyLoss's weight and label_smoothing -----------------------------------------------------------
@pytest.mark.parametrize("weight, exc, fragments", [
    pytest.param(np.ones(3, np.float32), ValueError, [re.escape("(4,)"), re.escape("(3,)"), "one weight per class"],
                 id="too-short"),
    pytest.param(np.ones(5, np.float32), ValueError, [re.escape("(4,)"), re.escape("(5,)")], id="too-long"),
    pytest.param(np.ones((1, 4), np.float32), ValueError, ["1-D", re.escape("(1, 4)")], id="2-d"),
    pytest.param(np.ones(4, np.int64), TypeError, ["float", "int64"], id="int"),
    pytest.param(np.ones(4, np.float64), TypeError, ["float32", "float64", r"\.to\("], id="other-dtype"),
])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("probabilities", [False, True])
def test_cross_entropy_bad_weight(weight, exc, fragments, smoothing, probabilities):
    targets = np.full((3, 4), 0.25, np.float32) if probabilities else np.array([0, 1, 2])
    with raises(exc, "CrossEntropyLoss", r"\bweight\b", *fragments):
        nn.CrossEntropyLoss(weight, label_smoothing=smoothing)(floats(3, 4), targets)


def test_cross_entropy_weight_must_be_an_array():
    with raises(TypeError, "CrossEntropyLoss", r"\bweight\b", "numpy array", "list"):
        nn.CrossEntropyLoss([1.0, 2.0, 3.0])
    with raises(TypeError, "CrossEntropyLoss", r"\bweight\b", "1-D float array", "int64"):
        nn.CrossEntropyLoss(np.ones(4, np.int64))              # at construction, before any logits


@pytest.mark.parametrize("smoothing, exc, fragments", [
    pytest.param(1.5, ValueError, [r"\[0, 1\]", "1.5"], id="above-1"),
    pytest.param(-0.1, ValueError, [r"\[0, 1\]", "-0.1"], id="negative"),
    pytest.param(float("nan"), ValueError, [r"\[0, 1\]", "nan"], id="nan"),
    pytest.param(True, TypeError, ["float", "True"], id="bool"),
    pytest.param("0.1", TypeError, ["float", "'0.1'"], id="str"),
])
def test_cross_entropy_bad_label_smoothing(smoothing, exc, fragments):
    with raises(exc, "CrossEntropyLoss", "label_smoothing", *fragments):
        nn.CrossEntropyLoss(label_smoothing=smoothing)
    crit = nn.CrossEntropyLoss()
    crit.label_smoothing = smoothing                       # set later: refused when used
    with raises(exc, "CrossEntropyLoss", "label_smoothing", *fragments):
        crit(floats(3, 4), np.array([0, 1, 2]))


@pytest.mark.parametrize("targets, fragments", [
    pytest.param(np.full((3, 5), 0.2), [re.escape("(3,)"), re.escape("(3, 4)"), re.escape("(3, 5)"), "probabilit"],
                 id="probabilities-of-another-shape"),
    pytest.param(np.full((3, 4, 1), 0.25), [re.escape("(3, 4)"), re.escape("(3, 4, 1)")],
                 id="probabilities-with-an-extra-axis"),
    pytest.param(np.full((3, 4), 1, np.int64), ["float", re.escape("(3, 4)"), "int64"], id="integer-probabilities"),
])
def test_cross_entropy_bad_probability_targets(targets, fragments):
    with raises(ValueError, "CrossEntropyLoss", *fragments):
        nn.CrossEntropyLoss(label_smoothing=0.1)(floats(3, 4), targets)


def test_cross_entropy_probability_targets_have_no_ignore_index():
    """As PyTorch: ignore_index applies to class indices only, and a probability target refuses one set."""
    with raises(ValueError, "CrossEntropyLoss", "ignore_index", "2", "class-probability"):
        nn.CrossEntropyLoss(ignore_index=2)(floats(3, 4), np.full((3, 4), 0.25))


@pytest.mark.parametrize("kwargs", [dict(weight=np.ones(4, np.float32)), dict(label_smoothing=0.2),
                                    dict(weight=np.ones(4, np.float32), label_smoothing=1.0)])
def test_cross_entropy_out_of_range_targets_with_options(kwargs):
    with raises(ValueError, "CrossEntropyLoss", re.escape("[0, 4)"), "ignore_index", r"\b4\b", "row 1"):
        nn.CrossEntropyLoss(**kwargs)(floats(3, 4), np.array([0, 4, 1]))
    with raises(ValueError, "CrossEntropyLoss", re.escape("[0, 4)"), "-1", re.escape("(1, 0)")):
        nn.CrossEntropyLoss(**kwargs)(floats(2, 4, 3), np.array([[0, 1, 2], [-1, 3, 0]]))


def test_cross_entropy_bad_target_names_ignore_index():
    with raises(ValueError, "CrossEntropyLoss", re.escape("[0, 4)"), "ignore_index", "-1", "row 1"):
        nn.CrossEntropyLoss(ignore_index=-1)(floats(3, 4), np.array([0, -2, 1]))
    with raises(TypeError, "CrossEntropyLoss", "ignore_index"):
        nn.CrossEntropyLoss(ignore_index=0.5)


# --- empty batches and empty planes ---------------------------------------------------------------------
@pytest.mark.parametrize("build, shape", [
    pytest.param(lambda: nn.Conv2d(3, 4, 3, padding=1), (0, 3, 28, 28), id="Conv2d-direct"),
    pytest.param(lambda: nn.Conv2d(3, 4, 3), (0, 3, 5, 5), id="Conv2d-im2col"),
    pytest.param(lambda: nn.Linear(3, 2), (0, 3), id="Linear"),
    pytest.param(lambda: nn.MaxPool2d(2), (0, 3, 4, 4), id="MaxPool2d"),
    pytest.param(lambda: nn.BatchNorm2d(3), (0, 3, 4, 4), id="BatchNorm2d"),
    pytest.param(lambda: nn.BatchNorm1d(3), (0, 3), id="BatchNorm1d"),
    pytest.param(lambda: nn.BatchNorm1d(3), (2, 3, 0), id="BatchNorm1d-L0"),
    pytest.param(lambda: nn.ConvBNGELU(3, 4, 3, padding=1), (0, 3, 6, 6), id="ConvBNGELU"),
    pytest.param(lambda: build_model(), (0, 1, 28, 28), id="model"),
])
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(build, shape):
    """As PyTorch: an empty batch is not an error (the backward's reshape used to fail for Conv2d)."""
    layer = build()
    y = layer(np.zeros(shape, np.float32))
    assert y.size == 0
    assert layer.backward(np.zeros_like(y)).shape == shape
    for p in layer.parameters():
        np.testing.assert_array_equal(p.grad, 0)


def test_conv_takes_an_empty_batch_of_empty_planes_but_refuses_an_image_with_an_empty_plane():
    """As PyTorch: Conv2d(1, 1, 3, padding=2) maps (0, 1, 0, 5) to (0, 1, 2, 7), its padding alone being
    larger than the kernel, and refuses (1, 1, 0, 5), which that padding alone would convolve to the bias."""
    layer = nn.Conv2d(1, 1, 3, padding=2)
    y = layer(np.zeros((0, 1, 0, 5), np.float32))
    assert y.shape == (0, 1, 2, 7)
    assert layer.backward(np.zeros_like(y)).shape == (0, 1, 0, 5)
    with raises(ValueError, "Conv2d", "at least 1x1 pixels", re.escape("(1, 1, 0, 5)")):
        layer(np.zeros((1, 1, 0, 5), np.float32))


@pytest.mark.parametrize("eps", ["1e-5", None, np.array([1e-5])])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_eps_must_be_a_number(eps, training):
    """Checked at the forward, where it is used (it may be set after construction, as in PyTorch)."""
    bn = nn.BatchNorm2d(3).train(training)
    bn.eps = eps
    with raises(TypeError, "BatchNorm2d", "eps must be a number"):
        bn(floats(2, 3, 2, 2))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_counts_an_empty_training_batch_and_keeps_its_running_statistics(momentum):
    """As PyTorch: num_batches_tracked goes up, the running statistics have nothing to take in."""
    for layer in (nn.BatchNorm2d(3, momentum=momentum), nn.ConvBNGELU(3, 3, 3, padding=1)):
        bn = layer if isinstance(layer, nn.BatchNorm2d) else layer[1]
        bn.momentum = momentum
        bn.running_mean[...], bn.running_var[...] = 5.0, 7.0
        layer(np.zeros((0, 3, 4, 4), np.float32))
        assert int(bn.num_batches_tracked) == 1
        np.testing.assert_array_equal(bn.running_mean, 5.0)
        np.testing.assert_array_equal(bn.running_var, 7.0)


def test_adaptive_avg_pool_of_an_empty_plane():
    with raises(ValueError, "AdaptiveAvgPool2d", r"at least 1x1", re.escape("(2, 3, 0, 4)")):
        nn.AdaptiveAvgPool2d(1)(np.zeros((2, 3, 0, 4), np.float32))
