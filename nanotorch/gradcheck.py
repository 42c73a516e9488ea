"""Gradient checking by central finite differences.

For a module f, an input x and a fixed random upstream gradient g (same shape as f(x)), the scalar
L = sum(f(x) * g) has dL/dx = f.backward(g) and dL/dtheta = theta.grad. Each entry is compared with

    numeric = sum((f(v + eps) - f(v - eps)) * g) / (2 eps)    error O(eps^2) from the Taylor series

plus a rounding error of about 1e-16 * |L| / eps, which a small eps magnifies; the error reported is
relative:  |analytic - numeric| / max(|analytic| + |numeric|, floor). ``floor`` keeps entries that
are zero, or nearly, on both sides from dividing noise by noise. It cannot rescue a gradient that is
zero only up to rounding, whose numeric side is that rounding error: a conv bias followed by
BatchNorm in training shows ~3e-3 (tests/test_gradcheck.py checks that gradient is 0 instead).
For deep networks, where many gradient entries are tiny and rounding noise is not, ``scaled_errors``
measures each tensor's worst error against its largest entry.

The default eps = 1e-5 sits near the best trade-off for float64, (1e-16)^(1/3). With eps = 1e-6,
small gradient entries of a conv + BatchNorm + GELU block showed relative errors of 1e-6, which
moved with the BLAS kernels' rounding; with 1e-5, under 1e-8 for every layer in
tests/test_gradcheck.py.

Max pooling is not differentiable where two window entries tie; a perturbation larger than the
gap between them flips the argmax and the difference quotient jumps. Deep networks have many
windows, so check them with a smaller eps (1e-7). Randomness (dropout) is replayed: every generator found on the modules,
and the global one, is reset to its state at the start before each forward.
"""
import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from nanotorch import random as nt_random


@dataclass
class GradcheckResult:
    max_error: float                       # worst relative error over the input and every parameter
    where: str                             # "input[0, 1, 2, 3]" or "<param name>[i, j]"
    errors: dict = field(default_factory=dict)  # worst relative error per tensor
    scaled_errors: dict = field(default_factory=dict)  # max |analytic - numeric| / max |analytic|, per tensor

    def __str__(self):
        return f"worst relative error {self.max_error:.3e} at {self.where}"


def _replaying(module):
    """A function x -> copy of module(x) that first resets every random generator (the global one and
    any module's ``generator``) to its state now, so each forward draws the same dropout masks."""
    gens = [nt_random.default_generator()] + [m.generator for m in module.modules()
                                              if isinstance(getattr(m, "generator", None), np.random.Generator)]
    states = [copy.deepcopy(g.bit_generator.state) for g in gens]

    def run(inp):
        for g, s in zip(gens, states):
            g.bit_generator.state = copy.deepcopy(s)
        return module(inp).copy()        # a copy: a layer may return (a view of) its input
    return run


@contextmanager
def _buffers_restored(module):
    """Put every buffer back as it was afterwards: a check's many forwards move BatchNorm's running
    statistics and batch count, and must leave the module as they found it."""
    saved = [(mod, name, None if (b := getattr(mod, name)) is None else b.copy())
             for mod in module.modules() for name in mod._buffers]
    try:
        yield
    finally:
        for mod, name, value in saved:
            object.__setattr__(mod, name, value)


def _check_float64(fn, x, named):
    """float32 would round each perturbation eps away: differences of ~1e-3 that look like a backward bug."""
    if x.dtype != np.float64:
        raise TypeError(f"{fn} needs a float64 input for accurate differences, got {x.dtype}: "
                        "pass x.astype(np.float64)")
    for name, p in named.items():
        if p.data.dtype != np.float64:
            raise TypeError(f"{fn}: parameter {name!r} is {p.data.dtype}, float64 expected: call module.double()")


def _backward(fn, module, upstream, check_input):
    """module.backward(upstream): the input's gradient, which must be there if it is to be checked."""
    dx = module.backward(upstream.copy())
    if dx is None and check_input:
        raise ValueError(f"{fn}: {type(module).__name__}.backward returned None instead of the input's gradient "
                         "(a Conv2d with input_requires_grad=False skips it): pass check_input=False "
                         "to check the parameters only")
    return dx


