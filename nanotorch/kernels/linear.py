"""Linear's products for small layers: forward, and the three gradients in one call.

    forward:   y[n, o]  = sum over k of x[n, k] * w[o, k]  + b[o]
    backward:  dw[o, :] += sum over n of dy[n, o] * x[n, :]        (added into the weight's grad)
               db[o]    += sum over n of dy[n, o]                  (added into the bias's grad)
               dx[n, :]  = sum over o of dy[n, o] * w[o, :]

For the MNIST model's head (batch 4: 28 -> 56 and 56 -> 10) a BLAS call costs more than its
arithmetic, and in NumPy the forward is two calls (a matrix product and the bias) and the backward
five (two products, a sum over the batch, two additions into the gradients). These loops do the
same in one call each way; nn.Linear uses them below SMALL_LINEAR multiply-adds and
BLAS above, where its blocking wins. The backward's sums run along contiguous rows, in order (the
same bits on every run and every thread count); the forward's dot products are reassociated so
that they vectorise, which rounds differently from BLAS's order (both are float32 sums).
"""
import numpy as np
from numba import njit

SMALL_LINEAR = 1 << 16          # N * in * out below which nn.Linear uses these loops


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def linear_forward(x, w, b, has_bias):
    """x: (N, in), w: (out, in), b: (out,) (read only if has_bias) -> y: (N, out) in x's dtype."""
    n_, in_ = x.shape
    out_ = w.shape[0]
    if w.shape[1] != in_ or (has_bias and b.size != out_):
        raise ValueError("linear_forward: expected x (N, in), w (out, in) and b (out,)")
    y = np.empty((n_, out_), dtype=x.dtype)
    for n in range(n_):
        xn = x[n]
        for o in range(out_):
            wo = w[o]
            s = x.dtype.type(0)
            for k in range(in_):
                s += xn[k] * wo[k]
            y[n, o] = s + b[o] if has_bias else s
    return y


@njit(cache=True, nogil=True)
def linear_backward(dy, x, w, dw, db, has_bias):
    """dy: (N, out), x: (N, in), w: (out, in) -> dx: (N, in); adds dw (out, in) and, if has_bias,
    db (out,) into the given gradient arrays."""
    n_, in_ = x.shape
    out_ = w.shape[0]
    if (dy.shape[0] != n_ or dy.shape[1] != out_ or w.shape[1] != in_ or dw.shape[0] != out_ or dw.shape[1] != in_
            or (has_bias and db.size != out_)):
        raise ValueError("linear_backward: expected dy (N, out), x (N, in), w and dw (out, in), db (out,)")
    dx = np.zeros((n_, in_), dtype=dy.dtype)
    for o in range(out_):
        dwo, wo = dw[o], w[o]
        s = dy.dtype.type(0)
        for n in range(n_):
            g, xn, dxn = dy[n, o], x[n], dx[n]
            s += g
            for k in range(in_):
                dwo[k] += g * xn[k]
                dxn[k] += g * wo[k]
        if has_bias:
            db[o] += s
    return dx


def linear_forward_reference(x, w, b):
    return x @ w.T + b if b is not None else x @ w.T


def linear_backward_reference(dy, x, w):
    """-> (dx, dw, db) as plain NumPy products."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)
