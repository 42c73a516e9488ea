"""Sequential: runs its children in order, and backward in reverse (the chain rule); a list of layers.
ModuleList: a list of layers that runs nothing itself, for a Module's own forward and backward to loop over.

Their bookkeeping (registration, state_dict keys, modes) is Module's (nanotorch/nn/module.py); the
list operations that keep the keys '0', '1', ... as PyTorch's do are _ModuleSequence's, below. What
is Sequential's own: the order and the refusal of a module it would run twice in one forward (see
module.py on why a layer runs once a pass). ModuleList has no forward or backward.
"""
import operator
from collections import OrderedDict
from collections.abc import Iterable
from itertools import chain

from nanotorch.grad_mode import is_grad_enabled
from nanotorch.nn.module import Module, _typename


class _ModuleSequence(Module):
    """What Sequential and ModuleList share: children under the keys '0', '1', ... (a Sequential's may be
    names), read and changed as a list, with PyTorch's IndexError and renumbering."""

    def _key(self, i):
        """The key of the child at index i (negative counts from the end), with PyTorch's IndexError."""
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{type(self).__name__}: index {i} is out of range for its {len(self)} modules")
        return list(self._modules)[i]

    def __setitem__(self, i, module):
        setattr(self, self._key(i), module)      # (Module.__setattr__ refuses a non-Module, as PyTorch's)

    def __delitem__(self, i):
        """Delete the child at index i, or those of a slice; then renumber the keys '0', '1', ... as PyTorch."""
        for key in list(self._modules)[i] if isinstance(i, slice) else [self._key(i)]:
            delattr(self, key)
        self._renumber(list(self._modules.values()))

    def _renumber(self, modules):
        """Hold ``modules`` under the keys '0', '1', ... in order. (This empties the list first: a
        caller that adds a module checks the new list beforehand, so that a refusal changes nothing.)"""
        for key in list(self._modules):
            Module.__delattr__(self, key)
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def _with_inserted(self, index, module):
        """The children as a list, with ``module`` before the child at ``index`` (len(self): at the end;
        negative counts from the end), for insert; a refused index changes nothing."""
        index = operator.index(index)
        if not -len(self) <= index <= len(self):
            raise IndexError(f"{type(self).__name__}.insert: index {index} is out of range for its {len(self)} modules")
        modules = list(self._modules.values())
        modules.insert(index, module)
        return modules

    def append(self, module):
        """Add ``module`` at the end, under the key str(len(self)), as PyTorch's; returns self."""
        self.add_module(str(len(self)), module)
        return self

    def pop(self, key):
        """Remove and return the child at index ``key`` (for a slice, a list of the same kind), as PyTorch's."""
        popped = self[key]
        del self[key]
        return popped


