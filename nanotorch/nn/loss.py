"""CrossEntropyLoss: log-softmax and negative log-likelihood in one step, as PyTorch.

    logits z: (N, C), or (N, C, d1, ..., dK) whose class axis is moved last and the rest flattened:
    n below runs over the M = N d1 ... dK positions, each a row z[n] of C logits.
    log p[n] = z[n] - logsumexp(z[n]),   logsumexp(z) = max(z) + log sum exp(z - max(z))   (stable)

Every case is one formula,  l_n = -sum_c a[n, c] log p[n, c],  with its own target weights a:
    class indices t (integers, (N,) or (N, d1, ..., dK)), weight w (C,) (all ones if None),
    label_smoothing e:
        a[n, c] = (1 - e) w[t_n] [c == t_n] + (e / C) w[c],   a[n] = 0 where t_n == ignore_index
    class probabilities q (floats of the logits' shape; ignore_index does not apply):
        a[n, c] = w[c] ((1 - e) q[n, c] + e / C)
    loss = sum_n l_n / D ('mean'), sum_n l_n ('sum'), or l itself, shaped (N, d1, ..., dK) ('none'), where
        D = sum of w[t_n] over the positions not ignored (their count without weight)   -- class indices
        D = M                                                                           -- probabilities
    (D = 0, every position ignored or only targets of weight 0: the mean is NaN, and so is its
    gradient on the positions not ignored, as in PyTorch.)
For class indices the forward computes l_n as PyTorch does, (1 - e) w[t_n] (-log p[n, t_n]) +
(e / C) sum_c w[c] (-log p[n, c]), the second term only if e > 0: no 0 * log p, so a class masked
with a logit of -inf leaves an unsmoothed loss finite.

Backward: d log p[n, c] / d z[n, k] = [c == k] - p[n, k], since d logsumexp / d z = softmax(z) = p, so
    d l_n / d z[n, k] = -sum_c a[n, c] ([c == k] - p[n, k]) = p[n, k] A_n - a[n, k],   A_n = sum_c a[n, c]
scaled by d loss / d l_n: 1/D for the mean, 1 for the sum, the upstream gradient's entry n for
'none', and 0 for an ignored position. Without weight or smoothing a[n] is one-hot (A_n = 1):
softmax(z[n]) - onehot(t_n), and with every position ignored the mean is 0/0 = NaN and the
gradient zero, as in PyTorch.

That common case (class indices, no weight, no smoothing; (N, C) logits, as in the MNIST training,
or (N, C, d1, ...) as their rows) is one compiled loop each way (nanotorch/kernels/loss.py, with
the NumPy formulas beside them). With weight or smoothing the kernel still computes log p and
checks the targets; a and the sums are NumPy, in float64, rounded once to the loss's dtype: the
logits' (for probabilities given in another, the wider one, as PyTorch promotes). Only the smoothed
probabilities (1 - e) q + e / C are computed in q's own dtype first, as PyTorch computes them (float32
q with float64 logits: the float32 values of its smoothed targets, which the float64 loss shows).

(C,) logits, which PyTorch takes unbatched, are refused: add the batch axis, logits[None].
"""
import numbers
import warnings

import numpy as np

from nanotorch.kernels import cross_entropy_backward, cross_entropy_forward
from nanotorch.nn._checks import check_input, checked_arguments
from nanotorch.nn.module import Module


