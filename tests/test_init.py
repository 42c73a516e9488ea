"""nn.init: torch.nn.init's in-place initialisers, with values worked out by hand (parity with PyTorch's
bounds and distributions is in test_torch_parity.py)."""
import math

import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn
from nanotorch.nn import init


def test_calculate_gain_by_hand():
    for name in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "sigmoid"):
        assert init.calculate_gain(name) == 1
    assert init.calculate_gain("tanh") == 5 / 3 and init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01 ** 2))
    assert init.calculate_gain("leaky_relu", 0.2) == math.sqrt(2 / 1.04)
    assert init.calculate_gain("leaky_relu", 0) == math.sqrt(2) and init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="Unsupported nonlinearity gelu"):
        init.calculate_gain("gelu")
    with pytest.raises(ValueError, match="negative_slope True not a valid number"):
        init.calculate_gain("leaky_relu", True)


def test_fans_by_hand():
    assert init._calculate_fan_in_and_fan_out(np.empty((3, 5))) == (5, 3)               # Linear(5, 3)
    assert init._calculate_fan_in_and_fan_out(np.empty((4, 3, 2, 5))) == (30, 40)       # Conv2d(3, 4, (2, 5))
    assert init._calculate_fan_in_and_fan_out(nn.Linear(7, 2).weight) == (7, 2)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(np.empty(4))
    with pytest.raises(ValueError, match=r"Mode fan_avg not supported, please use one of \['fan_in', 'fan_out'\]"):
        init.kaiming_uniform_(np.empty((2, 2)), mode="fan_avg")


FILLS = [
    lambda t: init.uniform_(t, -2.0, 3.0), lambda t: init.normal_(t, 1.0, 0.5), lambda t: init.constant_(t, 0.25),
    init.zeros_, init.ones_, init.xavier_uniform_, init.xavier_normal_,
    lambda t: init.kaiming_uniform_(t, a=math.sqrt(5)), lambda t: init.kaiming_normal_(t, mode="fan_out")]


@pytest.mark.parametrize("fill", FILLS)
def test_each_initialiser_fills_in_place_and_returns_its_argument(fill):
    """A Parameter keeps its array (a view of flatten_parameters' vector stays one) and its dtype; an
    ndarray is filled itself."""
    layer = nn.Linear(30, 20)
    flat = nn.utils.flatten_parameters(layer.parameters())
    before = layer.weight.data
    assert fill(layer.weight) is layer.weight
    assert layer.weight.data is before and layer.weight.data.dtype == np.float32
    assert np.shares_memory(layer.weight.data, flat.data)
    np.testing.assert_array_equal(flat.data[:600].reshape(20, 30), layer.weight.data)
    array = np.full((20, 30), np.nan)
    assert fill(array) is array and np.isfinite(array).all() and array.dtype == np.float64


def test_constant_zeros_and_ones_exactly():
    w = nn.Parameter(np.random.default_rng(0).standard_normal((3, 4)))
    assert (init.constant_(w, -1.5).data == -1.5).all()
    assert (init.zeros_(w).data == 0).all() and (init.ones_(w).data == 1).all()


def test_uniform_bounds_and_normal_moments_on_a_large_tensor():
    """U(a, b) stays within [a, b] and fills it, with the uniform's mean and std; the normal's
    mean and std are those asked for (to 1%, with 10^6 values: a few standard errors)."""
    nt.manual_seed(0)
    x = init.uniform_(np.empty((1000, 1000), np.float32), -0.5, 1.5)
    assert x.min() >= -0.5 and x.max() <= 1.5 and x.min() < -0.4999 and x.max() > 1.4999
    assert abs(x.mean() - 0.5) < 0.01 and abs(x.std() / (2 / math.sqrt(12)) - 1) < 0.01
    x = init.normal_(np.empty((1000, 1000)), 2.0, 3.0)
    assert abs(x.mean() - 2.0) < 0.01 * 3 and abs(x.std() / 3.0 - 1) < 0.01
    w = init.kaiming_uniform_(np.empty((256, 64, 3, 3), np.float32), nonlinearity="relu")   # fan_in 576
    bound = math.sqrt(2) * math.sqrt(3 / 576)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    w = init.xavier_normal_(np.empty((256, 64, 3, 3)), gain=2.0)                             # fans 576, 2304
    assert abs(w.std() / (2.0 * math.sqrt(2 / (576 + 2304))) - 1) < 0.01


def test_initialisers_draw_from_the_global_generator_or_the_one_given():
    def drawn(**generator):
        return init.kaiming_normal_(np.empty((4, 3)), **generator).copy()
    nt.manual_seed(3)
    first = drawn()
    nt.manual_seed(3)
    np.testing.assert_array_equal(drawn(), first)
    assert not np.array_equal(drawn(), first)                    # the generator moved on
    mine = drawn(generator=np.random.default_rng(1))
    np.testing.assert_array_equal(drawn(generator=np.random.default_rng(1)), mine)


def test_default_layer_init_is_kaiming_uniform_with_a_sqrt5_and_unchanged():
    """The layers' U(-1/sqrt(fan_in), 1/sqrt(fan_in)) is kaiming_uniform_(a=sqrt(5))'s bound (to
    rounding: sqrt(3) * sqrt(1/3) / sqrt(fan_in)); the layers keep their own draws, bit for bit."""
    calls = []

    class Recorder:
        def uniform(self, low, high, size):
            calls.append((low, high))
            return np.zeros(size)
    init.kaiming_uniform_(np.empty((8, 3, 3, 3)), a=math.sqrt(5), generator=Recorder())
    assert calls[0][1] == pytest.approx(1 / math.sqrt(27), rel=1e-15) and calls[0][0] == -calls[0][1]
    nt.manual_seed(0)
    layer = nn.Conv2d(3, 8, 3)
    rng = np.random.default_rng(0)
    bound = 1 / math.sqrt(27)
    np.testing.assert_array_equal(layer.weight.data, rng.uniform(-bound, bound, (8, 3, 3, 3)).astype(np.float32))
    np.testing.assert_array_equal(layer.bias.data, rng.uniform(-bound, bound, 8).astype(np.float32))


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(TypeError, match="expected a nanotorch.nn.Parameter or a numpy array, got list"):
        init.normal_([0.0, 1.0])
    with pytest.raises(TypeError, match="floating-point.*int64"):
        init.uniform_(np.zeros(3, np.int64))
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
        empty = np.empty((0, 3))
        assert init.kaiming_uniform_(empty) is empty