class Sequential(_ModuleSequence):
    """Runs its children in order; backward runs them in reverse (the chain rule).

    ``Sequential(a, b, c)`` keys its children '0', '1', '2'; ``Sequential(OrderedDict(name=layer, ...))``
    by their names. As a list, as PyTorch's: ``seq[i]``, ``seq[i] = layer``, ``del seq[i]``, ``append``,
    ``insert``, ``extend``, ``pop``, with negative indices and slices; a delete or an insert renumbers
    the keys '0', '1', ... (so the state_dict's keys follow, as PyTorch's do).
    """

    def __init__(self, *layers):
        super().__init__()
        named = layers[0] if len(layers) == 1 and isinstance(layers[0], OrderedDict) else dict(enumerate(layers))
        for key, layer in named.items():
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {key!r} is a {type(layer).__name__}, expected a Module")
        self._refuse_running_twice(named)
        for key, layer in named.items():
            self.add_module(str(key), layer)

    def __setattr__(self, name, value):
        if isinstance(value, Module) and self._modules.get(name) is not value:
            self._refuse_running_twice({**{n: m for n, m in self._modules.items() if n != name}, name: value})
        super().__setattr__(name, value)

    def _refuse_running_twice(self, children):
        """forward runs every child, and a child Sequential every one of its own: a module reached
        twice that way would run twice in one pass, and its backward would see only the second
        call's values (wrong gradients, silently). Refused, as is this Sequential inside itself."""
        seen = {id(self): "this Sequential"}
        for name, child in children.items():
            if child is None:                   # (a slot with no layer, which forward cannot run anyway)
                continue
            for path, m in _runs(child, str(name)):
                if id(m) in seen:
                    raise ValueError(
                        f"Sequential: its {type(m).__name__} at '{path}' is already at {seen[id(m)]}, so forward "
                        "would run it twice, and a layer keeps only its last call's values for the backward: "
                        "use another instance (to share weights, share the Parameter: b.weight = a.weight)")
                seen[id(m)] = f"'{path}'"

    def __getitem__(self, i):
        """A child, or for a slice a Sequential of those children under their own names (as PyTorch)."""
        if isinstance(i, slice):
            part = Sequential()
            for name, layer in list(self._modules.items())[i]:
                Module.__setattr__(part, name, layer)          # (part of a valid Sequential: nothing to check)
            return part
        return self._modules[self._key(i)]

    def insert(self, index, module):
        """Put ``module`` before the child at ``index`` (len(self): at the end; negative counts from the
        end), renumbering the keys; returns self. (PyTorch raises an AssertionError for a non-Module,
        and a KeyError for a Sequential keyed by names, which this renumbers.)"""
        if not isinstance(module, Module):
            raise TypeError(f"{_typename(module)} is not a Module subclass")
        layers = self._with_inserted(index, module)
        self._refuse_running_twice(dict(enumerate(layers)))
        self._renumber(layers)
        return self

    def extend(self, sequential):
        """Append each module of ``sequential`` (a Sequential, or any iterable of Modules); returns self.
        (A module it would run twice is refused before any is appended, as by insert.)"""
        modules = list(sequential)               # (read first: ``seq += seq`` must not see its own appends)
        self._refuse_running_twice({**self._modules, **{str(len(self) + i): m for i, m in enumerate(modules)}})
        for module in modules:
            self.append(module)
        return self

    def __add__(self, other):
        """A new Sequential of this one's layers, then other's (the same instances), keyed '0', '1', ..."""
        return Sequential(*self, *_sequential_operand(other))

    def __iadd__(self, other):
        return self.extend(_sequential_operand(other))

    def __mul__(self, times):
        """PyTorch's repetition of the layers, ``seq * n``: the same instances n times, which a Sequential
        refuses for n > 1 (a layer runs once a pass: build n blocks instead); ``seq * 1`` is a copy of the list."""
        return Sequential(*(list(self) * _factor(self, times)))

    __rmul__ = __mul__

    def __imul__(self, times):
        return self.extend(list(self) * (_factor(self, times) - 1))

    def forward(self, x):
        if not is_grad_enabled():
            return self._forward_no_grad(x)
        for layer in self._modules.values():
            x = layer(x)
        return x

    def _forward_no_grad(self, x):
        """The children in order, but a child may run the one after it with it, in one pass: where its
        ``forward_with_next`` gives an output (Module.forward_with_next; nn/fused.py's ConvBNGELU
        with a MaxPool2d(2) after it). Under no_grad only: a layer run inside another's pass has
        nothing for a backward."""
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            layer = layers[i]
            # (a None slot is asked nothing, and fails below as it would in the loop above)
            y = layer.forward_with_next(x, layers[i + 1]) if i + 1 < len(layers) and layer is not None else None
            if y is None:
                x, i = layer(x), i + 1
            else:
                x, i = y, i + 2
        return x

    def backward(self, grad_out):
        for layer in reversed(self._modules.values()):
            grad_out = layer.backward(grad_out)
        return grad_out


