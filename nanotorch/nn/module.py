"""Module and Parameter: the bookkeeping every layer shares (Sequential is in container.py).

There is no autograd tape. Each layer keeps what its backward needs from its last
forward (its *cache*) and implements

    forward(x)          -> out
    backward(grad_out)  -> grad_in      (and adds parameter gradients into .grad)

Parameter gradients accumulate until zeroed, as in PyTorch. Children and parameters
are registered on assignment, so ``state_dict()`` keys follow PyTorch's
(``0.weight``, ``bn.running_mean``, ...) and weights can move between the two.

The cache holds one forward's values, which sets three rules PyTorch's autograd does not have:
a backward works from the last forward; a second backward of the same forward adds the
gradients again (as PyTorch's ``retain_graph=True``); and a module instance must not run twice
in one forward pass, since its second call overwrites what the first call's backward needs
(share weights by sharing the Parameter instead: ``b.weight = a.weight``). A Sequential refuses
a module that it would run twice; a hand-written forward must keep the rule itself.
"""
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from nanotorch.grad_mode import is_grad_enabled
from nanotorch.nn import hooks
from nanotorch.nn._checks import check_device_and_dtype, only_default


class Parameter:
    """A trainable array: ``data`` and its gradient ``grad`` (None until a backward).

    ``requires_grad=False`` freezes it, as in PyTorch: a backward leaves its ``grad`` as it is (None,
    unless set by hand), so SGD and clip_grad_norm_ skip it. The layers still compute its gradient
    (there is no autograd graph to prune), into a scratch array that is thrown away: freezing a layer
    saves no time.

    After ``nn.utils.flatten_parameters`` the gradient is a view into one shared vector; it then
    stays that array for good: setting ``grad = None`` (zero_grad) zeroes it in place instead, and the
    parameter cannot be frozen (flatten only the trainable parameters).
    """

    def __init__(self, data=None, requires_grad=True):
        self.data = np.empty(0, dtype=np.float32) if data is None else np.asarray(data)   # (PyTorch's Parameter())
        if not np.issubdtype(self.data.dtype, np.floating):
            raise TypeError(f"Parameter: expected floating-point data (only those have gradients, as in "
                            f"PyTorch), got {self.data.dtype}")
        self._grad = None
        self._grad_is_view = False
        self._requires_grad = _check_bool(requires_grad, TypeError)     # (PyTorch's TypeError here)

    @property
    def requires_grad(self):
        """False: frozen (see the class docstring)."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        value = _check_bool(value, RuntimeError)                        # (PyTorch's RuntimeError here)
        if not value and self._grad_is_view:
            raise RuntimeError(
                "cannot freeze a parameter flattened by nn.utils.flatten_parameters (or the flat parameter "
                "itself): its grad is a view into the flat vector, never None, so SGD and clip_grad_norm_ given "
                "the flat parameter would still move it (weight decay, momentum) and count it; freeze it before "
                "flattening, and flatten only the trainable parameters: "
                "nn.utils.flatten_parameters(p for p in model.parameters() if p.requires_grad)")
        self._requires_grad = value

    def requires_grad_(self, requires_grad=True):
        """Set requires_grad in place, as PyTorch's Tensor.requires_grad_; returns self."""
        self.requires_grad = requires_grad
        return self

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        """None, or an array of the parameter's own shape and dtype (the optimisers' compiled loops
        read grad as data's twin: anything else is refused here, as PyTorch refuses it). A frozen
        parameter may hold one, as in PyTorch: backwards leave it as it is, SGD and clipping use it."""
        if value is not None:
            if not isinstance(value, np.ndarray):
                raise TypeError(f"Parameter.grad: expected a numpy array or None, got {type(value).__name__}")
            if value.shape != self.data.shape or value.dtype != self.data.dtype:
                raise ValueError(f"Parameter.grad: expected an array of the parameter's shape {self.data.shape} "
                                 f"and dtype {self.data.dtype}, got {value.shape} {value.dtype}")
        self._set_grad(value)

    def _set_grad(self, value):
        if not self._grad_is_view:
            self._grad = value
        elif value is None:
            self._grad.fill(0)
        else:
            self._grad[...] = value

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def numel(self):
        """The number of elements, as PyTorch's (an int)."""
        return self.data.size

    def __array__(self, dtype=None, copy=None):
        """``data`` for NumPy: ``np.asarray(p)`` is ``p.data`` itself (no copy), ``np.linalg.norm(p)`` its
        norm, and NumPy's functions take p as its data (their results are arrays). A Parameter has no
        operators of its own (``p + 1`` is a TypeError: use ``p.data``). (PyTorch refuses to convert a
        tensor that requires grad, and asks for ``.detach()``.)"""
        return np.array(self.data, dtype=dtype, copy=copy)

    def accumulate_grad(self, g):
        """grad += g (PyTorch accumulates until zero_grad); nothing if frozen."""
        if not self._requires_grad:
            return
        if self._grad is None:
            self._set_grad(np.array(g, dtype=self.data.dtype, copy=True))
        else:
            self._grad += g

    def grad_to_accumulate(self):
        """The array a kernel adds this parameter's gradient into: ``grad``, zeros if it was None;
        if frozen, zeros that are thrown away (``grad`` stays as it is)."""
        if not self._requires_grad:
            return np.zeros_like(self.data)
        if self._grad is None:
            self._set_grad(np.zeros_like(self.data))
        return self._grad

    def __repr__(self):
        """The values, as PyTorch prints them (``print(layer.weight)``), under NumPy's print options;
        a frozen parameter says so (PyTorch's shows ``requires_grad=True`` on the others instead)."""
        frozen = "" if self._requires_grad else " (requires_grad=False)"
        return f"Parameter containing{frozen}:\n{self.data!r}"


