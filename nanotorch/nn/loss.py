"""CrossEntropyLoss: log-softmax and negative log-likelihood in one step, as PyTorch.

    logits z: (N, K), targets t: (N,) integers in [0, K), or ignore_index for a row to skip
    log p = z - logsumexp(z),  logsumexp(z) = max(z) + log sum exp(z - max(z))   (stable)
    nll_n = -log p[n, t_n]  over the M rows not ignored (0 for an ignored row)
    loss  = (1/M) sum_n nll_n   (reduction='mean'; 'sum' drops the 1/M; 'none' returns nll itself)

Backward: d nll_n / d z[n] = softmax(z[n]) - onehot(t_n), since d logsumexp / d z = softmax(z);
the loss's gradient scales row n by d loss / d nll_n: 1/M for the mean, 1 for the sum, the
upstream gradient's entry n for 'none', and 0 for an ignored row. With every row ignored the
mean is 0/0 = NaN and the gradient zero, as in PyTorch.

Both directions are one compiled loop each (nanotorch/kernels/loss.py, with the NumPy formulas
beside them).

Not implemented (refused with an error that says so): PyTorch's weight, label_smoothing,
(N, C, d1, ...) logits and class-probability targets.
"""
import warnings

import numpy as np

from nanotorch.kernels import cross_entropy_backward, cross_entropy_forward
from nanotorch.nn._checks import check_input, only_default
from nanotorch.nn.module import Module


class CrossEntropyLoss(Module):
    """``loss = crit(logits, targets)`` returns the loss; ``crit.backward()`` returns d loss / d logits
    (with reduction='none', ``crit.backward(grad)`` takes d loss / d nll, one entry a row)."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__()
        if size_average is not None or reduce is not None:         # PyTorch's deprecated pair overrides reduction
            reduction = _legacy_reduction(size_average, reduce)
        if reduction == "elementwise_mean":                        # PyTorch's old name, accepted with a warning
            warnings.warn("reduction='elementwise_mean' is deprecated, as in PyTorch: use reduction='mean' instead",
                          UserWarning, stacklevel=2)
            reduction = "mean"
        self.weight, self.ignore_index, self.reduction, self.label_smoothing = (weight, ignore_index, reduction,
                                                                                label_smoothing)
        self._check_arguments()

    def _check_arguments(self):
        """The arguments as they are now (they may be set after __init__, as in PyTorch)."""
        only_default(self, "weight", self.weight, None)
        only_default(self, "label_smoothing", self.label_smoothing, 0.0)
        if isinstance(self.ignore_index, (bool, np.bool_)) or not isinstance(self.ignore_index, (int, np.integer)):
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an int, got {self.ignore_index!r}")
        if self.reduction not in ("mean", "sum", "none"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', got {self.reduction!r}")

    def forward(self, logits, targets):
        self._check_arguments()
        if isinstance(logits, np.ndarray) and logits.ndim > 2:
            raise ValueError(f"CrossEntropyLoss expects (N, C) logits, got shape {logits.shape}: PyTorch's "
                             f"(N, C, d1, ...) logits are not implemented in nanotorch (move the class axis last "
                             f"and flatten: np.moveaxis(logits, 1, -1).reshape(-1, C), targets.reshape(-1))")
        check_input(self, logits, (2,), what="logits")
        targets = np.asarray(targets)
        n, k = logits.shape
        if targets.shape == logits.shape and targets.dtype.kind == "f":
            raise ValueError(f"CrossEntropyLoss expects integer targets of shape ({n},): PyTorch's class-probability "
                             f"targets (floats of the logits' shape, {targets.shape}) are not implemented in nanotorch")
        if targets.shape != (n,) or targets.dtype.kind not in "iu":            # integers, signed or not
            raise ValueError(f"CrossEntropyLoss expects integer targets of shape ({n},), "
                             f"got {targets.dtype} {targets.shape}")
        ignore_index = int(self.ignore_index)
        nll, total, kept, log_p, bad = cross_entropy_forward(logits, targets, ignore_index)
        if bad >= 0:
            raise ValueError(f"CrossEntropyLoss: targets must be class indices in [0, {k}) or ignore_index "
                             f"({ignore_index}), got {targets[bad]} (row {bad})")
        self.save_for_backward(log_p, targets, kept, ignore_index, self.reduction)
        if self.reduction == "none":
            return nll
        return logits.dtype.type(total if self.reduction == "sum" else total / kept if kept else np.nan)

    def backward(self, grad_out=None):
        log_p, targets, kept, ignore_index, reduction = self.saved_for_backward()
        n = log_p.shape[0]
        if reduction == "none":
            if grad_out is None or np.shape(grad_out) != (n,):
                raise ValueError(f"CrossEntropyLoss(reduction='none').backward expects the gradient of the "
                                 f"per-row losses, shape ({n},), got {None if grad_out is None else np.shape(grad_out)}")
            scale = np.asarray(grad_out, dtype=np.float64)
        else:
            grad_out = 1.0 if grad_out is None else float(grad_out)
            scale = np.full(n, grad_out / max(kept, 1) if reduction == "mean" else grad_out)
        return cross_entropy_backward(log_p, targets, ignore_index, scale)


def _legacy_reduction(size_average, reduce):
    """PyTorch's deprecated ``size_average`` and ``reduce`` (each None meaning True) as a reduction:
    reduce=False -> 'none', else size_average -> 'mean' or 'sum'; it warns, as PyTorch does."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    reduction = ("mean" if size_average else "sum") if reduce else "none"
    warnings.warn(f"size_average and reduce are deprecated, as in PyTorch: use reduction={reduction!r} instead",
                  UserWarning, stacklevel=3)
    return reduction
