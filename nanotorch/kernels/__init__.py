"""Numba kernels for the hot loops, each beside a pure-NumPy reference that tests compare against.

Every kernel is compiled with ``cache=True``, so a second run loads machine code from
``__pycache__`` instead of recompiling. To step through a kernel in plain Python, run with
``NUMBA_DISABLE_JIT=1`` (Numba's own switch): the same functions then execute as Python.

Numba keys each cached function on its own source file only, so a kernel that inlines a function
from another file (bn_gelu_forward inlines gelu.py's GELU) would load stale machine code after
that file changed. So the kernels cache into a folder named after a digest of all their sources
(``__pycache__/nanotorch-kernels-<digest>``, or under ``NUMBA_CACHE_DIR`` when that is set): any
edit starts a fresh cache, and a process still running the old code writes only to the old one.

- ``im2col``   — im2col / col2im for convolution (``im2col_reference`` / ``col2im_reference``)
- ``conv3x3``  — direct 3x3 "same" convolution and its input and weight gradients (no im2col columns)
- ``winograd`` — Winograd F(2x2, 3x3): the same 3x3 "same" convolution with 2.25x fewer multiplications,
  for inference (``conv3x3_winograd_reference``); and with BatchNorm and GELU after it in the same pass,
  and 2x2 max pooling (``conv3x3_winograd_pooled_reference``)
- ``winograd_small`` — the same pooled pass on small planes (7x7, 4x4, odd sides), with a batch's images
  in the vector lanes (``conv3x3_winograd_pooled_small_reference``)
- ``simd``     — explicit vectors (load, store, splat, fma, ...) that let conv3x3 and winograd keep their
  sums in registers
- ``pooling``  — max pooling forward (value and argmax, or the value alone) and its gradient scatter;
  global average pooling
- ``loss``     — cross-entropy: log-softmax with the loss, and its gradient
- ``dropout``  — dropout's mask and product
- ``gemm``     — a small matrix product with its sums in registers: im2col's products (``matmul_reference``)
- ``linear``   — a small Linear layer's product, and its three gradients in one call
- ``gelu``     — exact (erf) and tanh GELU with their derivatives (float32: a vectorised erf)
- ``batchnorm_gelu`` — BatchNorm + GELU fused each way, channel statistics, and BatchNorm's running-statistics update
- ``optim``    — the squared norm of clip_grad_norm_ and SGD's update, one pass each
- ``tasks``    — how the kernels that take ``parallel`` split into tasks spread over threads
"""
import hashlib
import os
import pathlib
import shutil

import numba


def _cache_dir():
    """This version's cache folder. In the package's own __pycache__, older versions' folders are
    removed (under a shared NUMBA_CACHE_DIR they may belong to another checkout, and stay)."""
    here = pathlib.Path(__file__).parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()[:16]
    if os.environ.get("NUMBA_CACHE_DIR"):
        return pathlib.Path(os.environ["NUMBA_CACHE_DIR"]) / f"nanotorch-kernels-{digest}"
    for old in (here / "__pycache__").glob("nanotorch-kernels-*"):
        if old.name != f"nanotorch-kernels-{digest}":
            shutil.rmtree(old, ignore_errors=True)
    return here / "__pycache__" / f"nanotorch-kernels-{digest}"


_user_cache_dir, numba.config.CACHE_DIR = numba.config.CACHE_DIR, str(_cache_dir())
try:          # the kernels' dispatchers choose their cache folder as they are defined
    from nanotorch.kernels.im2col import im2col, col2im, im2col_reference, col2im_reference
    from nanotorch.kernels.pooling import (maxpool2d_forward, maxpool2d_backward, maxpool2d_forward_reference,
                                           maxpool2d_backward_reference, maxpool2x2_forward, maxpool2x2_max,
                                           maxpool2x2_reference, maxpool2x2_backward_reference,
                                           global_avg_pool, global_avg_pool_backward, global_avg_pool_reference,
                                           global_avg_pool_backward_reference)
    from nanotorch.kernels.gelu import gelu_forward, gelu_forward_reference
    from nanotorch.kernels.conv3x3 import (pad_planes, pad_planes_reference, conv3x3_same, conv3x3_same_grad_weight,
                                           flip_transpose, flip_transpose_reference, conv3x3_same_reference,
                                           conv3x3_same_grad_input_reference, conv3x3_same_grad_weight_reference)
    from nanotorch.kernels.winograd import (conv3x3_winograd, conv3x3_winograd_pooled,
                                            conv3x3_winograd_pooled_reference, conv3x3_winograd_reference,
                                            winograd_weights, winograd_weights_reference)
    from nanotorch.kernels.winograd_small import (conv3x3_winograd_pooled_small,
                                                  conv3x3_winograd_pooled_small_reference)
    from nanotorch.kernels import batchnorm_gelu  # noqa: F401  (imported by nn/fused.py; cached here too)
    from nanotorch.kernels.dropout import dropout_forward, dropout_forward_reference
    from nanotorch.kernels.linear import (linear_forward, linear_backward, linear_forward_reference,
                                          linear_backward_reference)
    from nanotorch.kernels.loss import (cross_entropy_forward, cross_entropy_backward, cross_entropy_forward_reference,
                                        cross_entropy_backward_reference)
    from nanotorch.kernels.gemm import matmul, matmul_reference
    from nanotorch.kernels.optim import sum_of_squares, sum_of_squares_reference, sgd_update, sgd_update_reference
finally:
    numba.config.CACHE_DIR = _user_cache_dir

__all__ = ["im2col", "col2im", "im2col_reference", "col2im_reference", "maxpool2d_forward", "maxpool2x2_forward",
           "maxpool2x2_max", "maxpool2d_backward", "maxpool2d_forward_reference", "maxpool2d_backward_reference",
           "maxpool2x2_reference", "maxpool2x2_backward_reference", "global_avg_pool",
           "global_avg_pool_backward", "global_avg_pool_reference", "global_avg_pool_backward_reference", "gelu_forward",
           "gelu_forward_reference", "pad_planes", "pad_planes_reference", "conv3x3_same", "conv3x3_same_grad_weight",
           "flip_transpose",
           "flip_transpose_reference", "conv3x3_same_reference", "conv3x3_same_grad_input_reference",
           "conv3x3_same_grad_weight_reference", "conv3x3_winograd", "conv3x3_winograd_reference",
           "conv3x3_winograd_pooled", "conv3x3_winograd_pooled_reference", "conv3x3_winograd_pooled_small",
           "conv3x3_winograd_pooled_small_reference", "winograd_weights",
           "winograd_weights_reference", "sum_of_squares",
           "sum_of_squares_reference", "sgd_update", "sgd_update_reference", "cross_entropy_forward",
           "cross_entropy_backward", "cross_entropy_forward_reference", "cross_entropy_backward_reference",
           "dropout_forward", "dropout_forward_reference", "linear_forward", "linear_backward",
           "linear_forward_reference", "linear_backward_reference", "matmul", "matmul_reference"]
