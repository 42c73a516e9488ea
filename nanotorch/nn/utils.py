"""Parameter utilities: ``clip_grad_norm_``, ``clip_grad_value_``, ``parameters_to_vector`` and
``vector_to_parameters`` (as torch.nn.utils), and ``flatten_parameters``."""
import math

import numpy as np

from nanotorch.kernels.optim import sum_of_squares
from nanotorch.nn._checks import _FLOAT_DTYPES
from nanotorch.nn.module import Parameter


def _vector_norm(x, norm_type):
    """The p-norm of x seen as one vector, as torch.linalg.vector_norm defines it.

    p = inf: max |x|;  p = -inf: min |x|;  p = 0: number of non-zeros;  else (sum |x|^p)^(1/p).
    For an empty x, p = +-inf and p < 0 raise (they have no value there), the others give 0.
    Accumulated in float64 so float32 gradients lose nothing to the sum.
    """
    x = np.asarray(x)
    if norm_type == 2 and x.dtype in _FLOAT_DTYPES:      # one compiled pass, no float64 copy (kernels/optim.py)
        return math.sqrt(sum_of_squares(x.ravel()))
    x = np.abs(x.astype(np.float64)).ravel()
    if (norm_type < 0 or norm_type == math.inf) and not x.size:
        # (no max or min to take, and for p < 0 (sum of none)^(1/p) = 0^(1/p) is inf: PyTorch's error)
        raise RuntimeError(f"clip_grad_norm_: cannot compute the {norm_type} norm of an empty gradient")
    if norm_type == math.inf:
        return x.max()
    if norm_type == -math.inf:
        return x.min()
    if norm_type == 0:
        return float(np.count_nonzero(x))
    if norm_type == 1:
        return x.sum()
    return np.sum(x ** norm_type) ** (1.0 / norm_type)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""Rescale the gradients in place so that their total norm is at most ``max_norm``.

    The total norm is the p-norm of the per-parameter p-norms, which is the norm of all gradients
    as one vector (for p = inf, the largest |g| anywhere) for every p but 0: there, as in PyTorch,
    it counts the parameters with a non-zero gradient, not the non-zero entries.

        total = || ( ||g_1||_p, ||g_2||_p, ... ) ||_p
        coef  = min(max_norm / (total + 1e-6), 1)
        g_i  <- coef * g_i        for every gradient, also when coef == 1 (as PyTorch does)

    The 1e-6 keeps the division finite for all-zero gradients and leaves the clipped norm just
    under max_norm; max_norm = 0 zeroes the gradients, as in PyTorch.

    The total norm is accumulated in float64 (PyTorch accumulates in the gradients' dtype) and then
    rounded to the gradients' dtype, so for float32 gradients it can differ from PyTorch's by ~1 ulp;
    and where the squares of float32 gradients overflow float32 (|g| above ~1.8e19) PyTorch's norm
    is inf (and error_if_nonfinite raises) while this one is the finite true norm.

    Args:
        parameters: a Parameter or an iterable of Parameters; those with ``grad`` None are ignored.
        max_norm: largest allowed total norm, >= 0. A negative one is refused (PyTorch would
            multiply the gradients by it, turning them around).
        norm_type: p of the p-norm: a float, or ``inf`` / ``'inf'`` for the max-norm. Default: 2.
        error_if_nonfinite: raise RuntimeError if the total norm is nan or +-inf
            (otherwise the gradients are scaled by the non-finite coefficient). Default: False.
        foreach: chooses among PyTorch's implementations of this same computation; nanotorch
            has one, so any value gives the numbers above.

    Returns:
        The total norm before clipping, a 0-d NumPy float in the gradients' dtype
        (float32 0.0 if no parameter has a gradient, like PyTorch's ``tensor(0.)``).
    """
    parameters = _as_list(parameters)          # (an iterator would be used up by the first pass)
    max_norm = float(max_norm)
    if not max_norm >= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be >= 0, got {max_norm}")
    norm_type = float(norm_type)
    if math.isnan(norm_type):
        raise ValueError("clip_grad_norm_: norm_type must be a number or inf, got nan")

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return np.float32(0.0)
    dtype = grads[0].dtype if len(grads) == 1 else np.result_type(*grads)
    norms = [_vector_norm(g, norm_type) for g in grads]
    if len(norms) == 1 and norm_type in (1.0, 2.0, math.inf, -math.inf):
        total_norm = dtype.type(norms[0])     # the norm of one norm is itself (sqrt(n * n) == n in binary floats)
    else:
        total_norm = dtype.type(_vector_norm(np.array(norms, dtype=np.float64), norm_type))
    if error_if_nonfinite and not np.isfinite(total_norm):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is non-finite "
            f"({total_norm}), so it cannot be clipped; pass error_if_nonfinite=False to scale the "
            "gradients by the non-finite norm anyway")
    # In the gradients' dtype, as PyTorch computes the coefficient from its norm tensor.
    clip_coef = dtype.type(max_norm) / (total_norm + dtype.type(1e-6))
    clip_coef_clamped = dtype.type(1.0) if clip_coef > 1 else clip_coef      # min(coef, 1); NaN stays NaN
    for g in grads:
        g *= clip_coef_clamped
    return total_norm


def clip_grad_value_(parameters, clip_value, foreach=None):
    r"""Clamp every gradient in place to [-clip_value, clip_value], as torch.nn.utils.clip_grad_value_.

        g_i <- clamp_max(clamp_min(g_i, -clip_value), clip_value)      elementwise, for every gradient

    with the bound rounded to the gradient's dtype, as PyTorch rounds it; a value at the bound keeps its
    sign (clip_value 0 leaves -0.0 for negative values, as PyTorch), NaN stays NaN, a NaN clip_value
    makes every value NaN and a negative one makes every value clip_value (the lower bound is then
    above the upper one; PyTorch's too).

    Args:
        parameters: a Parameter or an iterable of Parameters; those with ``grad`` None are skipped.
        clip_value: the largest |g| kept, a number (``float(clip_value)``, as PyTorch takes it).
        foreach: chooses among PyTorch's implementations of this same computation; nanotorch
            has one, so any value gives the numbers above.

    Returns:
        None. As PyTorch, RuntimeError when no parameter has a gradient (PyTorch's foreach grouping
        refuses the empty list), and when clip_value is finite but beyond the largest float32 for
        float32 gradients (PyTorch's "cannot be converted to type float without overflow"); nothing
        is clipped then.
    """
    clip_value = float(clip_value)
    grads = [p.grad for p in _as_list(parameters) if p.grad is not None]
    if not grads:
        raise RuntimeError("clip_grad_value_: no gradient to clip: no parameters were given, or none has a "
                           "gradient (call loss.backward() first); PyTorch raises a RuntimeError here too")
    for g in grads:
        largest = float(np.finfo(g.dtype).max)      # (a Python float: against a float32, clip_value would round)
        if math.isfinite(clip_value) and abs(clip_value) > largest:
            raise RuntimeError(f"clip_grad_value_: clip_value={clip_value} cannot be converted to the gradients' "
                               f"dtype {g.dtype} without overflow (PyTorch's error too): give a clip_value within "
                               f"+-{largest:.8g}, or inf to clip nothing")
    for g in grads:
        t = g.dtype.type
        if math.isnan(clip_value):
            g[...] = t(clip_value)                  # (a NaN bound: NaN everywhere, as PyTorch's clamp)
            continue
        low, high = t(-clip_value), t(clip_value)
        np.copyto(g, low, where=g < low)            # clamp_min_: NaN compares False and stays; a tie keeps its sign
        np.copyto(g, high, where=g > high)          # clamp_max_, after it: with low > high, all end at high


def _as_list(parameters):
    """A Parameter or an iterable of Parameters (the parameters argument of torch.nn.utils's functions) -> a list."""
    if hasattr(parameters, "data") and hasattr(parameters, "grad"):
        return [parameters]
    return list(parameters)


def _parameter_list(parameters, name):
    """_as_list(parameters), or a TypeError naming what came instead of a Parameter."""
    params = _as_list(parameters)
    for i, p in enumerate(params):
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"{name}: expected Parameters, got a {type(p).__name__} at position {i}")
    return params


def parameters_to_vector(parameters):
    """All parameters' values in one new 1-D array, in order, as torch.nn.utils.parameters_to_vector.

    parameters: a Parameter or an iterable of Parameters (of any shapes) -> vec: (sum of their sizes,),
    each parameter's values in C order, in the parameters' common dtype (float32 and float64 give
    float64, as torch.cat promotes). A copy: changing vec changes no parameter.
    """
    params = _parameter_list(parameters, "parameters_to_vector")
    if not params:
        raise ValueError("parameters_to_vector: no parameters given (PyTorch's torch.cat(): expected a non-empty "
                         "list of Tensors)")
    return np.concatenate([p.data.ravel() for p in params])


def vector_to_parameters(vec, parameters):
    """Copy the slices of a 1-D array into the parameters, in order, as torch.nn.utils.vector_to_parameters.

    vec: (sum of the parameters' sizes,) NumPy array; parameter i gets the next ``p.data.size`` values,
    in C order, written into ``p.data`` in place and cast to its dtype: the arrays stay the parameters'
    own (views made by ``flatten_parameters`` stay views) and vec is not kept. PyTorch points each
    parameter's ``data`` at its slice of vec instead; the values are the same.

    A vec that is not a NumPy array is PyTorch's TypeError. A vec that is not 1-D, or whose length
    is not the parameters' total size, is a ValueError, and no parameter is changed (PyTorch raises
    only for a short vector, and ignores the rest of a long one).
    """
    if not isinstance(vec, np.ndarray):
        raise TypeError(f"vector_to_parameters: expected vec to be a NumPy array, but got: {type(vec).__name__}")
    params = _parameter_list(parameters, "vector_to_parameters")
    if vec.ndim != 1:
        raise ValueError(f"vector_to_parameters: vec must be 1-D (one value per parameter entry), got shape "
                         f"{vec.shape}: flatten it with vec.ravel() if that is the order meant")
    total = sum(p.data.size for p in params)
    if vec.size != total:
        raise ValueError(f"vector_to_parameters: vec has {vec.size} values, but the {len(params)} parameters have "
                         f"{total} (their sizes: {[p.data.size for p in params]})")
    start = 0
    for p in params:
        p.data[...] = vec[start:start + p.data.size].reshape(p.data.shape)
        start += p.data.size


def flatten_parameters(parameters):
    """Move parameters into one contiguous vector; returns a Parameter ``flat`` that holds them all.

    Each parameter's ``data`` becomes a view of its slice of ``flat.data`` and its ``grad`` a view
    of its slice of ``flat.grad``, so layers keep reading and accumulating into their own arrays
    while an optimiser or ``clip_grad_norm_`` given ``[flat]`` does one vector operation where it
    did one per parameter (25 for the MNIST model). The numbers are the same: SGD is elementwise,
    and the norm of all gradients is the norm of their concatenation (except clip_grad_norm_'s
    norm_type=0, which counts parameters: one flat parameter counts as one).

    Gradients become fixed buffers (zero_grad zeroes them in place). Cast the model (``.to``)
    before flattening: a cast makes new arrays, which the flat vector would no longer see.
    A frozen parameter (requires_grad=False) is refused: its grad would be a view, never None, and
    SGD given the flat vector would move it (weight decay, momentum). Flatten the trainable ones:
    ``flatten_parameters(p for p in model.parameters() if p.requires_grad)``; the frozen ones keep their
    own arrays, and their grad stays None.
    """
    params = list(parameters)
    if not params:
        raise ValueError("flatten_parameters: no parameters given")
    for i, p in enumerate(params):
        if not p.requires_grad:
            raise ValueError(
                f"flatten_parameters: parameter {i} of those given (shape {p.data.shape}) has requires_grad=False: "
                "a frozen parameter in the flat vector would have a grad that is never None, and SGD would still "
                "move it (weight decay, momentum); flatten only the trainable parameters: "
                "nn.utils.flatten_parameters(p for p in model.parameters() if p.requires_grad)")
    dtype = np.result_type(*[p.data.dtype for p in params])
    sizes = [p.data.size for p in params]
    flat = Parameter(np.concatenate([p.data.ravel() for p in params]).astype(dtype))
    flat._grad, flat._grad_is_view = np.zeros_like(flat.data), True
    start = 0
    for p, size in zip(params, sizes):
        shape = p.data.shape
        p.data = flat.data[start:start + size].reshape(shape)
        p._grad = flat._grad[start:start + size].reshape(shape)
        p._grad_is_view = True
        start += size
    return flat
