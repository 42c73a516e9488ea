"""Module hooks, as PyTorch's: functions called around a module's forward and backward, to watch or
change what goes in and out (activations, gradients) without editing the layer.

    register_forward_pre_hook(hook)        hook(module, args)                        -> None or new args
    register_forward_hook(hook)            hook(module, args, output)                -> None or new output
    register_full_backward_pre_hook(hook)  hook(module, grad_output)                 -> None or new grad_output
    register_full_backward_hook(hook)      hook(module, grad_input, grad_output)     -> None or new grad_input

Each returns a RemovableHandle (``handle.remove()``, or ``with m.register_forward_hook(h): ...``).
Hooks run in the order registered (``prepend=True`` puts one first). ``args`` is the tuple of
positional arguments; a pre-hook's single non-tuple result stands for a one-element tuple.

Where they run. Forward hooks run in ``module(x)`` (Module.__call__), not in ``module.forward(x)``,
as in PyTorch. There is no autograd to run backward hooks, so they run in ``module.backward(...)``,
whoever calls it (a parent Sequential or your training loop): registering one puts a wrapper under
``backward`` in the instance's __dict__, which runs the hooks around the class's backward; removing
the last one takes the wrapper away again. A module with no hooks pays nothing in backward and one
check in ``__call__``.

The tuples, nanotorch's way. ``grad_output`` is the tuple of arguments backward was given (any
given by keyword as if by position; for a loss called as ``criterion.backward()``, the empty tuple:
PyTorch shows its implicit 1 there);
``grad_input`` is ``(what backward returned,)``, the gradient of the module's (first) input,
computed even where PyTorch gives None (an input that does not require grad). Hooks that replace
them must return tuples (or lists) of the same length, as PyTorch requires.

A ConvBNGELU runs its three children one by one, not fused, while any of them has a hook, so that
the children's hooks see their own inputs and outputs (the numbers are the same up to float rounding).
"""
import inspect
import warnings
from collections import OrderedDict


class RemovableHandle:
    """Returned by the register_*_hook methods: ``remove()`` unregisters the hook (a second remove does
    nothing); as a context manager, the hook is removed on leaving the block. ``id`` is the key of the
    hook in its module's dict."""
    next_id = 0

    def __init__(self, module, hooks_dict):
        self.module, self.hooks_dict = module, hooks_dict
        self.id = RemovableHandle.next_id
        RemovableHandle.next_id += 1

    def remove(self):
        if self.hooks_dict.pop(self.id, None) is not None:
            update(self.module)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class Hook:
    """A registered hook and its options (PyTorch's ``with_kwargs`` and ``always_call``)."""
    __slots__ = ("fn", "with_kwargs", "always_call")

    def __init__(self, fn, with_kwargs=False, always_call=False):
        if not callable(fn):
            raise TypeError(f"a hook must be callable, got {type(fn).__name__}")
        self.fn, self.with_kwargs, self.always_call = fn, bool(with_kwargs), bool(always_call)


HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def register(module, hooks_dict, hook, prepend):
    """Add ``hook`` (a Hook) to ``hooks_dict`` of ``module``, first if ``prepend``; returns its handle.
    A backward hook is refused on a module whose instance has its own ``backward`` (``m.backward = f``):
    the wrapper cannot go there, and the hook would never run."""
    patched = module.__dict__.get("backward")
    if (hooks_dict is module._backward_pre_hooks or hooks_dict is module._backward_hooks) and patched is not None \
            and getattr(patched, "__func__", None) is not backward_with_hooks:
        raise RuntimeError(f"{type(module).__name__}: cannot register a backward hook on a module whose instance "
                           f"has its own backward ({patched!r}): the hooks run from a wrapper put in that place; "
                           "delete the instance's backward first, or call your hook from it")
    handle = RemovableHandle(module, hooks_dict)
    hooks_dict[handle.id] = hook
    if prepend:
        hooks_dict.move_to_end(handle.id, last=False)
    update(module)
    return handle