class ModuleList(_ModuleSequence):
    """A list of modules, registered under the keys '0', '1', ... (so ``parameters()``, ``to()``,
    ``train()`` and ``state_dict()`` see them, with PyTorch's keys: ``layers.0.weight``), for a
    Module that runs them in its own forward, and their backwards in its own backward::

        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleList([nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)])

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x

            def backward(self, grad_out):
                for layer in reversed(self.layers):      # the chain rule: the last layer first
                    grad_out = layer.backward(grad_out)
                return grad_out

    It has no forward (calling it raises NotImplementedError, as PyTorch's) and no backward. As
    PyTorch's: ``ModuleList(iterable)``, ``ml[i]`` (negative too; a slice is a new ModuleList keyed
    from '0'), ``ml[i] = m``, ``del ml[i]`` and ``del ml[a:b]`` (renumbering the keys), ``append``,
    ``extend`` and ``+=`` (any iterable of Modules), ``+`` (a new ModuleList), ``insert``, ``pop``,
    ``len`` and iteration. Unlike PyTorch's, ``insert`` takes a negative index as a list does, and
    refuses an index out of range and a non-Module (PyTorch's raises a KeyError for a negative index,
    leaves a gap in the keys past the end, and stores a non-Module). A layer may sit in the list twice,
    but a forward must not run one instance twice (it keeps one call's values for its backward).
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self += modules

    def __getitem__(self, i):
        if isinstance(i, slice):
            return type(self)(list(self._modules.values())[i])
        return self._modules[self._key(i)]

    def __iadd__(self, modules):
        return self.extend(modules)

    def __add__(self, other):
        """A new ModuleList of this one's modules and then other's (any iterable of Modules)."""
        combined = ModuleList()
        for i, module in enumerate(chain(self, other)):
            combined.add_module(str(i), module)
        return combined

    def __dir__(self):
        return [key for key in super().__dir__() if not key.isdigit()]     # (as PyTorch's: no '0', '1', ...)

    def insert(self, index, module):
        """Put ``module`` before the module at ``index`` (len(self): at the end; negative counts from
        the end), renumbering the keys after it. Returns None, as PyTorch's."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{_typename(module)} is not a Module subclass")
        self._renumber(self._with_inserted(index, module))

    def extend(self, modules):
        """Append each module of the iterable ``modules``; returns self."""
        if not isinstance(modules, Iterable):
            raise TypeError(f"ModuleList.extend should be called with an iterable, but got {type(modules).__name__}")
        for module in list(modules):              # (a list first: ml.extend(ml) doubles it)
            self.append(module)
        return self

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "ModuleList has no forward, as PyTorch's: a Module's own forward runs its layers "
            "(for layer in self.layers: x = layer(x)); nn.Sequential runs them in order itself")

    def backward(self, grad_out):
        raise NotImplementedError(
            "ModuleList has no backward: a Module's own backward runs its layers' backwards in the reverse "
            "order of its forward (for layer in reversed(self.layers): grad_out = layer.backward(grad_out))")

    def __repr__(self):
        """PyTorch's: one line per module, a run of modules that print alike as one, '(2-4): 3 x ReLU()'."""
        runs = []                                 # [first index, last index, repr]
        for i, module in enumerate(self):
            text = repr(module)
            if runs and runs[-1][2] == text:
                runs[-1][1] = i
            else:
                runs.append([i, i, text])
        if not runs:
            return f"{type(self).__name__}()"
        lines = []
        for first, last, text in runs:
            head = f"({first}): " if first == last else f"({first}-{last}): {last - first + 1} x "
            top, *rest = (head + text).split("\n")     # later lines two further in, blank ones emptied
            lines.append("\n".join([top] + ["  " + line if line.strip() else "" for line in rest]))
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _sequential_operand(other):
    """The other side of ``+`` and ``+=``: a Sequential only, with PyTorch's ValueError."""
    if not isinstance(other, Sequential):
        raise ValueError(f"add operator supports only objects of Sequential class, but {type(other)} is given.")
    return other


def _factor(seq, times):
    """The n of ``seq * n``: a positive int (not a bool: stricter than PyTorch), with PyTorch's errors;
    above 1 for a Sequential with layers, refused here, saying why (PyTorch repeats the instances)."""
    if not isinstance(times, int) or isinstance(times, bool):
        raise TypeError(f"unsupported operand type(s) for *: {type(seq)} and {type(times)}")
    if times <= 0:
        raise ValueError(f"Non-positive multiplication factor {times} for {type(seq)}")
    if times > 1 and len(seq):
        raise ValueError(f"Sequential * {times} would hold each of its layers {times} times, and forward would run "
                         "each instance that often, but a layer keeps only its last call's values for the backward: "
                         f"build {times} blocks instead (nn.Sequential(*[make_block() for _ in range({times})]))")
    return times


def _runs(module, path):
    """(path, module) for ``module`` and, if it is a Sequential, everything its forward runs."""
    yield path, module
    if isinstance(module, Sequential):
        for name, child in module._modules.items():
            if child is not None:
                yield from _runs(child, f"{path}.{name}")
