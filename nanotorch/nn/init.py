"""PyTorch's default initialisation of Conv2d and Linear.

PyTorch initialises weights with ``kaiming_uniform_(w, a=sqrt(5))``: gain = sqrt(2 / (1 + a^2))
= sqrt(1/3), std = gain / sqrt(fan_in), bound = sqrt(3) * std = 1 / sqrt(fan_in); and biases
with U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Both are therefore U(-b, b) with b = 1/sqrt(fan_in).
"""
import math

import numpy as np

from nanotorch.random import default_generator


def uniform_array(shape, bound, generator=None, dtype=np.float32):
    """A new array of U(-bound, bound) values. (Not torch.nn.init's uniform_, which fills a tensor in place.)"""
    rng = generator if generator is not None else default_generator()
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def default_weight_and_bias(weight_shape, fan_in, bias=True, dtype=np.float32):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and (optionally) the bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    w = uniform_array(weight_shape, bound, dtype=dtype)
    b = uniform_array((weight_shape[0],), bound, dtype=dtype) if bias else None
    return w, b
