"""``no_grad()``: run forwards that will not be followed by a backward, as ``torch.no_grad``.

Layers normally keep what their backward needs (the im2col columns, BatchNorm's xhat, GELU's
derivative, ...). Inside ``with nanotorch.no_grad():`` they keep nothing, which saves memory and
time when evaluating, and a backward afterwards raises the usual "backward before forward" error.
With nothing kept, forwards of one model in eval mode may also run in several threads at once
(mnist.evaluate does). Not in training mode: BatchNorm would still update its running statistics,
and Dropout draw its masks, from every thread at once.
"""
import contextlib

_enabled = True


def is_grad_enabled():
    return _enabled


@contextlib.contextmanager
def no_grad():
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
