"""``no_grad()``: run forwards that will not be followed by a backward, as ``torch.no_grad``.

Layers normally keep what their backward needs (the im2col columns, BatchNorm's xhat, GELU's
derivative, ...). Inside ``with nanotorch.no_grad():`` they keep nothing, which saves memory and
time when evaluating, and a backward afterwards raises the usual "backward before forward" error.
With nothing kept, forwards of one model in eval mode may also run in several threads at once
(mnist.evaluate does). Not in training mode: BatchNorm would still update its running statistics,
and Dropout draw its masks, from every thread at once.
"""
import functools

_enabled = True


def is_grad_enabled():
    return _enabled


class no_grad:
    """As PyTorch's: ``with no_grad():``, or a decorator, ``@no_grad()`` or ``@no_grad``. One
    instance may be entered again (and nested): each entry restores what it found on exit."""

    def __new__(cls, func=None):
        if func is None:
            return super().__new__(cls)
        if not callable(func):
            raise TypeError(f"no_grad() takes no arguments (or, as a decorator, a function), got {func!r}")
        return cls()(func)                             # @no_grad without the parentheses

    def __enter__(self):
        global _enabled
        self._previous = getattr(self, "_previous", [])
        self._previous.append(_enabled)
        _enabled = False

    def __exit__(self, *exc):
        global _enabled
        _enabled = self._previous.pop()

    def __call__(self, func):
        @functools.wraps(func)
        def without_grad(*args, **kwargs):
            with no_grad():
                return func(*args, **kwargs)
        return without_grad
