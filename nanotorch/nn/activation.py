"""Activations: GELU and ReLU. Elementwise, so the backward is dout times the local derivative.

    GELU (approximate='none'):  y = x * Phi(x),            dy/dx = Phi(x) + x * phi(x)
    GELU (approximate='tanh'):  y = x * (1 + tanh u) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3)
    ReLU:                       y = max(x, 0),             dy/dx = 1 if x > 0 else 0

Phi and phi are the standard normal CDF and density; the compiled loops and their derivation
are in nanotorch/kernels/gelu.py.
"""
import numpy as np

from nanotorch.kernels import gelu_backward, gelu_forward
from nanotorch.nn._checks import check_input
from nanotorch.nn.module import Module

_ANY_RANK = tuple(range(1, 9))


class GELU(Module):
    """x: any shape -> same shape."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.cache = None

    def forward(self, x):
        check_input(self, x, _ANY_RANK)
        self.cache = x = np.ascontiguousarray(x)          # the compiled loop walks memory in order
        return gelu_forward(x, self.approximate == "tanh")

    def backward(self, dout):
        x = self._require_cache(self.cache)
        return gelu_backward(x, np.ascontiguousarray(dout), self.approximate == "tanh")

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    """x: any shape -> same shape."""

    def __init__(self):
        super().__init__()
        self.cache = None

    def forward(self, x):
        check_input(self, x, _ANY_RANK)
        self.cache = ~(x <= 0)            # "not <= 0" rather than "> 0": NaN passes through, as in PyTorch
        return np.where(self.cache, x, 0).astype(x.dtype, copy=False)

    def backward(self, dout):
        positive = self._require_cache(self.cache)
        return np.where(positive, dout, 0).astype(dout.dtype, copy=False)
