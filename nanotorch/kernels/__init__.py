"""Numba kernels for the hot loops, each beside a pure-NumPy reference that tests compare against.

Every kernel is compiled with ``cache=True``, so a second run loads machine code from
``__pycache__`` instead of recompiling. To step through a kernel in plain Python, run with
``NUMBA_DISABLE_JIT=1`` (Numba's own switch): the same functions then execute as Python.

Numba keys each cached function on its own source file only, so a kernel that inlines a function
from another file (bn_gelu_forward inlines gelu.py's GELU) would keep stale machine code after
that file changes. ``_drop_stale_cache`` therefore clears this package's cache whenever any kernel
source differs from the sources the cache was built from.

- ``im2col``   — im2col / col2im for convolution (``im2col_reference`` / ``col2im_reference``)
- ``pooling``  — max pooling forward (value and argmax) and its gradient scatter
- ``gelu``     — exact (erf) and tanh GELU with their derivatives (float32: a vectorised erf)
"""
import hashlib
import pathlib


def _drop_stale_cache():
    here = pathlib.Path(__file__).parent
    cache, stamp = here / "__pycache__", here / "__pycache__" / "kernels-source.sha256"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()
    try:
        if stamp.exists() and stamp.read_text() == digest:
            return
        for entry in cache.glob("*.nb[ic]"):
            entry.unlink()
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:               # a read-only install: Numba then caches elsewhere or not at all
        pass


_drop_stale_cache()

from nanotorch.kernels.im2col import im2col, col2im, im2col_reference, col2im_reference
from nanotorch.kernels.pooling import (maxpool2d_forward, maxpool2x2_forward, maxpool2d_backward,
                                       maxpool2d_forward_reference, maxpool2d_backward_reference)
from nanotorch.kernels.gelu import gelu_forward, gelu_forward_reference

__all__ = ["im2col", "col2im", "im2col_reference", "col2im_reference", "maxpool2d_forward", "maxpool2x2_forward",
           "maxpool2d_backward", "maxpool2d_forward_reference", "maxpool2d_backward_reference", "gelu_forward",
           "gelu_forward_reference"]
