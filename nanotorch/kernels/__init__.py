"""Numba kernels for the hot loops, each beside a pure-NumPy reference that tests compare against.

Every kernel is compiled with ``cache=True``, so a second run loads machine code from
``__pycache__`` instead of recompiling. To step through a kernel in plain Python, run with
``NUMBA_DISABLE_JIT=1`` (Numba's own switch): the same functions then execute as Python.

- ``im2col``   — im2col / col2im for convolution (``im2col_reference`` / ``col2im_reference``)
- ``pooling``  — max pooling forward (value and argmax) and its gradient scatter
- ``gelu``     — exact (erf) and tanh GELU with their derivatives (float32: a vectorised erf)
"""
from nanotorch.kernels.im2col import im2col, col2im, im2col_reference, col2im_reference
from nanotorch.kernels.pooling import (maxpool2d_forward, maxpool2x2_forward, maxpool2d_backward,
                                       maxpool2d_forward_reference, maxpool2d_backward_reference)
from nanotorch.kernels.gelu import gelu_forward, gelu_forward_reference

__all__ = ["im2col", "col2im", "im2col_reference", "col2im_reference", "maxpool2d_forward", "maxpool2x2_forward",
           "maxpool2d_backward", "maxpool2d_forward_reference", "maxpool2d_backward_reference", "gelu_forward",
           "gelu_forward_reference"]