class CrossEntropyLoss(Module):
    """``loss = crit(logits, targets)`` returns the loss; ``crit.backward()`` returns d loss / d logits
    (with reduction='none', ``crit.backward(grad)`` takes d loss / d l, one entry a position).

    logits: (N, C) or (N, C, d1, ..., dK); targets: class indices (N,) or (N, d1, ..., dK), or class
    probabilities of the logits' shape. weight: None or a (C,) float array of the logits' dtype, a
    buffer as in PyTorch (in state_dict, converted by .to()); label_smoothing: a float in [0, 1]."""
    _arguments = ("weight", "ignore_index", "reduction", "label_smoothing")

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__()
        if size_average is not None or reduce is not None:         # PyTorch's deprecated pair overrides reduction
            reduction = _legacy_reduction(size_average, reduce)
        if reduction == "elementwise_mean":                        # PyTorch's old name, accepted with a warning
            warnings.warn("reduction='elementwise_mean' is deprecated, as in PyTorch: use reduction='mean' instead",
                          UserWarning, stacklevel=2)
            reduction = "mean"
        if weight is not None and not isinstance(weight, np.ndarray):
            raise TypeError(f"CrossEntropyLoss: weight must be None or a numpy array of one weight per class, "
                            f"got {type(weight).__name__}")
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self._arguments_checked()

    def _arguments_checked(self):
        """(ignore_index, label_smoothing) as int and float, checked as they are now (they may be set
        after __init__, as in PyTorch; the check is kept until one of them is set: _checks.py)."""
        return checked_arguments(self, self._check_arguments)

    def _check_arguments(self):
        w, e = self.weight, self.label_smoothing
        if w is not None and (w.ndim != 1 or w.dtype.kind != "f"):
            raise (ValueError if w.dtype.kind == "f" else TypeError)(
                f"CrossEntropyLoss: weight must be a 1-D float array, one weight per class, got {w.dtype} {w.shape}")
        if isinstance(e, (bool, np.bool_)) or not isinstance(e, numbers.Real):
            raise TypeError(f"CrossEntropyLoss: label_smoothing must be a float in [0, 1], got {e!r}")
        if not 0.0 <= e <= 1.0:                                    # (NaN too, which PyTorch takes as 0)
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {e!r}")
        if isinstance(self.ignore_index, (bool, np.bool_)) or not isinstance(self.ignore_index, (int, np.integer)):
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an int, got {self.ignore_index!r}")
        if self.reduction not in ("mean", "sum", "none"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', got {self.reduction!r}")
        return int(self.ignore_index), float(e)

    def forward(self, logits, targets):
        ignore_index, e = self._arguments_checked()
        check_input(self, logits, (2,) if not isinstance(logits, np.ndarray) or logits.ndim < 2 else (logits.ndim,),
                    what="logits")
        targets = np.asarray(targets)
        k = logits.shape[1]
        positions = logits.shape[:1] + logits.shape[2:]            # the loss's shape with reduction='none'
        probabilities = targets.shape == logits.shape and targets.dtype.kind == "f"
        if not probabilities and (targets.shape != positions or targets.dtype.kind not in "iu"):
            raise ValueError(f"CrossEntropyLoss expects integer class targets of shape {positions}, or float "
                             f"class-probability targets of the logits' shape {logits.shape}, got "
                             f"{targets.dtype} {targets.shape}")
        if self.weight is not None and (self.weight.shape != (k,) or self.weight.dtype != logits.dtype):
            _refuse_weight(self.weight, k, logits.dtype)
        z = logits if logits.ndim == 2 else np.ascontiguousarray(np.moveaxis(logits, 1, -1)).reshape(-1, k)
        if probabilities:
            if ignore_index >= 0:
                raise ValueError(f"CrossEntropyLoss: ignore_index ({ignore_index}) does not apply to class-probability "
                                 "targets; as in PyTorch, it must be negative (the default, -100) with them")
            q = targets if targets.ndim == 2 else np.moveaxis(targets, 1, -1).reshape(-1, k)
            log_p = _log_softmax(z)
            a = _probability_target_weights(q, self.weight, e)
            nll, kept, denominator = -(log_p * a).sum(axis=1), None, len(z)
            out_dtype = np.result_type(logits.dtype, targets.dtype)
        else:
            t = targets if targets.ndim == 1 else np.ascontiguousarray(targets).reshape(-1)
            nll, total, kept, log_p, bad = cross_entropy_forward(z, t, ignore_index)
            if bad >= 0:
                where = f"row {bad}" if t is targets else f"at {tuple(map(int, np.unravel_index(bad, targets.shape)))}"
                raise ValueError(f"CrossEntropyLoss: targets must be class indices in [0, {k}) or ignore_index "
                                 f"({ignore_index}), got {t[bad]} ({where})")
            if self.weight is None and e == 0:                    # the common case: the kernel's results
                self.save_for_backward(log_p, t, kept, ignore_index, self.reduction, logits.shape, None, None)
                if self.reduction == "none":
                    return nll if t is targets else nll.reshape(positions)
                return logits.dtype.type(total if self.reduction == "sum" else total / kept if kept else np.nan)
            kept = t != ignore_index
            nll, a, denominator = _class_index_loss(log_p, nll, t, kept, self.weight, e)
            out_dtype = logits.dtype
        self.save_for_backward(log_p, None, denominator, None, self.reduction, logits.shape, a, kept)
        if self.reduction == "none":
            return nll.astype(out_dtype).reshape(positions)
        total = nll.sum(dtype=np.float64)
        return out_dtype.type(total if self.reduction == "sum" else total / denominator if denominator else np.nan)

    def backward(self, grad_out=None):
        log_p, targets, denominator, ignore_index, reduction, shape, a, kept = self.saved_for_backward()
        m = log_p.shape[0]
        if reduction == "none":
            positions = (shape[0],) + shape[2:]
            if grad_out is None or np.shape(grad_out) != positions:
                raise ValueError(f"CrossEntropyLoss(reduction='none').backward expects the gradient of the "
                                 f"per-position losses, shape {positions}, "
                                 f"got {None if grad_out is None else np.shape(grad_out)}")
            scale = np.asarray(grad_out, dtype=np.float64).reshape(m)
        else:                          # (D = 0: NaN, which reaches no ignored position)
            grad_out = 1.0 if grad_out is None else float(grad_out)
            scale = np.full(m, (grad_out / denominator if denominator else np.nan) if reduction == "mean" else grad_out)
        if a is None:                                             # the kernel: zero where ignored
            grad = cross_entropy_backward(log_p, targets, ignore_index, scale)
        else:                                                     # scale_n (p[n] A_n - a[n])
            if kept is not None:
                scale = np.where(kept, scale, 0.0)
            grad = (scale[:, None] * (np.exp(log_p) * a.sum(axis=1, keepdims=True) - a)).astype(log_p.dtype)
        if len(shape) == 2:
            return grad
        return np.ascontiguousarray(np.moveaxis(grad.reshape((shape[0],) + shape[2:] + (shape[1],)), -1, 1))


def _log_softmax(z):
    """z: (M, C) -> log p (M, C) in z's dtype, the sum inside the log in float64 (as the kernel's)."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True, dtype=np.float64)).astype(z.dtype)


def _probability_target_weights(q, weight, e):
    """q: (M, C) class probabilities -> a[n, c] = w[c] ((1 - e) q[n, c] + e / C), float64; the smoothing
    in q's dtype (NumPy keeps an array's dtype against a Python float), as PyTorch's target * (1 - e) + e / C."""
    a = ((1 - e) * q + e / q.shape[1]).astype(np.float64)
    if weight is not None:
        a *= weight
    return a


