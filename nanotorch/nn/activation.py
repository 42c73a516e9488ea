"""Activations: GELU and ReLU. Elementwise, so the backward is dout times the local derivative.

    GELU (approximate='none'):  y = x * Phi(x),            dy/dx = Phi(x) + x * phi(x)
    GELU (approximate='tanh'):  y = x * (1 + tanh u) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3),
                                dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    ReLU:                       y = max(x, 0),             dy/dx = 0 if x <= 0 else 1   (a NaN passes its
                                                           gradient, as in PyTorch)

Phi and phi are the standard normal CDF and density. GELU's forward computes dy/dx alongside y
(they share Phi, and for 'tanh' tanh u) and keeps it, so its backward is one product. The plain NumPy version
is ``gelu_forward_reference`` at the end of nanotorch/kernels/gelu.py; the compiled loops beside
it, which the layer runs, get float32 speed from a vectorisable erf (tested against it).
"""
import numpy as np

from nanotorch.grad_mode import is_grad_enabled
from nanotorch.kernels import gelu_forward
from nanotorch.kernels.gelu import gelu_inference
from nanotorch.nn._checks import check_grad, check_input, only_default
from nanotorch.nn.module import Module

_ANY_RANK = tuple(range(1, 9))


class GELU(Module):
    """x: any shape -> same shape."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate
        self._check_approximate()

    def _check_approximate(self):
        if self.approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {self.approximate!r}")

    def forward(self, x):
        check_input(self, x, _ANY_RANK)
        self._check_approximate()                  # (it may have been set since __init__)
        if self.approximate == "none" and not is_grad_enabled():   # nothing to keep: GELU alone, no GELU'
            self.save_for_backward()
            return gelu_inference(np.ascontiguousarray(x))
        y, dgelu = gelu_forward(np.ascontiguousarray(x), self.approximate)
        self.save_for_backward(dgelu)
        return y

    def backward(self, dout):
        dgelu, = self.saved_for_backward()
        check_grad(self, dout, dgelu.shape)
        return dout * dgelu

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    """x: any shape -> same shape."""

    def __init__(self, inplace=False):
        super().__init__()
        only_default(self, "inplace", inplace, False)
        self.inplace = inplace

    def forward(self, x):
        check_input(self, x, _ANY_RANK)
        only_default(self, "inplace", self.inplace, False)   # (it may have been set since __init__)
        positive = ~(x <= 0)            # "not <= 0" rather than "> 0": NaN passes through, as in PyTorch
        self.save_for_backward(positive)
        return np.where(positive, x, 0).astype(x.dtype, copy=False)

    def backward(self, dout):
        positive, = self.saved_for_backward()
        check_grad(self, dout, positive.shape)
        return np.where(positive, dout, 0).astype(dout.dtype, copy=False)
