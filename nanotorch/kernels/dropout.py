"""Dropout's mask and product in one loop.

    mask = (u >= p) * scale,   out = x * mask          (u: uniform draws in [0, 1), scale = 1 / (1 - p))

In x's dtype, as the NumPy formula computes it (the reference below): the same bits. The uniform
draws stay NumPy's (the global generator that nanotorch.manual_seed seeds). One loop because
for the model's 4 x 56 activations two NumPy operations, each with a temporary array, are mostly
call overhead.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def dropout_forward(x, u, p, scale):
    """x: any shape, u: uniform draws of x's shape -> (out, mask), both of x's shape and dtype."""
    t = x.dtype.type
    keep, zero = t(scale), t(0)
    flat_x, flat_u = np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(u).reshape(-1)
    mask, out = np.empty(flat_x.size, dtype=x.dtype), np.empty(flat_x.size, dtype=x.dtype)
    for i in range(flat_x.size):
        m = keep if flat_u[i] >= p else zero
        mask[i] = m
        out[i] = flat_x[i] * m
    return out.reshape(x.shape), mask.reshape(x.shape)


def dropout_forward_reference(x, u, p, scale):
    mask = (u >= p) * x.dtype.type(scale)
    return x * mask, mask
