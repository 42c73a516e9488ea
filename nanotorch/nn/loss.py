"""CrossEntropyLoss: log-softmax and negative log-likelihood in one step, as PyTorch.

    logits z: (N, K), targets t: (N,) integers in [0, K)
    log p = z - logsumexp(z),  logsumexp(z) = max(z) + log sum exp(z - max(z))   (stable)
    loss = -(1/N) sum_n log p[n, t_n]                         (reduction='mean'; 'sum' drops the 1/N)

Backward: d loss / d z = (softmax(z) - onehot(t)) / N, since d logsumexp / d z = softmax(z).

Both directions are one compiled loop each (nanotorch/kernels/loss.py, with the NumPy formulas
beside them).
"""
import warnings

import numpy as np

from nanotorch.kernels import cross_entropy_backward, cross_entropy_forward
from nanotorch.nn._checks import check_input, only_default
from nanotorch.nn.module import Module


class CrossEntropyLoss(Module):
    """``loss = crit(logits, targets)`` returns the loss; ``crit.backward()`` returns d loss / d logits."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__()
        for name, value, default in (("weight", weight, None), ("ignore_index", ignore_index, -100),
                                     ("label_smoothing", label_smoothing, 0.0)):
            only_default(self, name, value, default)
        if size_average is not None or reduce is not None:         # PyTorch's deprecated pair overrides reduction
            reduction = _legacy_reduction(size_average, reduce)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits, targets):
        check_input(self, logits, (2,), what="logits")
        targets = np.asarray(targets)
        n, k = logits.shape
        if targets.shape != (n,) or targets.dtype.kind not in "iu":            # integers, signed or not
            raise ValueError(f"CrossEntropyLoss expects integer targets of shape ({n},), "
                             f"got {targets.dtype} {targets.shape}")
        loss, log_p, bad = cross_entropy_forward(logits, targets, self.reduction == "mean")
        if bad >= 0:
            raise ValueError(f"CrossEntropyLoss: targets must be class indices in [0, {k}), "
                             f"got values from {targets.min()} to {targets.max()}")
        self.save_for_backward(log_p, targets)
        return logits.dtype.type(loss)

    def backward(self, grad_out=1.0):
        log_p, targets = self.saved_for_backward()
        n = log_p.shape[0]             # N = 0: an empty (0, K) gradient, as PyTorch (not grad_out / 0)
        return cross_entropy_backward(log_p, targets, grad_out / max(n, 1) if self.reduction == "mean" else grad_out)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


def _legacy_reduction(size_average, reduce):
    """PyTorch's deprecated ``size_average`` and ``reduce`` (each None meaning True) as a reduction:
    reduce=False -> 'none', else size_average -> 'mean' or 'sum'; it warns, as PyTorch does."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    reduction = ("mean" if size_average else "sum") if reduce else "none"
    warnings.warn(f"size_average and reduce are deprecated, as in PyTorch: use reduction={reduction!r} instead",
                  UserWarning, stacklevel=3)
    return reduction
