"""Optimizer: the bookkeeping every optimiser shares (PyTorch's ``torch.optim.Optimizer``).

An optimiser holds

    param_groups : list of dicts, each {'params': [Parameter, ...], 'lr': ..., <other hyper-parameters>}
    state        : dict Parameter -> dict of per-parameter arrays (SGD's 'momentum_buffer', Adam's
                   'exp_avg', ...) and counts (Adam's 'step', a float)

Schedulers change a group's hyper-parameters (``group['lr']``, ``group['momentum']``) between
steps; ``step()`` reads them afresh every time.

Checkpoints. ``state_dict()`` has PyTorch's layout, with parameters replaced by their index
(counted across groups in order)::

    {'state':        {0: {'momentum_buffer': ndarray}, 1: {...}, ...},
     'param_groups': [{'lr': 0.1, 'momentum': 0.9, ..., 'params': [0, 1, 2]}, ...]}

Every leaf is an ndarray, a plain scalar (float, int, bool, str) or None (SGD's foreach and
fused, as PyTorch keeps them), so it needs no pickle.
``flatten_state_dict`` / ``unflatten_state_dict`` turn such a nested dict into a flat
{str: ndarray} that ``np.savez`` writes and ``np.load(..., allow_pickle=False)`` reads back::

    np.savez(path, **flatten_state_dict(opt.state_dict(), prefix="optimizer."),
                   **flatten_state_dict(sched.state_dict(), prefix="scheduler."))
    with np.load(path, allow_pickle=False) as f:
        opt.load_state_dict(unflatten_state_dict(f, prefix="optimizer."))
        sched.load_state_dict(unflatten_state_dict(f, prefix="scheduler."))
"""
import copy
import math
import numbers
import re

import numpy as np


