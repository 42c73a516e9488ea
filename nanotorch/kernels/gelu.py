"""GELU and its derivative, exact (erf) and tanh-approximated, as PyTorch defines them.

    exact:  y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
            dy/dx = Phi(x) + x * phi(x)
    tanh:   u = sqrt(2/pi) * (x + 0.044715 x^3),  y = x * (1 + tanh u) / 2
            dy/dx = (1 + tanh u) / 2 + x * (1 - tanh^2 u) / 2 * sqrt(2/pi) * (1 + 3 * 0.044715 x^2)

The forward returns the derivative too (it reuses the value's Phi, or for tanh its tanh u; only the
derivative needs phi), so the backward is a single product: dx = dout * dy/dx.

Precision per dtype (``gelu_and_grad`` picks by the element type at compile time):
- float64 uses libm's erf and exp: PyTorch's float64 numbers but for the last bits (PyTorch's
  vectorised erf is not libm's, and fastmath, which the loops are compiled with, rounds GELU'
  otherwise in ~12% of values: on a million values 1.8% of GELU and 25% of GELU' differ from
  PyTorch's, by at most 2.2e-16 * max(1, |x|) and 2.2e-16).
- float32 is computed in float32 lanes (8 or 16 per vector instruction), with no library call
  and no branch:
      Phi(x) = (1 + erf(z)) / 2,  erf(z) = z P(z^2) / Q(z^2),  z = x / sqrt 2 clamped to [-4, 4]
  (beyond 4, erf(z) rounds to +-1 in float32), P and Q of degrees 6 and 4: a rational fit made
  for nanotorch (coefficients and how below). phi needs exp(t), t = -x^2 / 2: exp(t) = 2^k exp(r)
  with k = round(t / ln 2), r = t - k ln 2, |r| <= ln(2) / 2, exp(r) by its degree-7 Taylor
  polynomial and 2^k built directly as the bits of a float32; GELU alone (inference: ``gelu``,
  ``gelu_inference``, and BatchNorm + GELU under no_grad) skips it. The error is within
  2.5e-7 * max(1, |x|) for y and 2.5e-7 for dy/dx (PyTorch's own float32 GELU: 3.3e-7 and 2.5e-7
  on the same test points). That bound is absolute: Phi = (1 + erf) / 2 cancels for x < -3,
  where GELU itself is tiny (|y| <= 4.05e-3), so the relative error grows there.
  With no library call and no branch the loops vectorise; GELU alone needs no exp, which makes it
  about half the cost of GELU with GELU' (0.38 against 0.66 ns a value on one core of the Zen 4:
  docs/performance.md).
NumPy has no erf, which is why GELU needs compiled loops at all.
"""
import math

import numpy as np
from numba import njit, types
from llvmlite import ir
from numba.extending import intrinsic, overload

SQRT_HALF = 0.7071067811865476        # 1 / sqrt(2)
INV_SQRT_2PI = 0.3989422804014327     # 1 / sqrt(2 pi)
SQRT_2_OVER_PI = 0.7978845608028654   # sqrt(2 / pi)
COEF = 0.044715
FAST = dict(fastmath=True, error_model="numpy")   # no division-by-zero checks: lets loops vectorise


def float32_from_bits(i):
    """The float32 whose IEEE-754 bits are the int32 ``i`` (a reinterpretation, not a conversion)."""
    return np.int32(i).view(np.float32)


@intrinsic
def _bitcast_int32_to_float32(typingctx, i):
    return types.float32(types.int32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.FloatType())


@overload(float32_from_bits, inline="always")
def _float32_from_bits_compiled(i):
    return lambda i: _bitcast_int32_to_float32(i)


F = np.float32
LOG2E, LN2_HI, LN2_LO = F(1.4426950408889634), F(0.693145751953125), F(1.4286068203094173e-06)


