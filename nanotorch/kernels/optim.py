"""The update's vector loops: the squared norm that clip_grad_norm_ needs and SGD's step.

With the model's parameters flattened into one vector (nn.utils.flatten_parameters), clipping and
the optimiser step are a few passes over its 18,582 values. In NumPy each pass would be a
separate call with a temporary array (the float64 copy for the norm, lr * g, ...); these loops
make one pass each, with no temporaries.

SGD's loop does PyTorch's operations in PyTorch's order, so its bits are PyTorch's: each
``x.add_(y, alpha=a)`` of torch.optim.SGD is a fused multiply-add on the CPU (ATen's vectorised
``add`` is ``fmadd(y, alpha, x)``: one rounding, on its AVX2, AVX-512 and NEON builds; its scalar
DEFAULT build rounds twice), and ``buf.mul_(momentum)`` a plain product. Here
those are ``fma`` below (LLVM's ``llvm.fma``: one rounding, in hardware where the CPU has FMA) and
a product; the loop is compiled without fastmath, so LLVM fuses nothing else.
"""
import math
from fractions import Fraction

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def sum_of_squares(x):
    """x: 1-D float array -> sum of x_i^2 accumulated in float64 (reassociated, so the loop vectorises)."""
    s = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v * v
    return s


def sum_of_squares_reference(x):
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(np.dot(x, x))


def fma(a, b, c):
    """a * b + c rounded once (a fused multiply-add), for three floats of one type. This body runs
    only without JIT (NUMBA_DISABLE_JIT=1), as fma_reference; compiled code takes LLVM's fma below."""
    return fma_reference(a, b, c)[()]


@intrinsic
def _llvm_fma(typingctx, a, b, c):
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [t], ir.FunctionType(t, [t, t, t]))
        return builder.call(fn, args)
    return a(a, b, c), codegen


@overload(fma, inline="always")
def _fma_compiled(a, b, c):
    return lambda a, b, c: _llvm_fma(a, b, c)


def fma_reference(a, b, c):
    """a * b + c rounded once, elementwise, for float32 or float64 arrays or scalars of one dtype.

    float32 through float64, where the product is exact (24 + 24 bits): only the sum rounds before
    the result rounds to float32, which equals one rounding except when the float64 sum falls
    exactly halfway between two float32 values (a chance of about 2^-29 a value for random data).
    float64 exactly, by fractions: slow, for tests."""
    a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
    if a.dtype == np.float64:
        return np.vectorize(_fma_exact, otypes=[np.float64])(a, b, c)
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(a.dtype)


def _fma_exact(x, y, z):
    """x * y + z for Python floats, rounded once (fractions are exact; float() rounds to nearest)."""
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
        return x * y + z                                 # an inf or NaN comes out as the fused instruction's
    exact = Fraction(x) * Fraction(y) + Fraction(z)
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


@njit(cache=True, nogil=True)
def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """In place on 1-D arrays of one dtype, for each i (the scalars rounded to that dtype, as PyTorch
    does), torch.optim.SGD's ``add_``s as fused multiply-adds (``fma(x, a, y)`` = x * a + y, one rounding):

        d = fma(p, weight_decay, g)                                  (g if weight_decay == 0)
        buf = d if first else fma(d, 1 - dampening, buf * momentum)  (only if momentum != 0)
        d = fma(buf, momentum, d) if nesterov else buf               (only if momentum != 0)
        p = fma(d, -lr, p)

    ``g`` is not changed."""
    t = p.dtype.type
    neg_lr, m_, keep, wd = t(-lr), t(momentum), t(1 - dampening), t(weight_decay)
    for i in range(p.size):
        d = g[i]
        if weight_decay != 0:
            d = fma(p[i], wd, d)
        if momentum != 0:
            b = d if first else fma(d, keep, buf[i] * m_)
            buf[i] = b
            d = fma(b, m_, d) if nesterov else b
        p[i] = fma(d, neg_lr, p[i])


def sgd_update_reference(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """sgd_update in NumPy, its multiply-adds by fma_reference."""
    t = p.dtype.type
    d = fma_reference(p, t(weight_decay), g) if weight_decay != 0 else g
    if momentum != 0:
        buf[...] = d if first else fma_reference(d, t(1 - dampening), buf * t(momentum))
        d = fma_reference(buf, t(momentum), d) if nesterov else buf
    p[...] = fma_reference(d, t(-lr), p)