def gradcheck(module, x, eps=1e-5, floor=1e-8, seed=0, params=None, check_input=True, max_entries=None):
    """Check ``module.backward`` against central differences; returns a GradcheckResult.

    module: a nanotorch Module (use float64: ``module.double()``); x: float64 array.
    params: names of the parameters to check, or one name (default: every parameter of
        ``module.named_parameters()`` with requires_grad; a frozen one has no gradient to check).
    check_input: also check the input's gradient (False for a module whose backward returns None).
    max_entries: check at most this many randomly chosen entries of each tensor (default: every entry).
    """
    named = dict(module.named_parameters())
    params = [params] if isinstance(params, str) else params      # (not its letters)
    unknown = [n for n in (params or ()) if n not in named]
    if unknown:
        raise ValueError(f"gradcheck: no parameter named {', '.join(map(repr, unknown))} in "
                         f"{type(module).__name__}; expected names from {list(named)}")
    frozen = [n for n in (params or ()) if not named[n].requires_grad]
    if frozen:
        raise ValueError(f"gradcheck: parameter {', '.join(map(repr, frozen))} has requires_grad=False, so its "
                         "backward computes no gradient to check: set requires_grad=True to check it")
    named = {n: named[n] for n in (params if params is not None else named) if named[n].requires_grad}
    _check_float64("gradcheck", x, named)
    with _buffers_restored(module):
        return _gradcheck(module, x, eps, floor, seed, named, check_input, max_entries)


def _gradcheck(module, x, eps, floor, seed, named, check_input, max_entries):
    run = _replaying(module)
    out = run(x)
    upstream = np.random.default_rng(seed).standard_normal(out.shape)
    module.zero_grad()
    analytic = {"input": _backward("gradcheck", module, upstream, check_input)}
    for name, p in named.items():
        analytic[name] = p.grad if p.grad is not None else np.zeros_like(p.data)

    targets = ([("input", x)] if check_input else []) + [(n, named[n].data) for n in analytic if n != "input"]
    result = GradcheckResult(0.0, "nothing checked")
    pick = np.random.default_rng(seed + 1)
    for name, arr in targets:
        numeric = np.zeros_like(arr, dtype=np.float64)
        checked = np.zeros(arr.shape, dtype=bool)
        indices = list(np.ndindex(arr.shape))
        if max_entries is not None and len(indices) > max_entries:
            indices = [indices[i] for i in pick.choice(len(indices), max_entries, replace=False)]
        for idx in indices:
            checked[idx] = True
            old = arr[idx]
            try:
                arr[idx] = old + eps
                plus = run(x)
                arr[idx] = old - eps
                minus = run(x)
            finally:
                arr[idx] = old                 # the caller's x and parameters as they were, even on an error
            # difference the outputs before the dot product: summing L first would cancel away digits
            numeric[idx] = np.sum((plus - minus) * upstream) / (2 * eps)
        a = np.where(checked, analytic[name], 0.0)
        rel = np.abs(a - numeric) / np.maximum(np.abs(a) + np.abs(numeric), floor)
        worst = np.unravel_index(np.argmax(rel), rel.shape) if rel.size else ()
        err = float(rel[worst]) if rel.size else 0.0
        result.errors[name] = err
        result.scaled_errors[name] = float(np.abs(a - numeric).max() / max(np.abs(a).max(), floor))
        if err >= result.max_error:
            result.max_error, result.where = err, f"{name}{list(int(i) for i in worst)}"
    return result


def gradcheck_directional(module, x, eps=1e-5, seed=0, check_input=True):
    """One check that covers every entry of the input and of every parameter at once.

    Along a random direction v (one for x, one for each parameter) the chain rule gives
    d/dt L(x + t v_x, theta + t v_theta) = <dL/dx, v_x> + sum <dL/dtheta, v_theta>; both sides are
    computed (the left by central differences) and their relative difference returned.
    check_input=False keeps x fixed (v_x = 0), for a module whose backward returns None; frozen
    parameters (requires_grad=False) stay fixed too.
    """
    _check_float64("gradcheck_directional", x, dict(module.named_parameters()))
    with _buffers_restored(module):
        return _directional(module, x, eps, seed, check_input)


def _directional(module, x, eps, seed, check_input):
    run = _replaying(module)
    rng = np.random.default_rng(seed)
    upstream = rng.standard_normal(run(x).shape)
    module.zero_grad()
    dx = _backward("gradcheck_directional", module, upstream, check_input)
    params = [p for p in module.parameters() if p.requires_grad]     # (a list: gone through several times below)
    v_x = rng.standard_normal(x.shape) if check_input else np.zeros_like(x)
    v_p = [rng.standard_normal(p.data.shape) for p in params]
    analytic = float((np.sum(dx * v_x) if check_input else 0.0)
                     + sum(np.sum((p.grad if p.grad is not None else 0) * v) for p, v in zip(params, v_p)))
    originals = [p.data.copy() for p in params]

    def shifted(t):
        for p, o, v in zip(params, originals, v_p):
            p.data[...] = o + t * v
        return run(x + t * v_x)

    try:
        numeric = float(np.sum((shifted(eps) - shifted(-eps)) * upstream) / (2 * eps))
    finally:
        for p, o in zip(params, originals):
            p.data[...] = o
    return abs(analytic - numeric) / max(abs(analytic) + abs(numeric), 1e-12)
