"""``no_grad()``: run forwards that will not be followed by a backward, as ``torch.no_grad``.

Layers normally keep what their backward needs (the im2col columns, BatchNorm's xhat, GELU's
derivative, ...). Inside ``with nanotorch.no_grad():`` they keep nothing, which saves memory and
time when evaluating, and a backward afterwards raises the usual "backward before forward" error.
With nothing kept, forwards of one model in eval mode may also run in several threads at once
(mnist.evaluate does). Not in training mode: BatchNorm would still update its running statistics,
and Dropout draw its masks, from every thread at once.

Unlike PyTorch's, the mode is the process's, not each thread's: a ``no_grad`` entered on one
thread holds for the threads it starts (which is what lets mnist.evaluate's workers keep nothing).
It is a count of the no_grad blocks open, so that blocks entered by several threads, or one
instance entered twice, nest; gradients are kept again when the last one closes.
"""
import functools
import inspect
import threading

_open = 0                           # no_grad blocks open, in any thread
_lock = threading.Lock()


def is_grad_enabled():
    return _open == 0


class no_grad:
    """As PyTorch's: ``with no_grad():``, or a decorator, ``@no_grad()`` or ``@no_grad``."""

    def __new__(cls, func=None):
        if func is None:
            return super().__new__(cls)
        if not callable(func):
            raise TypeError(f"no_grad() takes no arguments (or, as a decorator, a function), got {func!r}")
        return cls()(func)                             # @no_grad without the parentheses

    def __enter__(self):
        global _open
        with _lock:
            _open += 1

    def __exit__(self, *exc):
        global _open
        with _lock:
            _open -= 1

    def __call__(self, func):
        if inspect.isgeneratorfunction(func):          # (its body runs after the call has returned)
            raise TypeError(f"no_grad cannot decorate the generator function {func.__name__}: "
                            "open `with nanotorch.no_grad():` inside it instead")

        @functools.wraps(func)
        def without_grad(*args, **kwargs):
            with self:
                return func(*args, **kwargs)
        return without_grad
