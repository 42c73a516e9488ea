"""Cross-entropy's loops: log-softmax with the loss forward, softmax minus one-hot backward.

    m_n      = max_k z[n, k]                                          (NaN if any z[n, k] is NaN)
    log p    = (z[n, k] - m_n) - log sum_k exp(z[n, k] - m_n)         (stable: every exp <= 1)
    loss     = -sum_n log p[n, t_n], divided by N for reduction='mean'
    d loss / d z[n, k] = scale * (exp(log p[n, k]) - [k == t_n]),     scale = grad_out / N or grad_out

In the logits' dtype, as the NumPy references below compute it. Compiled because in NumPy the
forward of a batch of 4 is a dozen calls and the backward four, mostly call overhead. The results
agree with the references to rounding: exp and log come from the C library here, from NumPy's own
vector code there.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def cross_entropy_forward(logits, targets, mean):
    """logits: (N, K) float, targets: (N,) integers -> (loss, log_p: (N, K), bad): the loss in the
    logits' dtype (the mean over the batch if ``mean``, else the sum), and the index of the first
    target outside [0, K) (-1 if none; the loss and log_p are then not computed)."""
    n_, k_ = logits.shape
    t = logits.dtype.type
    log_p = np.empty_like(logits)
    for n in range(n_):
        if targets[n] < 0 or targets[n] >= k_:
            return t(0), log_p, n
    nll = t(0)
    for n in range(n_):
        z = logits[n]
        m = z[0]
        for k in range(1, k_):
            if z[k] > m or z[k] != z[k]:                       # NaN wins, as in np.max
                m = z[k]
        s = t(0)
        for k in range(k_):
            s += np.exp(z[k] - m)
        lse = np.log(s)
        for k in range(k_):
            log_p[n, k] = (z[k] - m) - lse
        nll -= log_p[n, targets[n]]
    if not mean:
        return nll, log_p, -1
    return (nll / t(n_) if n_ else t(np.nan)), log_p, -1


@njit(cache=True, nogil=True)
def cross_entropy_backward(log_p, targets, scale):
    """log_p: (N, K) from cross_entropy_forward, targets: (N,) -> d loss / d logits, (N, K), for a
    loss gradient ``scale`` (grad_out / N for the mean), rounded to log_p's dtype."""
    n_, k_ = log_p.shape
    s = log_p.dtype.type(scale)
    grad = np.empty_like(log_p)
    for n in range(n_):
        for k in range(k_):
            g = np.exp(log_p[n, k])
            if k == targets[n]:
                g -= 1
            grad[n, k] = g * s
    return grad


def cross_entropy_forward_reference(logits, targets, mean):
    """Plain NumPy twin (targets assumed valid): (loss, log_p)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_p[np.arange(len(targets)), targets]
    return (nll.sum() / len(targets) if mean else nll.sum()), log_p


def cross_entropy_backward_reference(log_p, targets, scale):
    grad = np.exp(log_p)
    grad[np.arange(len(targets)), targets] -= 1
    return (grad * scale).astype(log_p.dtype, copy=False)
