"""Dropout (inverted, as PyTorch): in training each element is kept with probability 1 - p and scaled
by 1 / (1 - p), so the expected output equals the input and evaluation is the identity.

    mask_i ~ Bernoulli(1 - p) / (1 - p),   y = x * mask,   dx = dy * mask   (eval: y = x, dx = dy)

(p = 1 would divide by 0: there the mask is all zeros, as in PyTorch.)

In eval, and in training with p = 0 or an empty input, the output is the input array itself (not a
copy), as PyTorch returns its input tensor itself, and the gradient passes through unchanged.

``generator`` is a numpy Generator (default: the global one that ``nanotorch.manual_seed`` seeds).
"""
import numbers

import numpy as np

from nanotorch.kernels import dropout_forward
from nanotorch.nn._checks import check_grad, check_input, only_default
from nanotorch.nn.module import Module
from nanotorch.random import default_generator


def _probability(p):
    """p as a float, refused unless in [0, 1] (np.float32 too)."""
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p}")
    return float(p)


class Dropout(Module):
    """x: any shape -> same shape."""

    def __init__(self, p=0.5, inplace=False, *, generator=None):
        super().__init__()
        only_default(self, "inplace", inplace, False)
        _probability(p)
        self.p, self.inplace = p, inplace          # as given, as PyTorch keeps (and prints) them: p=0 stays 0
        self.generator = generator

    def forward(self, x):
        check_input(self, x, tuple(range(1, 9)))
        p = _probability(self.p)                   # (p and inplace may have been set since __init__)
        only_default(self, "inplace", self.inplace, False)
        if not self.training or p == 0.0 or x.size == 0:     # the input itself, as PyTorch returns it
            self.save_for_backward(None, x.shape)
            return x
        if p == 1.0:
            mask = np.zeros_like(x)
            with np.errstate(invalid="ignore"):    # NaN and +-inf times 0 are NaN, as in PyTorch, which does not warn
                out = x * mask
        else:
            rng = self.generator if self.generator is not None else default_generator()
            out, mask = dropout_forward(x, rng.random(x.shape), p, 1.0 / (1.0 - p))   # kernels/dropout.py
        self.save_for_backward(mask, x.shape)
        return out

    def backward(self, dout):
        mask, shape = self.saved_for_backward()
        check_grad(self, dout, shape)
        return dout if mask is None else dout * mask

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
