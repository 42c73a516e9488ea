"""GELU and its derivative, exact (erf) and tanh-approximated, as PyTorch defines them.

    exact:  y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
            dy/dx = Phi(x) + x * phi(x)
    tanh:   u = sqrt(2/pi) * (x + 0.044715 x^3),  y = x * (1 + tanh u) / 2
            dy/dx = (1 + tanh u) / 2 + x * (1 - tanh^2 u) / 2 * sqrt(2/pi) * (1 + 3 * 0.044715 x^2)

NumPy has no erf, which is why the exact form needs a compiled loop (math.erf) to be fast.
"""
import math

import numpy as np
from numba import njit

SQRT_HALF = 0.7071067811865476        # 1 / sqrt(2)
INV_SQRT_2PI = 0.3989422804014327     # 1 / sqrt(2 pi)
SQRT_2_OVER_PI = 0.7978845608028654   # sqrt(2 / pi)
COEF = 0.044715


@njit(cache=True)
def gelu_forward(x, tanh_approx):
    """Elementwise GELU of an array of any shape."""
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    for k in range(flat.size):
        v = flat[k]
        if tanh_approx:
            out[k] = 0.5 * v * (1.0 + math.tanh(SQRT_2_OVER_PI * (v + COEF * v * v * v)))
        else:
            out[k] = 0.5 * v * (1.0 + math.erf(v * SQRT_HALF))
    return out.reshape(x.shape)


@njit(cache=True)
def gelu_backward(x, dout, tanh_approx):
    """dx = dout * GELU'(x), elementwise."""
    xf = x.reshape(-1)
    df = dout.reshape(-1)
    dx = np.empty_like(df)
    for k in range(xf.size):
        v = xf[k]
        if tanh_approx:
            t = math.tanh(SQRT_2_OVER_PI * (v + COEF * v * v * v))
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * v * v)
        else:
            d = 0.5 * (1.0 + math.erf(v * SQRT_HALF)) + v * INV_SQRT_2PI * math.exp(-0.5 * v * v)
        dx[k] = df[k] * d
    return dx.reshape(x.shape)


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_forward_reference(x, tanh_approx):
    if tanh_approx:
        return 0.5 * x * (1 + np.tanh(SQRT_2_OVER_PI * (x + COEF * x ** 3)))
    return (0.5 * x * (1 + _erf(x * SQRT_HALF).astype(x.dtype))).astype(x.dtype)


def gelu_backward_reference(x, dout, tanh_approx):
    if tanh_approx:
        t = np.tanh(SQRT_2_OVER_PI * (x + COEF * x ** 3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * COEF * x * x)
    else:
        d = 0.5 * (1 + _erf(x * SQRT_HALF).astype(x.dtype)) + x * INV_SQRT_2PI * np.exp(-0.5 * x * x)
    return (dout * d).astype(x.dtype)
