"""Cross-entropy's loops: log-softmax with the loss forward, softmax minus one-hot backward.

    m_n      = max_k z[n, k]                                          (NaN if any z[n, k] is NaN)
    log p    = (z[n, k] - m_n) - log sum_k exp(z[n, k] - m_n)         (stable: every exp <= 1)
    nll_n    = -log p[n, t_n], or 0 where t_n == ignore_index
    d loss / d z[n, k] = scale_n * (exp(log p[n, k]) - [k == t_n]),   scale_n = d loss / d nll_n
                                                                      (0 for an ignored row)

log p and the gradient are in the logits' dtype, as in the NumPy references below; the sums (over
the classes inside the log, and of nll over the batch) are kept in float64 and rounded once, so a
float32 loss over a large batch is not off by N float32 roundings. Compiled because in NumPy the
forward of a batch of 4 is a dozen calls and the backward four, mostly call overhead. The results
agree with the references to rounding: exp and log come from the C library here, from NumPy's own
vector code there.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def cross_entropy_forward(logits, targets, ignore_index):
    """logits: (N, K) float, targets: (N,) integers -> (nll, total, kept, log_p, bad): nll (N,) in
    the logits' dtype (0 for a row whose target is ignore_index), their float64 sum, the number of
    rows not ignored, log_p (N, K), and the index of the first target neither in [0, K) nor
    ignore_index (-1 if none; nothing is then computed)."""
    n_, k_ = logits.shape
    t = logits.dtype.type
    log_p = np.empty_like(logits)
    nll = np.zeros(n_, dtype=logits.dtype)
    for n in range(n_):
        if targets[n] != ignore_index and (targets[n] < 0 or targets[n] >= k_):
            return nll, 0.0, 0, log_p, n
    total, kept = 0.0, 0
    for n in range(n_):
        z = logits[n]
        m = z[0]
        for k in range(1, k_):
            if z[k] > m or z[k] != z[k]:                       # NaN wins, as in np.max
                m = z[k]
        s = 0.0                                                # float64
        for k in range(k_):
            s += np.exp(z[k] - m)
        lse = t(np.log(s))
        for k in range(k_):
            log_p[n, k] = (z[k] - m) - lse
        if targets[n] != ignore_index:
            nll[n] = -log_p[n, targets[n]]
            total += nll[n]
            kept += 1
    return nll, total, kept, log_p, -1


@njit(cache=True, nogil=True)
def cross_entropy_backward(log_p, targets, ignore_index, scale):
    """log_p: (N, K) from cross_entropy_forward, targets: (N,), scale: (N,) float64, d loss / d nll_n
    -> d loss / d logits, (N, K), rounded to log_p's dtype; zero rows where the target is ignore_index."""
    n_, k_ = log_p.shape
    grad = np.empty_like(log_p)
    for n in range(n_):
        s = log_p.dtype.type(scale[n]) if targets[n] != ignore_index else log_p.dtype.type(0)
        for k in range(k_):
            g = np.exp(log_p[n, k])
            if k == targets[n]:
                g -= 1
            grad[n, k] = g * s
    return grad


def cross_entropy_forward_reference(logits, targets, ignore_index):
    """Plain NumPy twin (targets assumed valid): (nll, log_p)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True, dtype=np.float64)).astype(logits.dtype)
    log_p = shifted - lse
    kept = targets != ignore_index
    nll = np.zeros(len(targets), dtype=logits.dtype)
    nll[kept] = -log_p[np.arange(len(targets))[kept], targets[kept]]
    return nll, log_p


def cross_entropy_backward_reference(log_p, targets, ignore_index, scale):
    grad = np.exp(log_p)
    rows = np.arange(len(targets))
    kept = targets != ignore_index
    grad[rows[kept], targets[kept]] -= 1
    grad *= np.where(kept, scale, 0.0)[:, None]
    return grad.astype(log_p.dtype, copy=False)