def new_hook_dicts():
    """The four registries of a module, in HOOK_DICTS' order: forward pre, forward, backward pre, backward."""
    return OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict()


def update(module):
    """After a hook is added or removed: set ``module._hooked`` (whether it has any hook: one
    attribute for ConvBNGELU to read every forward), and put the wrapper that runs the backward hooks
    in the instance's __dict__ while it has any, taking it away when it has none (a ``backward`` set
    there by someone else is left alone)."""
    d = module.__dict__
    d["_hooked"] = bool(module._forward_pre_hooks or module._forward_hooks
                        or module._backward_pre_hooks or module._backward_hooks)
    wrapped = getattr(d.get("backward"), "__func__", None) is backward_with_hooks
    if module._backward_pre_hooks or module._backward_hooks:
        if not wrapped and "backward" not in d:
            d["backward"] = backward_with_hooks.__get__(module)     # a method bound to this module
    elif wrapped:
        del d["backward"]


def call_with_hooks(module, args, kwargs):
    """module(*args, **kwargs) with its forward hooks: pre-hooks, forward, hooks (PyTorch's order). If
    any of them raises, the always_call hooks not yet run are called before the error goes on, as
    PyTorch's, with the output so far (None if forward did not return)."""
    output, called = None, set()
    try:
        for hook in list(module._forward_pre_hooks.values()):
            if hook.with_kwargs:
                result = hook.fn(module, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError("forward pre-hook must return None or a tuple of (new_args, new_kwargs), "
                                           f"but got {result}.")
                    args, kwargs = result
            else:
                result = hook.fn(module, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        output = module.forward(*args, **kwargs)
        for key, hook in list(module._forward_hooks.items()):
            called.add(key)
            result = hook.fn(module, args, kwargs, output) if hook.with_kwargs else hook.fn(module, args, output)
            if result is not None:
                output = result
        return output
    except Exception:
        for key, hook in list(module._forward_hooks.items()):
            if hook.always_call and key not in called:
                try:
                    result = (hook.fn(module, args, kwargs, output) if hook.with_kwargs
                              else hook.fn(module, args, output))
                    if result is not None:
                        output = result
                except Exception as e:                              # (the first error is the one raised)
                    warnings.warn(f"forward hook with always_call=True raised an exception that was "
                                  f"silenced, as another one was raised in forward or a forward hook: {e!r}")
        raise


def backward_with_hooks(module, *grad_output, **kwargs):
    """module.backward(*grad_output) with its backward pre-hooks before and its backward hooks after.
    A gradient given by keyword (``criterion.backward(grad_out=2.0)``) is in grad_output as if given
    by position."""
    backward = type(module).backward
    if kwargs:
        bound = inspect.signature(backward).bind(module, *grad_output, **kwargs)
        grad_output, kwargs = bound.args[1:], bound.kwargs
    pre_hooks, post_hooks = list(module._backward_pre_hooks.values()), list(module._backward_hooks.values())
    for hook in pre_hooks:           # (as they are now, as PyTorch's: one a hook registers runs next time)
        result = hook.fn(module, grad_output)
        if result is not None:
            grad_output = _same_length(result, len(grad_output), "Backward pre hook", "grad_output")
    grad_input = (backward(module, *grad_output, **kwargs),)
    for hook in post_hooks:
        result = hook.fn(module, grad_input, grad_output)
        if result is not None:
            grad_input = _same_length(result, 1, "Backward hook", "grad_input")
    return grad_input[0]


def _same_length(result, n, who, what):
    """A hook's replacement tuple (a list is taken as one, as PyTorch takes it), refused (PyTorch's
    RuntimeError) unless a tuple or list of n values."""
    if not isinstance(result, (tuple, list)) or len(result) != n:
        got = len(result) if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise RuntimeError(f"{who} returned an invalid number of {what}, got {got}, but expected {n} "
                           f"(return None or a tuple of {n})")
    return tuple(result)
