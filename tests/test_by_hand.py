"""Forward values a gradient check cannot see, worked out by hand (and matching PyTorch): output
sizes in ceil mode, adaptive pooling's windows, ReLU's derivative at 0. Without these, such slips
are caught only by the PyTorch parity tests, which skip when torch is not installed."""
import numpy as np
import pytest

from nanotorch import nn
from nanotorch.nn.pooling import pool_output_size


@pytest.mark.parametrize("size, k, s, p, ceil, expected", [
    (7, 2, 2, 0, False, 3),    # floor(5 / 2) + 1
    (7, 2, 2, 0, True, 4),     # ceil(5 / 2) + 1: the model's 7x7 -> 4x4
    (5, 3, 2, 1, True, 3),     # ceil(4 / 2) + 1; the last window starts at 4 - 1 = 3, inside
    (4, 2, 3, 1, True, 2),     # ceil(4 / 3) + 1 = 3, but window 3 would start at 6 - 1 = 5, past the
                               # input and its left padding (6 >= 4 + 1): dropped, as PyTorch does
    (3, 2, 2, 1, True, 2),     # ceil(3 / 2) + 1 = 3, but window 3 would start at 4 - 1 = 3, just past the
])                             # input: dropped when (O - 1) s equals H + p too (4 >= 3 + 1), as PyTorch
def test_pool_output_size(size, k, s, p, ceil, expected):
    assert pool_output_size(size, k, s, p, ceil) == expected
    assert nn.MaxPool2d(k, s, p, ceil_mode=ceil)(np.zeros((1, 1, size, size), np.float32)).shape[2:] == (expected,) * 2


def test_adaptive_avg_pool_windows_overlap_as_pytorchs():
    """5 columns into 3: windows [floor(i*5/3), ceil((i+1)*5/3)) = [0, 2), [1, 4), [3, 5)."""
    x = np.arange(5, dtype=np.float64).reshape(1, 1, 1, 5)
    pool = nn.AdaptiveAvgPool2d((1, 3))
    np.testing.assert_array_equal(pool(x)[0, 0, 0], [0.5, 2.0, 3.5])
    dx = pool.backward(np.ones((1, 1, 1, 3)))
    np.testing.assert_allclose(dx[0, 0, 0], [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2])


def test_max_pool_2x2_with_padding_by_hand():
    """Kernel 2, stride 2 and padding 1 (not the unpadded 2x2 fast path): on a 4x4 image the windows
    are rows and columns [-1, 1), [1, 3), [3, 5), each holding its bottom-right pixel of the image."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    pool = nn.MaxPool2d(2, padding=1)
    np.testing.assert_array_equal(pool(x)[0, 0], [[0, 2, 3], [8, 10, 11], [12, 14, 15]])
    dx = pool.backward(np.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 2, 3], [0, 0, 0, 0], [4, 0, 5, 6], [7, 0, 8, 9]])


@pytest.mark.parametrize("p", [0.15, 0.25, 0.8])     # (not 0.5, where 1 / (1 - p) == 1 / p)
def test_dropout_scales_what_it_keeps_by_one_over_one_minus_p(p):
    """Inverted dropout: a kept value is x / (1 - p), a dropped one 0, and about a fraction p is
    dropped; the gradient is the same mask."""
    import nanotorch as nt
    nt.manual_seed(0)
    drop = nn.Dropout(p)
    y = drop(np.ones((100, 100)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)
    assert abs((~kept).mean() - p) < 0.03
    np.testing.assert_array_equal(drop.backward(np.full((100, 100), 2.0)), 2 * y)


def test_dropout_draws_from_its_own_generator_and_leaves_the_global_one_alone():
    """Dropout(generator=g) takes its mask from g: two layers given equally seeded generators drop the
    same values, whatever the global generator's seed, and the global generator is not advanced."""
    import nanotorch as nt
    x = np.ones((20, 30))
    nt.manual_seed(0)
    a = nn.Dropout(0.5, generator=np.random.default_rng(3))(x)
    state = nt.random.default_generator().bit_generator.state
    nt.manual_seed(1)
    b = nn.Dropout(0.5, generator=np.random.default_rng(3))(x)
    np.testing.assert_array_equal(a, b)
    nt.manual_seed(0)
    assert nt.random.default_generator().bit_generator.state == state       # (nothing drawn from it)


def test_relu_derivative_at_zero_is_zero():
    relu = nn.ReLU()
    relu(np.array([[-1.0, 0.0, -0.0, 2.0]]))
    np.testing.assert_array_equal(relu.backward(np.ones((1, 4))), [[0.0, 0.0, 0.0, 1.0]])