def _class_index_loss(log_p, nll, t, kept, weight, e):
    """log_p: (M, C); nll: (M,) -log p[n, t_n] (0 where ignored), t: (M,) class indices, kept: (M,)
    t != ignore_index -> (l, a, D): l (M,), the losses as PyTorch sums them; a (M, C); D = sum of w[t_n] kept."""
    m, k = log_p.shape
    t_kept = np.where(kept, t, 0)
    w = weight.astype(np.float64) if weight is not None else np.ones(k)
    w_t = np.where(kept, w[t_kept], 0.0)                          # w[t_n], 0 where ignored
    a = np.zeros((m, k)) if e == 0 else np.where(kept[:, None], e / k * w, 0.0)
    a[np.arange(m), t_kept] += (1 - e) * w_t
    loss = (1 - e) * w_t * nll
    if e > 0:                                                     # (only then: a logit of -inf stays finite)
        loss += np.where(kept, e / k * -(log_p @ w), 0.0)
    return loss, a, w_t.sum()


def _refuse_weight(weight, k, dtype):
    """weight is a 1-D float array (_check_arguments): of another length or dtype than the logits need."""
    if weight.shape != (k,):
        raise ValueError(f"CrossEntropyLoss: weight must hold one weight per class, shape ({k},) for these "
                         f"logits' {k} classes, got shape {weight.shape}")
    raise TypeError(f"CrossEntropyLoss: weight must have the logits' dtype {dtype}, got {weight.dtype} "
                    f"(convert it with weight.astype(np.{dtype}), or the loss with .to(np.{weight.dtype}) "
                    "and the logits)")


def _legacy_reduction(size_average, reduce):
    """PyTorch's deprecated ``size_average`` and ``reduce`` (each None meaning True) as a reduction:
    reduce=False -> 'none', else size_average -> 'mean' or 'sum'; it warns, as PyTorch does."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    reduction = ("mean" if size_average else "sum") if reduce else "none"
    warnings.warn(f"size_average and reduce are deprecated, as in PyTorch: use reduction={reduction!r} instead",
                  UserWarning, stacklevel=3)
    return reduction
