"""GELU and its derivative, exact (erf) and tanh-approximated, as PyTorch defines them.

    exact:  y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
            dy/dx = Phi(x) + x * phi(x)
    tanh:   u = sqrt(2/pi) * (x + 0.044715 x^3),  y = x * (1 + tanh u) / 2
            dy/dx = (1 + tanh u) / 2 + x * (1 - tanh^2 u) / 2 * sqrt(2/pi) * (1 + 3 * 0.044715 x^2)

The forward returns the derivative too (it shares Phi and phi with the value), so the backward
is a single product: dx = dout * dy/dx.

Precision per dtype (``gelu_and_grad`` picks by the element type at compile time):
- float64 uses libm's erf and exp: PyTorch's float64 numbers to the last bits.
- float32 uses ``erfc`` of Numerical Recipes (Chebyshev fit, relative error < 1.2e-7) and an exp
  built from multiply-adds (Taylor series of exp(y/128), squared 7 times), both evaluated in
  float64. Every operation is a multiply, add, divide or select, so the compiler vectorises the
  loop (libm's erf is a scalar call, ~10x slower); the result is within 2.4e-7 of the exact
  value, about one float32 rounding step.
NumPy has no erf, which is why GELU needs compiled loops at all.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

SQRT_HALF = 0.7071067811865476        # 1 / sqrt(2)
INV_SQRT_2PI = 0.3989422804014327     # 1 / sqrt(2 pi)
SQRT_2_OVER_PI = 0.7978845608028654   # sqrt(2 / pi)
COEF = 0.044715
FAST = dict(fastmath=True, error_model="numpy")   # no division-by-zero checks: lets loops vectorise


@njit(inline="always", **FAST)
def _exp_small(y):
    """exp(y) for y in [-45, 1] from multiply-adds: (Taylor_10(y / 128))^128, relative error ~1e-10."""
    w = y * 0.0078125
    p = 1.0 + w * (1.0 + w * (1 / 2 + w * (1 / 6 + w * (1 / 24 + w * (1 / 120 + w * (
        1 / 720 + w * (1 / 5040 + w * (1 / 40320 + w * (1 / 362880)))))))))
    for _ in range(7):
        p = p * p
    return p


@njit(inline="always", **FAST)
def gelu_and_grad_fast(u):
    """(GELU(u), GELU'(u)) to float32 accuracy, vectorisable. |u| > 9 is clamped (Phi is 0 or 1 there)."""
    x = min(max(float(u), -9.0), 9.0)
    z = abs(x) * SQRT_HALF
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    g = _exp_small(-z * z)                         # exp(-x^2 / 2) = sqrt(2 pi) phi(x)
    half_erfc = 0.5 * t * g * _exp_small(poly)     # erfc(|x| / sqrt 2) / 2 = Phi(-|x|)
    cdf = 1.0 - half_erfc if x >= 0 else half_erfc
    return u * cdf, cdf + u * INV_SQRT_2PI * g


@njit(inline="always")
def gelu_and_grad_exact(u):
    cdf = 0.5 * (1.0 + math.erf(u * SQRT_HALF))
    return u * cdf, cdf + u * INV_SQRT_2PI * math.exp(-0.5 * u * u)


def gelu_and_grad(u):
    """(GELU(u), GELU'(u)) for one element, by dtype as the module docstring says. This body runs
    only without JIT (NUMBA_DISABLE_JIT=1); compiled code takes the overload below."""
    return gelu_and_grad_fast(u) if isinstance(u, np.float32) else gelu_and_grad_exact(u)


@overload(gelu_and_grad, inline="always", jit_options=FAST)
def _gelu_and_grad_by_type(u):
    if u == types.float32:
        return lambda u: gelu_and_grad_fast(u)
    return lambda u: gelu_and_grad_exact(u)


@njit(cache=True, nogil=True, **FAST)
def _gelu_erf(x):
    flat = x.reshape(-1)
    y, d = np.empty_like(flat), np.empty_like(flat)
    for k in range(flat.size):
        y[k], d[k] = gelu_and_grad(flat[k])
    return y.reshape(x.shape), d.reshape(x.shape)


@njit(cache=True, nogil=True)
def _gelu_tanh(x):
    flat = x.reshape(-1)
    y, d = np.empty_like(flat), np.empty_like(flat)
    for k in range(flat.size):
        v = flat[k]
        t = math.tanh(SQRT_2_OVER_PI * (v + COEF * v * v * v))
        y[k] = 0.5 * v * (1.0 + t)
        d[k] = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * v * v)
    return y.reshape(x.shape), d.reshape(x.shape)


def gelu_forward(x, approximate="none"):
    """x: C-contiguous float array, any shape -> (GELU(x), GELU'(x)), both shaped like x."""
    return _gelu_tanh(x) if approximate == "tanh" else _gelu_erf(x)


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_forward_reference(x, approximate="none"):
    """Plain NumPy (and math.erf) twin of gelu_forward, computed in float64."""
    v = x.astype(np.float64)
    if approximate == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (v + COEF * v ** 3))
        y = 0.5 * v * (1 + t)
        d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * COEF * v * v)
    else:
        cdf = 0.5 * (1 + _erf(v * SQRT_HALF).astype(np.float64))
        y = v * cdf
        d = cdf + v * INV_SQRT_2PI * np.exp(-0.5 * v * v)
    return y.astype(x.dtype), d.astype(x.dtype)
