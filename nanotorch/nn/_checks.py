"""Input checks shared by the layers: bad input gets an error that names the layer and what it expected."""
import numbers

import numpy as np


def check_input(layer, x, ndims, channels=None, what="input", dtype=None):
    """Validate a layer's input: a floating array with one of ``ndims`` dimensions and ``channels`` at axis 1,
    of ``dtype`` if given (a layer with parameters computes in theirs: no silent mixing, as in PyTorch).

    Raises TypeError for a non-array or a wrong dtype, ValueError for a wrong shape.
    """
    name = type(layer).__name__
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} expects a numpy array as {what}, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} expects a float32 or float64 {what}, got dtype {x.dtype} "
                        f"(convert with x.astype(np.float32))")
    if x.ndim not in ndims:
        if len(ndims) > 3:                                     # elementwise layers: any rank in a range
            shapes = f"{min(ndims)}-D to {max(ndims)}-D"
        else:
            shapes = " or ".join({2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)"}.get(d, f"{d}-D") for d in ndims)
        one_example = x.ndim == min(ndims) - 1 and len(ndims) <= 3    # (PyTorch takes it unbatched; not here)
        raise ValueError(f"{name} expects a {shapes} {what}, got shape {x.shape} ({x.ndim}-D)"
                         + (": for one example, add the batch axis, x[None]" if one_example else ""))
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} channels at axis 1 of its {what} (N, C, ...), "
                         f"got shape {x.shape} with {x.shape[1]}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} expects a {dtype} {what}, the dtype of its parameters, got {x.dtype} "
                        f"(convert the input with x.astype(np.{dtype}), or the model with .to(np.{x.dtype}))")
    return x


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))   # dtype objects: faster to compare with than the types


def check_int(layer, v, name):
    """A count such as in_channels must be an int (a NumPy integer will do, a bool or 3.0 will not)."""
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise TypeError(f"{type(layer).__name__}: {name} must be an int, got {v!r} ({type(v).__name__})")
    return int(v)


def pair(layer, v, name):
    """An int or a pair of ints -> a pair of ints (PyTorch accepts both for kernel_size etc.). A bool
    is no int here, alone or in the pair, as for check_int."""
    if is_int(v):
        return int(v), int(v)
    if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(is_int(a) for a in v):
        bools = any(isinstance(a, (bool, np.bool_)) for a in (v if isinstance(v, (tuple, list)) else [v]))
        raise ValueError(f"{type(layer).__name__}: {name} must be an int or a pair of ints, got {v!r}"
                         + (" (a bool is not taken for an int)" if bools else ""))
    return int(v[0]), int(v[1])


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)      # (NumPy's bool is no np.integer)


def check_grad(layer, dout, shape, dtype=None):
    """The upstream gradient of a backward must have the shape of the forward's output (and its dtype, if given)."""
    if not isinstance(dout, np.ndarray) or dout.shape != tuple(shape):
        got = dout.shape if isinstance(dout, np.ndarray) else type(dout).__name__
        if dout is None:                # (in a chain: the backward of the layer after this one returned nothing)
            got = ("None: the backward of the layer after it returned None instead of the gradient of its input "
                   "(a hand-written backward must end with return; a Conv2d with input_requires_grad=False "
                   "returns None, so it can only come first)")
        raise ValueError(f"{type(layer).__name__}.backward expects a gradient of the output's shape "
                         f"{tuple(shape)}, got {got}")
    if dtype is not None and dout.dtype != dtype:
        raise TypeError(f"{type(layer).__name__}.backward expects a gradient of the output's dtype {dtype}, "
                        f"got {dout.dtype}")
    return dout


def only_default(layer, name, value, default):
    """A PyTorch argument that nanotorch takes, so that positional arguments land where PyTorch's do,
    but implements only at its default: any other value is refused, never silently ignored."""
    if value is not default and (isinstance(value, np.ndarray) or value != default):
        raise NotImplementedError(f"{type(layer).__name__}: {name}={value!r} is not implemented in nanotorch "
                                  f"(only the default, {name}={default!r})")


def checked_arguments(layer, check):
    """check(): the layer's arguments checked and converted (as pairs of ints, say).

    A layer keeps the arguments named in its ``_arguments`` as PyTorch keeps them, and reads them
    when it runs, so that one set after construction is checked as at construction. The result is
    kept until one of them is assigned again (Module.__setattr__ drops it: checking at every call
    would cost ~1 us a layer); while one of them is a list, which may change in place, it is
    checked at every call."""
    result = layer.__dict__.get("_checked_arguments")
    if result is None:
        result = check()
        if not any(isinstance(getattr(layer, name), list) for name in layer._arguments):
            layer.__dict__["_checked_arguments"] = result
    return result


def check_device_and_dtype(layer, device, dtype):
    """PyTorch's factory arguments: device None or 'cpu' (NumPy arrays live there); dtype None
    (float32) or float32 / float64 (NumPy's, their names, or torch's), returned as a NumPy dtype
    (None for None) for ``.to``."""
    name = type(layer).__name__
    if device is not None and str(device).split(":")[0] != "cpu":    # ('cpu:0', torch.device('cpu', 0) too)
        raise NotImplementedError(f"{name}: device={device!r} is not implemented in nanotorch (only the CPU: "
                                  "device=None or 'cpu')")
    if dtype is None:
        return None
    wanted = dtype
    try:                                   # (torch.float64 is understood by its name: "float64")
        dtype = np.dtype(str(dtype).removeprefix("torch.") if type(dtype).__module__ == "torch" else dtype)
    except TypeError:
        dtype = np.dtype(object)           # refused below, with the value as given
    if not any(dtype == d for d in _FLOAT_DTYPES):
        raise TypeError(f"{name}: dtype must be float32 or float64, got {wanted!r}")
    return dtype
