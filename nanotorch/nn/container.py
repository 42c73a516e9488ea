"""Sequential: runs its children in order, and backward in reverse (the chain rule); a list of layers.

Its bookkeeping (registration, state_dict keys, modes) is Module's (nanotorch/nn/module.py). What
is its own: the order, list operations that keep the keys '0', '1', ... as PyTorch's do, and the
refusal of a module it would run twice in one forward (see module.py on why a layer runs once a pass).
"""
import operator
from collections import OrderedDict

from nanotorch.nn.module import Module, _typename


class Sequential(Module):
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

    def __setitem__(self, i, module):
        setattr(self, self._key(i), module)

    def __delitem__(self, i):
        """Delete the child at index i, or those of a slice; then renumber the keys '0', '1', ... as PyTorch."""
        for key in list(self._modules)[i] if isinstance(i, slice) else [self._key(i)]:
            delattr(self, key)
        self._renumber(list(self._modules.values()))

    def _key(self, i):
        """The key of the child at index i (negative counts from the end), with PyTorch's IndexError."""
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"Sequential: index {i} is out of range for its {len(self)} layers")
        return list(self._modules)[i]

    def _renumber(self, layers):
        """Hold ``layers`` under the keys '0', '1', ... in order. (This empties the Sequential first:
        a caller that adds a layer checks the new list beforehand, so that a refusal changes nothing.)"""
        for key in list(self._modules):
            Module.__delattr__(self, key)
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)

    def append(self, module):
        """Add ``module`` at the end, under the key str(len(self)), as PyTorch's; returns self."""
        self.add_module(str(len(self)), module)
        return self

    def insert(self, index, module):
        """Put ``module`` before the child at ``index`` (len(self): at the end; negative counts from the
        end), renumbering the keys; returns self. (PyTorch raises an AssertionError for a non-Module,
        and a KeyError for a Sequential keyed by names, which this renumbers.)"""
        if not isinstance(module, Module):
            raise TypeError(f"{_typename(module)} is not a Module subclass")
        index = operator.index(index)
        if not -len(self) <= index <= len(self):
            raise IndexError(f"Sequential.insert: index {index} is out of range for its {len(self)} layers")
        layers = list(self._modules.values())
        layers.insert(index, module)
        self._refuse_running_twice(dict(enumerate(layers)))
        self._renumber(layers)
        return self

    def extend(self, sequential):
        """Append each module of ``sequential`` (a Sequential, or any iterable of Modules); returns self."""
        for module in sequential:
            self.append(module)
        return self

    def pop(self, key):
        """Remove and return the child at index ``key`` (for a slice, a Sequential of those), as PyTorch's."""
        popped = self[key]
        del self[key]
        return popped

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, grad_out):
        for layer in reversed(self._modules.values()):
            grad_out = layer.backward(grad_out)
        return grad_out


def _runs(module, path):
    """(path, module) for ``module`` and, if it is a Sequential, everything its forward runs."""
    yield path, module
    if isinstance(module, Sequential):
        for name, child in module._modules.items():
            if child is not None:
                yield from _runs(child, f"{path}.{name}")