def is_number(value):
    """A real number, not a bool and not NaN: what a hyper-parameter must be (optimisers, schedulers)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _is_parameter(p):
    # Duck-typed so optim/ needs nothing from nn/: a Parameter is anything with .data and .grad.
    return hasattr(p, "data") and hasattr(p, "grad")


class Optimizer:
    """Base class: ``param_groups``, per-parameter ``state``, ``zero_grad`` and checkpoints.

    Args:
        params: an iterable of Parameters (or of (name, Parameter) pairs, as ``named_parameters()``
            gives them: the names are kept in the group's ``param_names``), or of dicts (parameter groups) such as
            ``[{'params': backbone}, {'params': head, 'lr': 0.1}]``; a group's missing
            hyper-parameters are taken from ``defaults``.
        defaults: dict of the hyper-parameters' default values.

    Subclasses implement ``step()`` and may override ``_check_group(group)`` to reject bad
    hyper-parameters in any group.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}
        self.param_groups = []
        if _is_parameter(params) or isinstance(params, np.ndarray):
            raise TypeError("params must be an iterable of Parameters or of dicts (parameter groups), "
                            f"got a single {type(params).__name__}: wrap it in a list")
        if callable(getattr(params, "parameters", None)):              # (the model itself)
            raise TypeError(f"params must be an iterable of Parameters, got the module {type(params).__name__}: "
                            "pass model.parameters(), not the model")
        if callable(params) and not hasattr(params, "__iter__"):     # (model.parameters, not called)
            raise TypeError(f"params must be an iterable of Parameters, got the {type(params).__name__} "
                            f"{getattr(params, '__name__', '')!r}: call it: model.parameters()")
        groups = list(params)
        if not groups:
            raise ValueError("params is empty: the optimiser got no parameters to optimise")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Append a group; hyper-parameters it does not set come from ``defaults``."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("a parameter group needs a 'params' entry")
        if isinstance(params, (set, frozenset)):     # (PyTorch's TypeError for a set; state_dict() indexes the
            # parameters in order. A frozenset, which PyTorch lets through, has as unstable an order: refused too)
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering "
                            "of parameters in sets changes between runs: give a list")
        params = [params] if _is_parameter(params) else list(params)
        if params and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in params):
            group["param_names"] = [name for name, _ in params]     # from named_parameters(), as PyTorch keeps them
            params = [p for _, p in params]
        if any(("param_names" in g) != ("param_names" in group) for g in self.param_groups):
            raise ValueError("all parameter groups must be given with names (named_parameters()) or all without, "
                             "as in PyTorch")
        for p in params:
            if not _is_parameter(p):
                hint = ": pass model.parameters(), not the model" if hasattr(p, "parameters") else ""
                raise TypeError(f"the optimiser can only optimise Parameters, got a {type(p).__name__}{hint}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter group contains the same Parameter twice")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._check_group(group)
        self.param_groups.append(group)

    # Per-parameter state entries that are numbers (Adam's 'step'), not arrays of the parameter's shape.
    _scalar_state = ()

    def _check_group(self, group, scheduled=False):
        """Raise ValueError for bad hyper-parameters (subclasses override, with _check_hyperparameters).
        ``scheduled``: in step() and load_state_dict(), where a scheduler may have written the lr (and
        OneCycleLR the momentum, Adam's beta1): those are then not range-checked, see below."""

    def _check_hyperparameters(self, group, numeric=(), non_negative=(), unimplemented=(), scheduled=False):
        """PyTorch's checks of a group's hyper-parameters, shared by the optimisers: each key of
        ``numeric`` a real number (not a bool, not NaN), each of ``non_negative`` ((key, what it is)
        pairs) >= 0, and each of ``unimplemented`` at its default, False (NotImplementedError).

        With ``scheduled``, lr may be negative: PyTorch checks it only where it is given (the
        constructor), and a scheduler can write one below 0 (LinearLR down to end_factor=0 rounds to
        -1.85e-18; OneCycleLR's linear anneal passes min_lr at its last step, and max_momentum too,
        Adam's beta1 past 1 in a short cycle), which PyTorch's step() uses and its state_dict() saves
        and loads."""
        name = type(self).__name__
        for key in numeric:
            if not is_number(group[key]):
                raise ValueError(f"{name}: {key} must be a number, got {group[key]!r}")
        for key, what in non_negative:
            if group[key] < 0 and not (scheduled and key == "lr"):
                raise ValueError(f"{name}: invalid {key}={group[key]}: expected a non-negative {what}")
        for key in unimplemented:
            if group.get(key):
                raise NotImplementedError(f"{name}: {key}={group[key]!r} is not implemented in nanotorch "
                                          f"(only {key}=False)")

    def step(self):
        raise NotImplementedError(f"{type(self).__name__}.step")

    def zero_grad(self, set_to_none=True):
        """Forget the gradients: ``grad = None`` (PyTorch's default), or fill them with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.fill(0)

    # --- checkpoints ------------------------------------------------------------------
    def state_dict(self):
        """The state with parameters replaced by their index (see the module docstring).

        Arrays are copies, so training on does not change a saved state_dict.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            state[index[id(p)]] = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
                                   for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and per-parameter state saved by ``state_dict()``.

        The groups must have the same number of parameters as when saved. Arrays are copied
        and cast to their parameter's dtype, as PyTorch casts state to the parameter's (a count such
        as Adam's 'step' becomes a float).
        """
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, "
                             f"the optimiser has {len(self.param_groups)}")
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {i}: state_dict has {len(saved['params'])} parameters, "
                                 f"the optimiser has {len(group['params'])}")
        by_index = {}
        for group, saved in zip(self.param_groups, saved_groups):
            for idx, p in zip(saved["params"], group["params"]):
                by_index[int(idx)] = p

        state = {}
        for idx, saved_state in state_dict["state"].items():
            p = by_index.get(int(idx))
            if p is None:
                raise ValueError(f"state_dict has state for parameter {idx}, which no group lists")
            restored = {}
            for key, value in saved_state.items():
                if key in self._scalar_state:
                    # (a count such as Adam's 'step': PyTorch's 0-d float32 tensor, or the float
                    # unflatten_state_dict gives back; kept as a float, not cast to the parameter's dtype)
                    if np.ndim(value) != 0 or isinstance(value, (bool, np.bool_, str)):
                        raise ValueError(f"state '{key}' of parameter {idx} must be a number, got {value!r}")
                    value = float(value)
                elif isinstance(value, np.ndarray) or (value is not None and not isinstance(value, (bool, str))):
                    # (a 0-d buffer comes back from unflatten_state_dict as a Python scalar; None, as
                    # PyTorch may save it, means no buffer yet: the next step starts one)
                    value = np.array(value, dtype=p.data.dtype, copy=True)
                    if value.size != p.data.size:
                        raise ValueError(f"state '{key}' of parameter {idx} has shape {value.shape}, "
                                         f"the parameter has {p.data.shape}")
                    value = value.reshape(p.data.shape)
                restored[key] = value
            state[p] = restored

        groups = [{**{k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}, "params": group["params"]}
                  for group, saved in zip(self.param_groups, saved_groups)]
        for group, own in zip(groups, self.param_groups):
            if "param_names" in own and "param_names" not in group:    # an unnamed state: the names stay, as in PyTorch
                group["param_names"] = own["param_names"]
        for group in groups:
            self._check_group(group, scheduled=True)   # the saved hyper-parameters must be ones this optimiser runs
        self.state, self.param_groups = state, groups

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"


# --- flat, pickle-free checkpoints -----------------------------------------------------
#
# A nested dict becomes one {key: ndarray} per leaf. Keys are paths:
#     'state.0.momentum_buffer'   dict entries joined by '.'; all-digit keys come back as ints
#     'param_groups[1].lr'        [i] indexes a list (of dicts)
#     'param_groups[0].params[]'  a list of numbers, stored as one 1-d array
#     'state{}'                   an empty dict
#     'param_groups[0].foreach~'  None (PyTorch's SGD keeps foreach=None and fused=None in its groups)
# 0-d arrays come back as Python scalars (float, int, bool, str), other arrays as arrays.

# A name (after a '.' unless it starts the key), a list index [i], a list of numbers [], an empty dict {},
# None ~.
_TOKEN = re.compile(r"(?:^|\.)([^.\[\]{}~]+)|\[(\d+)\]|(\[\])|(\{\})|(~)")


class _ListIndex(int):
    """A path token that indexes a list, as opposed to an int dict key."""


def flatten_state_dict(state_dict, prefix=""):
    """Nested dict (of dicts, lists, arrays, scalars) -> flat {str: ndarray}, for ``np.savez``."""
    flat = {}

    def visit(value, path):
        if isinstance(value, dict):
            if not value:
                flat[path + "{}"] = np.zeros(0)
            for k, v in value.items():
                k = str(k)
                if not k or any(c in k for c in ".[]{}~"):
                    raise ValueError(f"state_dict key {k!r} at {path!r} cannot be flattened: "
                                     "keys must be non-empty and free of '.[]{}~'")
                visit(v, f"{path}.{k}" if path else k)
        elif isinstance(value, (list, tuple)):
            if all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in value):
                flat[path + "[]"] = np.asarray(value, dtype=None if value else np.float64)
            else:
                for i, v in enumerate(value):
                    visit(v, f"{path}[{i}]")
        elif isinstance(value, (np.ndarray, np.number, np.bool_, bool, int, float, str)):
            flat[path] = np.array(value, copy=True)
        elif value is None:
            flat[path + "~"] = np.zeros(0)
        else:
            raise TypeError(f"cannot flatten {type(value).__name__} at {path!r}: "
                            "expected a dict, list, ndarray or scalar")

    visit(state_dict, "")
    return {prefix + k: v for k, v in flat.items()}


def unflatten_state_dict(flat, prefix=""):
    """Inverse of ``flatten_state_dict``: keys starting with ``prefix`` -> the nested dict.

    ``flat`` may be any mapping, e.g. the object ``np.load(path, allow_pickle=False)`` returns.
    """
    root = {}
    for full_key in flat:
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix):]
        tokens = []
        pos = 0
        while pos < len(key):
            m = _TOKEN.match(key, pos)
            if m is None or (tokens and tokens[-1] in ("[]", "{}", "~")):
                raise ValueError(f"malformed state_dict key {full_key!r}")
            name, index, as_list, as_dict, _ = m.groups()
            if name is not None:
                tokens.append(int(name) if name.isdigit() else name)
            elif index is not None:
                tokens.append(_ListIndex(int(index)))
            else:
                tokens.append("[]" if as_list else "{}" if as_dict else "~")
            pos = m.end()
        value = np.asarray(flat[full_key])
        if tokens[-1] == "[]":
            tokens, leaf = tokens[:-1], value.tolist()
        elif tokens[-1] == "{}":
            tokens, leaf = tokens[:-1], {}
        elif tokens[-1] == "~":
            tokens, leaf = tokens[:-1], None
        else:
            leaf = value.item() if value.ndim == 0 else np.array(value, copy=True)
        if not tokens:
            if isinstance(leaf, dict):
                continue  # the whole dict was empty
            raise ValueError(f"malformed state_dict key {full_key!r}")
        node = root
        for tok in tokens[:-1]:
            node = node.setdefault(tok, {})
        node[tokens[-1]] = leaf

    def lists_back(node):
        # Dicts whose keys are all list indices were lists: rebuild them in index order.
        if not isinstance(node, dict):
            return node
        items = {k: lists_back(v) for k, v in node.items()}
        if items and all(isinstance(k, _ListIndex) for k in items):
            if sorted(items) != list(range(len(items))):
                raise ValueError(f"list indices {sorted(items)} are not 0..{len(items) - 1}")
            return [items[i] for i in range(len(items))]
        return {int(k) if isinstance(k, _ListIndex) else k: v for k, v in items.items()}

    return lists_back(root)
