"""Activations: GELU, ReLU, LeakyReLU, Sigmoid and Tanh. Elementwise, so the backward is dout times the
local derivative.

    GELU (approximate='none'):  y = x * Phi(x),            dy/dx = Phi(x) + x * phi(x)
    GELU (approximate='tanh'):  y = x * (1 + tanh u) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3),
                                dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    ReLU:                       y = max(x, 0),             dy/dx = 0 if x <= 0 else 1   (a NaN passes its
                                                           gradient, as in PyTorch)
    LeakyReLU (slope a):        y = x if x > 0 else a x,   dy/dx = 1 if x > 0 else a    (at 0, and for a NaN:
                                                           a, as in PyTorch)
    Sigmoid:                    y = 1 / (1 + e^-x),        dy/dx = e^-x / (1 + e^-x)^2 = y (1 - y)
    Tanh:                       y = tanh x,                dy/dx = 1 - tanh^2 x = 1 - y^2

Phi and phi are the standard normal CDF and density. GELU's forward computes dy/dx alongside y
(they share Phi, and for 'tanh' tanh u) and keeps it, so its backward is one product. The plain NumPy version
is ``gelu_forward_reference`` at the end of nanotorch/kernels/gelu.py; the compiled loops beside
it, which the layer runs, get float32 speed from a vectorisable erf (tested against it).
Sigmoid and Tanh keep their output y, which is all their derivative needs; LeakyReLU keeps where x > 0.
They are plain NumPy, in the input's dtype.
"""
import numbers

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


class LeakyReLU(Module):
    """x: any shape -> same shape. ``negative_slope`` (a) scales the negative inputs; in the input's
    dtype, as PyTorch converts it (so a float32 input gives PyTorch's float32 bits)."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        only_default(self, "inplace", inplace, False)
        self.negative_slope, self.inplace = negative_slope, inplace     # as given, as PyTorch keeps (and prints) them
        self._slope()

    def _slope(self):
        """negative_slope, refused unless a real number (PyTorch's F.leaky_relu refuses a str, as here)."""
        a = self.negative_slope
        if not isinstance(a, numbers.Real) or isinstance(a, (bool, np.bool_)):
            raise TypeError(f"LeakyReLU: negative_slope must be a real number (a float such as 0.01), "
                            f"got {a!r} ({type(a).__name__})")
        return a

    def forward(self, x):
        check_input(self, x, _ANY_RANK)
        a = x.dtype.type(self._slope())             # (both may have been set since __init__)
        only_default(self, "inplace", self.inplace, False)
        positive = x > 0                            # x <= 0 and NaN take the slope, as in PyTorch
        self.save_for_backward(positive, a)
        return np.where(positive, x, x * a)

    def backward(self, dout):
        positive, a = self.saved_for_backward()
        check_grad(self, dout, positive.shape)
        return np.where(positive, dout, dout * a.astype(dout.dtype))

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    """x: any shape -> same shape, in (0, 1).

    Stable for large |x|: with z = e^-|x| (in (0, 1], so it never overflows),
    y = 1 / (1 + z) for x >= 0 and z / (1 + z) for x < 0 (the same y: multiply 1 / (1 + e^-x) by
    e^x / e^x). The textbook 1 / (1 + e^-x) overflows e^-x for x below about -89 in float32 (-710 in
    float64), and e^x / (1 + e^x) gives inf / inf = NaN for large positive x.

    Backward: dy/dx = e^-x / (1 + e^-x)^2 = 1 / (1 + e^-x) * e^-x / (1 + e^-x) = y (1 - y), computed as
    PyTorch does, dout * (1 - y) * y.
    For x above about 17 (float32) or 37 (float64) y rounds to 1 and the gradient to 0 instead of
    about e^-x, as in PyTorch: an absolute error under the float's epsilon times |dout|.
    """

    def forward(self, x):
        check_input(self, x, _ANY_RANK)
        z = np.exp(-np.abs(x))
        y = np.where(x >= 0, 1 / (1 + z), z / (1 + z))      # (a NaN takes the second: NaN)
        self.save_for_backward(y)
        return y

    def backward(self, dout):
        y, = self.saved_for_backward()
        check_grad(self, dout, y.shape)
        return dout * (1 - y) * y


class Tanh(Module):
    """x: any shape -> same shape, in (-1, 1). np.tanh is stable for any x (+-1 for large |x|).

    Backward: d tanh x / dx = 1 / cosh^2 x = 1 - tanh^2 x = 1 - y^2, so dx = dout * (1 - y * y),
    PyTorch's expression (0 where y rounds to +-1). PyTorch's float32 kernel rounds 1 - y * y once
    (a fused multiply-add); in float32 it is computed here in float64, where y * y is exact, and
    rounded to float32: PyTorch's bits for every float32 y in [-1, 1] (checked against
    torch.ops.aten.tanh_backward on all of [0, 1]; -y gives the same y * y), where float32's two
    roundings differ on ~27% of uniform y."""

    def forward(self, x):
        check_input(self, x, _ANY_RANK)
        y = np.tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, dout):
        y, = self.saved_for_backward()
        check_grad(self, dout, y.shape)
        if y.dtype == np.float32:
            return dout * (1.0 - np.square(y, dtype=np.float64)).astype(np.float32)
        return dout * (1 - y * y)
