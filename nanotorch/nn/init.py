"""Initialisation: the layers' default, and torch.nn.init's in-place initialisers.

PyTorch initialises Conv2d and Linear weights with ``kaiming_uniform_(w, a=sqrt(5))``: gain =
sqrt(2 / (1 + a^2)) = sqrt(1/3), std = gain / sqrt(fan_in), bound = sqrt(3) * std = 1 / sqrt(fan_in);
and biases with U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Both are therefore U(-b, b) with b = 1/sqrt(fan_in),
which ``default_weight_and_bias`` draws (with b computed as 1/sqrt(fan_in): the same bound to rounding).

The initialisers below (``uniform_``, ``normal_``, ``constant_``, ``zeros_``, ``ones_``, ``xavier_*``,
``kaiming_*``, ``calculate_gain``) take PyTorch's arguments and compute PyTorch's bounds and stds. Each
fills a Parameter's ``data`` (or an ndarray) in place and returns its argument; the random ones draw
from nanotorch's global generator (``nanotorch.manual_seed``), or from the NumPy Generator given.
For a weight of shape (out, in, *kernel): fan_in = in * prod(kernel), fan_out = out * prod(kernel).

    xavier (Glorot):  std = gain * sqrt(2 / (fan_in + fan_out))     uniform: bound = sqrt(3) * std
    kaiming (He):     std = gain / sqrt(fan)                        fan = fan_in or fan_out (mode)
"""
import math
import warnings

import numpy as np

from nanotorch.nn.module import Parameter
from nanotorch.random import default_generator


def uniform_array(shape, bound, generator=None, dtype=np.float32):
    """A new array of U(-bound, bound) values. (The layers' default; uniform_ fills an array in place.)"""
    rng = generator if generator is not None else default_generator()
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def default_weight_and_bias(weight_shape, fan_in, bias=True, dtype=np.float32):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and (optionally) the bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    w = uniform_array(weight_shape, bound, dtype=dtype)
    b = uniform_array((weight_shape[0],), bound, dtype=dtype) if bias else None
    return w, b


# --- torch.nn.init ---------------------------------------------------------------------------------
def calculate_gain(nonlinearity, param=None):
    """The gain PyTorch recommends after ``nonlinearity``: 1 for linear, convolutions and sigmoid;
    5/3 for tanh; sqrt(2) for relu; sqrt(2 / (1 + slope^2)) for leaky_relu (``param`` its negative
    slope, default 0.01); 3/4 for selu."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill ``tensor`` with U(a, b) values, in place; returns it."""
    array = _array(tensor, "uniform_", random=True)
    array[...] = _generator(generator).uniform(a, b, size=array.shape)
    return tensor


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill ``tensor`` with N(mean, std^2) values, in place; returns it."""
    array = _array(tensor, "normal_", random=True)
    array[...] = _generator(generator).normal(mean, std, size=array.shape)
    return tensor


def constant_(tensor, val):
    """Fill ``tensor`` with ``val``, in place; returns it."""
    _array(tensor, "constant_")[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-bound, bound), bound = gain * sqrt(3 / fan) (He et al., 2015): fan is fan_in or fan_out
    (``mode``), gain ``calculate_gain(nonlinearity, a)`` (``a``: leaky_relu's negative slope)."""
    if 0 in _array(tensor, "kaiming_uniform_").shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_calculate_correct_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """N(0, std^2), std = gain / sqrt(fan) (He et al., 2015), fan and gain as kaiming_uniform_'s."""
    if 0 in _array(tensor, "kaiming_normal_").shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_calculate_correct_fan(tensor, mode))
    return normal_(tensor, 0, std, generator)


def _calculate_fan_in_and_fan_out(tensor):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel), as PyTorch's function of this name."""
    shape = _array(tensor, "_calculate_fan_in_and_fan_out").shape
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive_field_size = math.prod(shape[2:])
    return shape[1] * receptive_field_size, shape[0] * receptive_field_size


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of ['fan_in', 'fan_out']")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _array(tensor, fn, random=False):
    """The array ``fn`` fills: a Parameter's data, or an ndarray itself (a random fill needs floats)."""
    array = tensor.data if isinstance(tensor, Parameter) else tensor
    if not isinstance(array, np.ndarray):
        raise TypeError(f"nn.init.{fn}: expected a nanotorch.nn.Parameter or a numpy array, "
                        f"got {type(tensor).__name__}")
    if random and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"nn.init.{fn}: random values need a floating-point array, got {array.dtype}")
    return array


def _generator(generator):
    return generator if generator is not None else default_generator()
