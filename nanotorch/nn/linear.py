"""Linear, Flatten and Identity.

Linear (x: (N, in), W: (out, in), b: (out,)):   y = x W^T + b
    dW = dy^T x     (out, in)      each weight W_ij meets x_j in every row
    db = sum_n dy   (out,)
    dx = dy W       (N, in)
An (N, *, in) input is its N * ... rows of in features, each multiplied alike: the same three
products on x.reshape(-1, in) (so dW and db sum over every leading axis), y and dx reshaped back
to (N, *, out) and (N, *, in). (An unbatched (in,) input, which PyTorch takes, is refused: x[None].)

Small layers (N * in * out below kernels/linear.py's SMALL_LINEAR, the MNIST model's head) run
the three products as compiled loops, one call each way; larger ones call BLAS.

Flatten(start_dim=1, end_dim=-1) only reshapes, so its backward reshapes back.

Identity: y = x, so dy/dx is the identity and dx = dy.
"""
import math

import numpy as np

from nanotorch.kernels.linear import SMALL_LINEAR, linear_backward, linear_forward
from nanotorch.nn._checks import check_device_and_dtype, check_grad, check_input, check_int, checked_arguments
from nanotorch.nn.init import default_weight_and_bias
from nanotorch.nn.module import Module, Parameter


class Linear(Module):
    """x: (N, in_features) -> (N, out_features); (N, *, in_features) -> (N, *, out_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        dtype = check_device_and_dtype(self, device, dtype)
        in_features = check_int(self, in_features, "in_features")
        out_features = check_int(self, out_features, "out_features")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        w, b = default_weight_and_bias((out_features, in_features), in_features, bias)
        self.weight = Parameter(w)
        self.bias = Parameter(b) if bias else None
        if dtype is not None:
            self.to(dtype)

    def forward(self, x):
        shape = None                                           # the input's shape, if not (N, in)
        if isinstance(x, np.ndarray) and x.ndim > 2:           # (N, *, in): its rows, (N * ..., in)
            shape = x.shape
            if shape[-1] != self.in_features:                  # (before the reshape: it could still succeed)
                raise ValueError(f"Linear expects {self.in_features} input features (N, *, {self.in_features}), "
                                 f"got shape {shape}")
            x = x.reshape(math.prod(shape[:-1]), shape[-1])
        check_input(self, x, (2,), dtype=self.weight.data.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects {self.in_features} input features (N, *, {self.in_features}), "
                             f"got shape {x.shape}")
        self.save_for_backward(x, shape)
        w = self.weight.data
        b = self.bias.data if self.bias is not None else None
        if x.size * self.out_features < SMALL_LINEAR:        # one compiled call (kernels/linear.py)
            y = linear_forward(np.ascontiguousarray(x), w, w[0] if b is None else b, b is not None)
        else:
            y = x @ w.T
            if b is not None:
                y += b
        return y if shape is None else y.reshape(shape[:-1] + (self.out_features,))

    def backward(self, dy):
        x, shape = self.saved_for_backward()                  # x: the rows, (N * ..., in)
        if shape is None:
            check_grad(self, dy, (x.shape[0], self.out_features), x.dtype)
        else:
            check_grad(self, dy, shape[:-1] + (self.out_features,), x.dtype)
            dy = dy.reshape(x.shape[0], self.out_features)
        w = self.weight.data
        if x.size * self.out_features < SMALL_LINEAR:         # adds dW and db into the grads itself
            dw = self.weight.grad_to_accumulate()
            db = self.bias.grad_to_accumulate() if self.bias is not None else dw[0]
            dx = linear_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), w, dw, db, self.bias is not None)
        else:
            self.weight.accumulate_grad(dy.T @ x)
            if self.bias is not None:
                self.bias.accumulate_grad(dy.sum(axis=0))
            dx = dy @ w
        return dx if shape is None else dx.reshape(shape)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _wrap_dim(d, ndim):
    """A dim in [-ndim, ndim) -> [0, ndim), as PyTorch (which treats a 0-d input as 1-d)."""
    rank = max(ndim, 1)
    if not -rank <= d < rank:
        raise IndexError(f"Flatten: dimension out of range (expected to be in range of [{-rank}, {rank - 1}], "
                         f"but got {d}) for an input with {ndim} dimensions")
    return d % rank


class Flatten(Module):
    """x: (N, d1, d2, ...) -> (N, d1*d2*...) for the default dims; dims start_dim..end_dim become one
    (a 0-d input becomes (1,) when both are 0 or -1, as in PyTorch)."""
    _arguments = ("start_dim", "end_dim")

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def _dims(self):
        """(start_dim, end_dim) as ints; their range is checked against each input (_wrap_dim)."""
        return checked_arguments(self, lambda: (check_int(self, self.start_dim, "start_dim"),
                                                check_int(self, self.end_dim, "end_dim")))

    def forward(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Flatten expects a numpy array, got {type(x).__name__}")
        start_dim, end_dim = self._dims()
        start, end = _wrap_dim(start_dim, x.ndim), _wrap_dim(end_dim, x.ndim)
        if start > end:
            raise RuntimeError(f"Flatten: start_dim cannot come after end_dim, got start_dim={self.start_dim} "
                               f"(dim {start}) and end_dim={self.end_dim} (dim {end}) for input shape {x.shape}")
        # the product, not -1: a (0, 3, 4) batch flattens to (0, 12), which reshape cannot infer
        out = x.reshape(x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:])
        self.save_for_backward(x.shape, out.shape)
        return out

    def backward(self, dout):
        shape, out_shape = self.saved_for_backward()
        check_grad(self, dout, out_shape)
        return dout.reshape(shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """x -> x: the input itself, not a copy, as PyTorch returns it (a placeholder: ``model.fc = nn.Identity()``
    keeps the features). Any arguments are accepted and ignored, as PyTorch's are. Any input is passed
    on, as in PyTorch; for an array the backward checks that the gradient has its shape, and returns
    that gradient itself."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        self.save_for_backward(x.shape if isinstance(x, np.ndarray) else None)
        return x

    def backward(self, dout):
        shape, = self.saved_for_backward()
        if shape is not None:
            check_grad(self, dout, shape)
        return dout
