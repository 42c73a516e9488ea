"""BatchNorm1d and BatchNorm2d: normalise each channel over the batch (and space), then scale and shift.

Training (statistics over the m values of a channel: N*H*W for 2-D, N or N*L for 1-D; axes (0, 2, 3),
(0,) or (0, 2)):

    mu = mean(x),  var = mean((x - mu)^2)              the biased variance normalises
    xhat = (x - mu) / sqrt(var + eps),  y = gamma * xhat + beta
    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)   (unbiased)

Backward in training (mu and var depend on every x of the channel, hence the two mean terms):

    dbeta  = sum(dy),   dgamma = sum(dy * xhat),   g = gamma * dy   (= d loss / d xhat)
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

  Derivation (i, j index the m values of one channel; delta_ij = 1 if i == j, else 0):
  d mu / d x_j = 1/m and d var / d x_j = 2 (x_j - mu) / m (the path through mu adds
  (d var / d mu) (d mu / d x_j) = (-2/m sum_i (x_i - mu)) * (1/m), which is 0 since the deviations sum
  to 0), so with s = 1 / sqrt(var + eps) (inv_std in the code) and d s / d var = -s^3 / 2,
  d s / d x_j = -s^3 (x_j - mu) / m. Then xhat_i = (x_i - mu) s, and the product rule gives
      d xhat_i / d x_j = (delta_ij - 1/m) s + (x_i - mu) d s / d x_j
                       = (delta_ij - 1/m) s - s^3 (x_i - mu)(x_j - mu) / m
                       = (delta_ij - 1/m - xhat_i xhat_j / m) * s,
  so dx_j = sum_i g_i d xhat_i / d x_j = s (g_j - sum_i g_i / m - xhat_j sum_i g_i xhat_i / m)
          = s (g_j - mean(g) - xhat_j mean(g xhat)): the line above.

The running statistics are updated by ``update_running_stats`` in nanotorch/kernels/batchnorm_gelu.py
(shared with ConvBNGELU; its NumPy twin, update_running_stats_reference, is beside it), with f = momentum
(1 / batches so far when momentum is None).

Evaluation uses the running statistics, which are constants, so dx = gamma * dy / sqrt(running_var + eps).
An empty batch in training (m = 0) is the same as PyTorch's: an empty output, zero parameter gradients,
the batch counted in num_batches_tracked and nothing folded into the running statistics.
"""
import numbers

import numpy as np

from nanotorch.kernels.batchnorm_gelu import update_running_stats
from nanotorch.nn._checks import check_device_and_dtype, check_grad, check_input, check_int, only_default
from nanotorch.nn.module import Module, Parameter


class _BatchNorm(Module):
    _ndims = ()
    _may_be_missing = ("num_batches_tracked",)   # as PyTorch: state dicts older than the count load

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, *, bias=True):
        """As PyTorch 2.13's (bias=False keeps gamma without beta);
        track_running_stats=False is not implemented."""
        super().__init__()
        only_default(self, "track_running_stats", track_running_stats, True)
        dtype = check_device_and_dtype(self, device, dtype)
        num_features = check_int(self, num_features, "num_features")
        if num_features < 1:
            raise ValueError(f"{type(self).__name__}: num_features must be a positive int, got {num_features!r}")
        float(eps)                               # (a number: kept as given, as PyTorch keeps and prints eps=1 as 1)
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32)) if bias else None
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        if dtype is not None:
            self.to(dtype)

    def keeps_running_stats(self):
        """Whether it keeps running statistics (track_running_stats, and both arrays there): nanotorch
        implements BatchNorm with them only."""
        return self.track_running_stats and self.running_mean is not None and self.running_var is not None

    def forward(self, x):
        if not self.keeps_running_stats():
            raise NotImplementedError(f"{type(self).__name__}: track_running_stats=False (or running statistics "
                                      "set to None) is not implemented in nanotorch")
        check_input(self, x, self._ndims, self.num_features,
                    dtype=(self.weight.data if self.weight is not None else self.running_mean).dtype)
        axes = (0,) + tuple(range(2, x.ndim))                   # every axis but the channel's
        shape = (1, -1) + (1,) * (x.ndim - 2)                   # broadcast a (C,) vector over x
        m = x.size // x.shape[1]                               # values per channel
        batch_stats = self.training and m > 0
        if batch_stats and m == 1:
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when "
                             f"training, got input shape {x.shape}")
        eps = self.checked_eps()                                # (before the running statistics change)
        if batch_stats:
            mu = x.mean(axis=axes)
            var = x.var(axis=axes)
            self._update_running_stats(mu, var, m)
        else:
            if self.training:          # an empty batch: counted, with nothing to fold in, as PyTorch does
                self._count_batch()
            mu, var = self.running_mean, self.running_var
        inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
        xhat = (x - mu.reshape(shape)) * inv_std.reshape(shape)
        self.save_for_backward(xhat, inv_std, axes, shape, batch_stats)
        y = xhat if self.weight is None else xhat * self.weight.data.reshape(shape)
        return y if self.bias is None else y + self.bias.data.reshape(shape)

    def checked_eps(self):
        """eps as a float, refused as PyTorch's F.batch_norm refuses it: a number, > 0 in training (the
        batch's variance of a constant channel is 0, and 1 / sqrt(0 + eps) must be finite), >= 0 in evaluation."""
        eps = self.eps
        if not isinstance(eps, numbers.Real):
            raise TypeError(f"{type(self).__name__}: eps must be a number, got {eps!r} ({type(eps).__name__})")
        if self.training and eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be positive in training, as in PyTorch, got {eps}")
        if eps < 0:
            raise ValueError(f"{type(self).__name__}: eps must be non-negative, as in PyTorch, got {eps}")
        return float(eps)

    def _update_running_stats(self, mu, var, m):
        """Fold a batch's mean and biased variance (over m values a channel) into the running ones;
        the running variance is the unbiased estimate, var * m / (m - 1), as PyTorch keeps it."""
        update_running_stats(self.running_mean, self.running_var, mu, var, self._count_batch(), float(m))

    def _count_batch(self):
        """Count a training batch; returns the factor its statistics get in the running ones:
        ``momentum``, or 1 / batches so far when momentum is None (a cumulative average)."""
        self.num_batches_tracked[()] += 1          # in place on the 0-d array (NumPy's fast scalar path)
        return float(1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)

    def backward(self, dy):
        xhat, inv_std, axes, shape, batch_stats = self.saved_for_backward()
        check_grad(self, dy, xhat.shape, xhat.dtype)
        if self.bias is not None:
            self.bias.accumulate_grad(dy.sum(axis=axes))
        g = dy
        if self.weight is not None:
            self.weight.accumulate_grad((dy * xhat).sum(axis=axes))
            g = dy * self.weight.data.reshape(shape)
        if not batch_stats:                    # mu and var were constants: the running statistics
            return g * inv_std.reshape(shape)
        mean_g = g.mean(axis=axes).reshape(shape)
        mean_gx = (g * xhat).mean(axis=axes).reshape(shape)
        return (g - mean_g - xhat * mean_gx) * inv_std.reshape(shape)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """x: (N, C, H, W) -> same shape."""
    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """x: (N, C) or (N, C, L) -> same shape."""
    _ndims = (2, 3)