def _check_bool(value, error):
    """requires_grad must be a bool (NumPy's let in, as Module.train lets it in); PyTorch's message."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"requires_grad must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


_DEVICES = ("cpu", "cuda", "mps", "xpu", "meta")         # device names Module.to tells from dtypes

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class NotRun:
    """The cache of a module that the last forward pass did not run, as a fused parent computed its
    output (nn/fused.py); its backward would otherwise read an older pass's values. ``reason`` says so."""
    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason


class StateDictMismatch(ValueError, RuntimeError):
    """load_state_dict's error: a RuntimeError, as PyTorch raises, and a ValueError, as nanotorch's
    other errors for bad input; ``except`` either catches it."""


class Module:
    """Base class of every layer (see the module docstring for the contract)."""
    _may_be_missing = ()        # buffers a state_dict may lack (kept as they are): BatchNorm's count
    _arguments = ()             # arguments checked when used, the check kept until one is set (_checks.py)

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", [])
        object.__setattr__(self, "_non_persistent", set())   # buffers left out of state_dict
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "cache", None)          # what the last forward saved for the backward
        for name, registry in zip(hooks.HOOK_DICTS, hooks.new_hook_dicts()):     # (hooks.py)
            object.__setattr__(self, name, registry)
        object.__setattr__(self, "_hooked", False)                   # whether any of the four holds a hook

    # --- registration -------------------------------------------------------------
    def __setattr__(self, name, value):
        """As PyTorch's: a Parameter is registered under ``name`` in place of a buffer or child of
        that name, and a Module in place of a buffer; a buffer takes a new array. None keeps a
        parameter's, child's or buffer's name with nothing under it, which parameters(), buffers(),
        named_modules() and state_dict() skip (conv.bias = None); any other value is refused where
        a parameter, a child or a buffer is registered."""
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._unregister(name, self._modules)
            self._parameters[name] = value
        elif name in self._parameters:
            _refuse_unless_none(value, "parameter", name, "nanotorch.nn.Parameter")
            self._parameters[name] = None
        elif isinstance(value, Module):
            self._unregister(name)
            self._modules[name] = value
        elif name in self._modules:
            _refuse_unless_none(value, "child module", name, "nanotorch.nn.Module")
            self._modules[name] = None
        elif name in self._buffers and not isinstance(value, np.ndarray):
            _refuse_unless_none(value, "buffer", name, "a numpy array")
        object.__setattr__(self, name, value)
        if name in self._arguments:
            self.__dict__.pop("_checked_arguments", None)

    def __delattr__(self, name):
        """As PyTorch's: a parameter, buffer or child deleted is no longer registered either."""
        self._unregister(name, self._parameters, self._modules)
        object.__delattr__(self, name)
        if name in self._arguments:
            self.__dict__.pop("_checked_arguments", None)

    def _unregister(self, name, *registries):
        """Forget ``name`` as a buffer and in each of ``registries``."""
        for registry in registries:
            registry.pop(name, None)
        if name in self._buffers:
            self._buffers.remove(name)
            self._non_persistent.discard(name)

    def register_buffer(self, name, array, persistent=True):
        """A non-trainable array (BatchNorm's running statistics), cast by ``to`` and saved in the
        state_dict unless ``persistent=False``. As in PyTorch, None stands for no array: the name is
        kept, and skipped by buffers(), state_dict() and to() until an array is registered."""
        self._check_name("register_buffer", name, self._buffers)
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"{type(self).__name__}.register_buffer: expected a numpy array or None for "
                            f"'{name}', got {type(array).__name__}")
        if name not in self._buffers:
            self._buffers.append(name)
        (self._non_persistent.discard if persistent else self._non_persistent.add)(name)
        object.__setattr__(self, name, array)

    def add_module(self, name, module):
        """Register ``module`` as the child ``name``, as ``self.name = module`` does; None keeps the name
        with no child under it. Errors as PyTorch's: TypeError for a non-Module, KeyError for a name
        another attribute holds (see _check_name)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{_typename(module)} is not a Module subclass")
        self._check_name("add_module", name, self._modules)
        if module is None:
            self._modules[name] = None                # (the name kept, with no child under it)
        setattr(self, name, module)

    def register_module(self, name, module):
        """PyTorch's other name for add_module."""
        self.add_module(name, module)

    def register_parameter(self, name, param):
        """Register ``param`` as the parameter ``name``, as ``self.name = param`` does; None keeps the
        name with no parameter under it. Errors as PyTorch's (see _check_name)."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        self._check_name("register_parameter", name, self._parameters)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{_typename(param)}' object to parameter '{name}' "
                            "(nanotorch.nn.Parameter or None required)")
        if param is None:
            self._parameters[name] = None
        setattr(self, name, param)

    def _check_name(self, method, name, registry):
        """PyTorch's checks of a name to register: TypeError for a non-string; KeyError for an empty or
        dotted name (a dotted one would read as a child's in a state_dict key), or one that another
        attribute holds (a name in ``registry`` is re-registered)."""
        if not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}.{method}: the name must be a string, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"{type(self).__name__}.{method}: the name must be non-empty and without '.', got {name!r}")
        if name not in registry and hasattr(self, name):
            raise KeyError(f"{type(self).__name__}.{method}: attribute '{name}' already exists")

    # --- the contract ---------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward: a Module subclass defines forward(x)")

    def backward(self, grad_out):
        raise NotImplementedError(
            f"{type(self).__name__}.backward: nanotorch has no autograd, so a Module subclass writes its backward "
            "too: backward(grad_out) returns the input's gradient, calling each child's backward in the reverse "
            "order of forward (or build the model as an nn.Sequential, whose backward does that)")

    def forward_with_next(self, x, layer):
        """For Sequential, under no_grad: this module's forward and then ``layer``'s (the child after
        it) as one computation, or None where the module has none for that layer (Module's: never).
        Such a pass keeps nothing, so it need not compute what only a backward would read. One that
        gives an output must give the two layers' (up to rounding), so it returns None where it cannot
        be sure of that: outside no_grad, where either module has a hook (which must see its own
        output), or for a subclass whose forward may compute something else. It leaves both modules
        (and their children) as their own forwards under no_grad would: nothing kept for a backward.
        nanotorch's one: ConvBNGELU's, with a 2x2 MaxPool2d after it (nn/fused.py)."""
        return None

    def __call__(self, *args, **kwargs):
        if self._forward_pre_hooks or self._forward_hooks:
            return hooks.call_with_hooks(self, args, kwargs)
        return self.forward(*args, **kwargs)

    # --- hooks (hooks.py: where they run, and what they are given) --------------------
    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """hook(module, args) before forward, returning None or new args (with_kwargs: hook(module, args,
        kwargs) returning None or (args, kwargs)). Returns a RemovableHandle."""
        return hooks.register(self, self._forward_pre_hooks, hooks.Hook(hook, with_kwargs), prepend)

    def register_forward_hook(self, hook, *, prepend=False, with_kwargs=False, always_call=False):
        """hook(module, args, output) after forward, returning None or a new output (with_kwargs:
        hook(module, args, kwargs, output)); always_call: also when a pre-hook, forward or another hook
        raises (with the output so far: None if forward did not return)."""
        return hooks.register(self, self._forward_hooks, hooks.Hook(hook, with_kwargs, always_call), prepend)

    def register_full_backward_pre_hook(self, hook, prepend=False):
        """hook(module, grad_output) before backward, returning None or a new grad_output tuple."""
        return hooks.register(self, self._backward_pre_hooks, hooks.Hook(hook), prepend)

    def register_full_backward_hook(self, hook, prepend=False):
        """hook(module, grad_input, grad_output) after backward, returning None or a new grad_input tuple."""
        return hooks.register(self, self._backward_hooks, hooks.Hook(hook), prepend)

    def __getstate__(self):
        """For copy and pickle: the instance's attributes but the bound backward-hook wrapper, which
        __setstate__ binds again to the new module; the hook registries are copied, so that even a
        shallow copy (copy.copy) has its own (PyTorch's shallow copy shares them)."""
        state = dict(self.__dict__)
        if getattr(state.get("backward"), "__func__", None) is hooks.backward_with_hooks:
            del state["backward"]
        for name in hooks.HOOK_DICTS:
            state[name] = state[name].copy()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        hooks.update(self)

    def save_for_backward(self, *values):
        """Keep what the backward will need (nothing inside ``nanotorch.no_grad()``)."""
        self.__dict__["cache"] = values if is_grad_enabled() else None     # (past __setattr__'s checks: a hot path)

    def saved_for_backward(self):
        """What the last forward kept, as a tuple; an error if there was no forward to back up (or the
        last pass computed this module's output without running it: a NotRun)."""
        cache = self.cache
        if type(cache) is not tuple:
            raise RuntimeError(f"{type(self).__name__}.backward: {cache.reason}" if isinstance(cache, NotRun) else
                               f"{type(self).__name__}.backward called before forward (or after a forward under "
                               "no_grad): run forward(x) first; each forward saves what the next backward needs")
        return cache

    # --- traversal --------------------------------------------------------------------
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(name, module) for this module and every descendant, depth first; as PyTorch's, a
        module reached twice is listed once unless ``remove_duplicate=False``, and the modules in
        ``memo`` (a set, to which the modules listed are added unless remove_duplicate=False) are
        skipped with their descendants."""
        memo = set() if memo is None else memo

        def walk(module, path):
            if module in memo:
                return
            if remove_duplicate:
                memo.add(module)
            yield path, module
            for name, child in module._modules.items():
                if child is not None:
                    yield from walk(child, f"{path}.{name}" if path else name)
        return walk(self, prefix)

    def modules(self, remove_duplicate=True):
        """An iterator, as PyTorch's (and parameters(), buffers(), children() and the named_ ones): next()
        takes the first, len() needs list() first."""
        return (m for _, m in self.named_modules(remove_duplicate=remove_duplicate))

    def named_children(self):
        """(name, child) for each direct child, a child under two names once (under its first), as PyTorch's."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and child not in seen:
                seen.add(child)
                yield name, child

    def children(self):
        return (m for _, m in self.named_children())

    def apply(self, fn):
        """fn(module) for every child's tree (each child's apply), then fn(self), as PyTorch's; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def _named_modules_to_visit(self, prefix, recurse, remove_duplicate):
        """named_modules(prefix=prefix, remove_duplicate=...), or with recurse=False this module alone
        (PyTorch's ``recurse``)."""
        return self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """A Parameter shared by two modules (tied weights: b.weight = a.weight) is listed once, under
        its first name, as in PyTorch (under each, with ``remove_duplicate=False``); its gradient is the
        sum of both uses' (each backward adds). recurse=False: this module's own parameters only."""
        seen = set()
        for mod_name, mod in self._named_modules_to_visit(prefix, recurse, remove_duplicate):
            for name, p in mod._parameters.items():
                if p is None or id(p) in seen:
                    continue
                if remove_duplicate:
                    seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self, recurse=True):
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        """(name, array) for each buffer that holds an array, as named_parameters lists parameters."""
        seen = set()
        for mod_name, mod in self._named_modules_to_visit(prefix, recurse, remove_duplicate):
            for name in mod._buffers:
                b = getattr(mod, name)
                if b is None or id(b) in seen:
                    continue
                if remove_duplicate:
                    seen.add(id(b))
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self, recurse=True):
        return (b for _, b in self.named_buffers(recurse=recurse))

    def get_submodule(self, target):
        """The module at the dotted path ``target`` ('' is this module), as PyTorch's: an AttributeError
        names the first step that is missing or not a Module."""
        if target == "":
            return self
        mod = self
        for name in target.split("."):
            if not hasattr(mod, name):
                raise AttributeError(f"{type(mod).__name__} has no attribute `{name}`")
            mod = getattr(mod, name)
            if not isinstance(mod, Module):
                raise AttributeError(f"`{name}` is not an nn.Module")
        return mod

    def get_parameter(self, target):
        """The Parameter at the dotted path ``target`` ('0.weight'); AttributeError as get_submodule's."""
        mod, name = self._owner_of(target)
        if not isinstance(getattr(mod, name), Parameter):
            raise AttributeError(f"`{name}` is not an nn.Parameter")
        return getattr(mod, name)

    def get_buffer(self, target):
        """The buffer at the dotted path ``target`` ('1.running_mean'); AttributeError as get_submodule's."""
        mod, name = self._owner_of(target)
        if name not in mod._buffers:
            raise AttributeError(f"`{name}` is not a buffer")
        return getattr(mod, name)

    def _owner_of(self, target):
        """(module, attribute name) for a dotted path to an attribute of a submodule."""
        path, _, name = target.rpartition(".")
        mod = self.get_submodule(path)
        if not hasattr(mod, name):
            raise AttributeError(f"{type(mod).__name__} has no attribute `{name}`")
        return mod, name

    # --- modes and gradients ------------------------------------------------------------
    def train(self, mode=True):
        if not isinstance(mode, (bool, np.bool_)):       # PyTorch's ValueError (NumPy's bool, which it refuses, is let in)
            raise ValueError(f"{type(self).__name__}.train: training mode is expected to be boolean, got {mode!r}")
        object.__setattr__(self, "training", bool(mode))
        for child in self.children():      # through each child's own train(), which a subclass may override
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Set every parameter's requires_grad, as PyTorch's: False freezes them (see Parameter). Returns self."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.fill(0)

    def to(self, *args, device=None, dtype=None, non_blocking=False, memory_format=None):
        """Cast floating parameters and buffers to a dtype (float32 to train, float64 to check):
        ``to(np.float64)``, ``to('float64')``, ``to(torch.float64)``, ``to(dtype=...)``. PyTorch's
        other call forms work for the CPU: ``to('cpu')``, ``to('cpu', np.float64)``,
        ``to(dtype, non_blocking)`` (which changes nothing on the CPU)."""
        only_default(self, "memory_format", memory_format, None)
        for a in args:
            if isinstance(a, bool):                        # to(dtype, non_blocking) or to(device, dtype, non_blocking)
                continue
            if isinstance(a, np.ndarray) or type(a).__name__ == "Tensor":
                raise NotImplementedError(f"{type(self).__name__}.to(tensor) is not implemented in nanotorch: "
                                          "give the dtype, to(x.dtype)")
            is_device = type(a).__name__ == "device" or (isinstance(a, str) and a.split(":")[0] in _DEVICES)
            if (device if is_device else dtype) is not None:
                raise TypeError(f"{type(self).__name__}.to: two {'devices' if is_device else 'dtypes'} given: {args}")
            device, dtype = (a, dtype) if is_device else (device, a)
        dtype = check_device_and_dtype(self, device, dtype)
        if dtype is None:                                  # (a device alone: nothing to do)
            return self
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None if p.grad is None else p.grad.astype(dtype)
        for m in self.modules():
            for name in m._buffers:
                b = getattr(m, name)
                if b is not None and np.issubdtype(b.dtype, np.floating):
                    object.__setattr__(m, name, b.astype(dtype))
        return self

    def cpu(self):
        """As PyTorch's: the module itself, already on the CPU (the only device nanotorch has)."""
        return self

    def cuda(self, device=None):
        """Refused with a clear error, as ``to('cuda')``: nanotorch runs on the CPU only."""
        return self.to("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device)

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # --- saving and loading ----------------------------------------------------------------
    def _state_entries(self):
        """(key, module, name, is_parameter, array) for every parameter and buffer, in PyTorch's
        order: module by module, each module's parameters before its buffers (a shared one under each name)."""
        for mod_name, mod in self.named_modules(remove_duplicate=False):
            for name, p in mod._parameters.items():
                if p is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), mod, name, True, p.data
            for name in mod._buffers:
                if name not in mod._non_persistent and getattr(mod, name) is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), mod, name, False, getattr(mod, name)

    def state_dict(self, *, destination=None, prefix="", keep_vars=False):
        """Copies of every parameter and buffer, keyed as PyTorch keys them (each key after ``prefix``;
        added to ``destination`` and returned, if given). keep_vars=True, which in PyTorch keeps the
        autograd variables, is not implemented."""
        if keep_vars:
            raise NotImplementedError(f"{type(self).__name__}.state_dict: keep_vars=True is not implemented in "
                                      "nanotorch (it returns copies; the live arrays are parameter.data)")
        out = OrderedDict() if destination is None else destination
        for key, _, _, _, array in self._state_entries():
            out[prefix + key] = np.array(array, copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy arrays into the model; a mismatch raises one error listing every bad key. Returns
        ``(missing_keys, unexpected_keys)`` as PyTorch does (both empty unless ``strict=False``).
        assign=True, which in PyTorch keeps the state_dict's own tensors, is not implemented."""
        only_default(self, "assign", assign, False)
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict-like state_dict (key -> array), "
                            f"got {type(state_dict).__name__}")
        own = OrderedDict((key, (mod, name, is_param, array))
                          for key, mod, name, is_param, array in self._state_entries())
        missing = [k for k, (mod, name, _, _) in own.items() if k not in state_dict
                   and name not in mod._may_be_missing]
        unexpected = self._unexpected([k for k in state_dict if k not in own])
        wrong = []
        for key, (mod, name, is_param, have) in own.items():
            if key in state_dict:
                got = np.asarray(state_dict[key])
                if got.shape != have.shape:
                    wrong.append(f"{key}: checkpoint {tuple(got.shape)} vs model {tuple(have.shape)}")
        problems = wrong + ([f"missing keys: {missing}"] if missing and strict else []) \
            + ([f"unexpected keys: {unexpected}"] if unexpected and strict else [])
        if problems:
            raise StateDictMismatch(f"state_dict does not fit {type(self).__name__}:\n  " + "\n  ".join(problems))
        for key, (mod, name, is_param, have) in own.items():
            if key not in state_dict:
                continue
            if is_param:                       # copied in place, as PyTorch does: views stay views
                have[...] = np.asarray(state_dict[key])
            else:
                object.__setattr__(mod, name, np.array(state_dict[key], dtype=have.dtype, copy=True))
        return IncompatibleKeys(missing, unexpected)

    def _unexpected(self, keys):
        """Of the keys the model has no array for, those PyTorch reports as unexpected, in its order.
        A key is judged by the module its leading names lead to: there, a name that is no child
        makes it unexpected, and a child slot holding None passes over it (neither loaded nor
        unexpected, as PyTorch's _load_from_state_dict leaves any key under a child's name to the
        child). Reporting modules come depth first; a module's keys in the state_dict's order."""
        if not keys:
            return keys
        visit = {path: i for i, (path, _) in enumerate(self.named_modules(remove_duplicate=False))}

        def reporter(key):
            """The visiting rank of the module that reports the key; None if a None child passes over it."""
            mod, path = self, ""
            for name in key.split(".")[:-1]:
                if name not in mod._modules:
                    break
                if mod._modules[name] is None:
                    return None
                mod, path = mod._modules[name], f"{path}.{name}" if path else name
            return visit[path]
        rank = {key: reporter(key) for key in keys}
        return sorted((key for key in keys if rank[key] is not None), key=rank.__getitem__)   # (stable)

    # --- printing ----------------------------------------------------------------------------
    def extra_repr(self):
        """The arguments to print inside ``Name(...)``, as PyTorch's layer of the same name prints them."""
        return ""

    def __repr__(self):
        """PyTorch's layout: ``Name(extra)`` on one line for a one-line extra_repr and no children;
        otherwise the extra_repr's lines, then ``(name): child`` for each child, one a line, indented."""
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        one_line = len(lines) == 1 and not self._modules
        for name, child in self._modules.items():
            first, *rest = repr(child).split("\n")      # the child's later lines two further in, blank ones emptied
            lines.append("\n".join([f"({name}): {first}"] + ["  " + line if line.strip() else "" for line in rest]))
        if one_line or not lines:
            return f"{type(self).__name__}({''.join(lines)})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _typename(value):
    """The name of value's type as PyTorch's errors show it: 'int', 'numpy.ndarray'."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _refuse_unless_none(value, what, name, expected):
    """PyTorch's TypeError for a value of the wrong kind assigned where a parameter, child or buffer is."""
    if value is not None:
        raise TypeError(f"cannot assign '{_typename(value)}' as {what} '{name}' ({expected} or None expected)")