@njit(inline="always", **FAST)
def exp_float32(y):
    """exp(y) for float32 y in [-87, 88]: 2^k * exp(r), y = k ln 2 + r (ln 2 split in two for an exact r)."""
    k = np.int32(y * LOG2E + F(127.5)) - np.int32(127)           # round(y / ln 2); truncation of a positive
    r = (y - F(k) * LN2_HI) - F(k) * LN2_LO
    p = F(1) + r * (F(1) + r * (F(1 / 2) + r * (F(1 / 6) + r * (F(1 / 24) + r * (F(1 / 120) + r * (
        F(1 / 720) + r * F(1 / 5040)))))))
    return p * float32_from_bits((k + np.int32(127)) << np.int32(23))   # 2^k: exponent field k + 127


# erf(z) ~ z * P(z^2) / Q(z^2) on [0, 4]: a rational fit (degrees 6 and 4 in z^2) computed for
# nanotorch by iteratively reweighted least squares against math.erf; fit error 5.4e-8, and 4.4e-7
# when evaluated in float32 (both measured on 400,001 points of [-6, 6] after clamping to [-4, 4]).
ERF_P = (F(1.1283786778726541), F(0.21394293895323727), F(0.05243325032751984), F(0.004292943299079968),
         F(0.00015553136250778856), F(-1.990247049391012e-06), F(1.921637936716638e-08))
ERF_Q = (F(1.0), F(0.5229296542160107), F(0.12079889732495148), F(0.015550923926574195), F(0.0010980012887287034))


@njit(inline="always", **FAST)
def _phi_cdf(u):
    """Phi(u) = (1 + erf(z)) / 2 for float32 u, z = u / sqrt 2 clamped to [-4, 4] (beyond, erf(z)
    rounds to +-1 in float32), erf by the rational fit above: no exp, no branch. The result is
    kept >= 0: the fit at z = -4 is a hair below -1, and a negative Phi would make GELU of a large
    negative u positive, growing with |u| (with the max, u * Phi is -0.0 there, as PyTorch's). At
    the other end Phi may be 1 + 1.2e-7 (one float32 step): within the stated error, not clamped."""
    z = min(max(u * F(SQRT_HALF), F(-4.0)), F(4.0))
    t = z * z
    p = ERF_P[0] + t * (ERF_P[1] + t * (ERF_P[2] + t * (ERF_P[3] + t * (ERF_P[4] + t * (ERF_P[5] + t * ERF_P[6])))))
    q = ERF_Q[0] + t * (ERF_Q[1] + t * (ERF_Q[2] + t * (ERF_Q[3] + t * ERF_Q[4])))
    return max(F(0.5) + F(0.5) * (z * p / q), F(0.0))


@njit(inline="always", **FAST)
def gelu_fast(u):
    """GELU(u) alone (no derivative, so no exp) for float32 u, vectorisable: u * Phi(u). Used where
    nothing needs GELU': inference."""
    return u * _phi_cdf(u)


@njit(inline="always", **FAST)
def gelu_and_grad_fast(u):
    """(GELU(u), GELU'(u)) for float32 u in float32 arithmetic, vectorisable; see the module docstring."""
    x = min(max(u, F(-9.0)), F(9.0))                  # keeps exp in range; beyond 9, u * phi(u) < 1e-16
    cdf = _phi_cdf(u)
    return u * cdf, cdf + x * F(INV_SQRT_2PI) * exp_float32(F(-0.5) * x * x)


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


def gelu(u):
    """GELU(u) alone for one element: float32 by gelu_fast, float64 by libm's erf. This body runs
    only without JIT; compiled code takes the overload below."""
    return gelu_fast(u) if isinstance(u, np.float32) else gelu_and_grad_exact(u)[0]


@overload(gelu, inline="always", jit_options=FAST)
def _gelu_by_type(u):
    if u == types.float32:
        return lambda u: gelu_fast(u)
    return lambda u: gelu_and_grad_exact(u)[0]


@njit(cache=True, nogil=True, **FAST)
def gelu_inference(x):
    """x: C-contiguous float array, any shape -> GELU(x) alone (gelu above), shaped like x."""
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    for k in range(flat.size):
        y[k] = gelu(flat[k])
    return y.reshape(x.shape)


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
