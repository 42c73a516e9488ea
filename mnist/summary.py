"""A model summary computed from the layers: output shape, parameters and receptive field per row.

    python -m mnist.summary

One row per child of the top-level Sequential (a ConvBlock -- conv, BN, GELU -- is one row), after
an ``input`` row. Output shapes come from a forward pass of a zeros batch of 1 in eval mode, so they
are what the layers really produce (ceil_mode pooling included).

Receptive field (RF), walking the leaf layers in order, per axis:

    rf   += (k - 1) * jump        a k-wide window over units that are ``jump`` input pixels apart
    jump *= s                     each stride spreads the next layer's units further apart

Padding shifts where a window starts but not its width, so it does not change the RF size. Global
average pooling (and a Flatten of a map wider than 1x1) is a window as wide as its input. The RF is
reported *unclipped*: a value above the image size (28) means the unit sees the whole image plus
zero padding around it.
"""

import numpy as np

from mnist.cli import run
from nanotorch import nn


def _is_conv_block(module):
    return isinstance(module, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in module.modules())


def _as_pair(v):
    """Layers keep sizes as ints or as (h, w) pairs (MaxPool2d and AdaptiveAvgPool2d as given, as PyTorch's):
    always a pair."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _one(v):
    """'2' for (2, 2), '2x3' for (2, 3)."""
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


def describe(module):
    """A short human name for a layer: 'conv3x3 1->4', 'maxpool 2x2 ceil', 'linear 28->56', ..."""
    if isinstance(module, nn.Conv2d):
        (kh, kw), stride, padding = module.geometry()
        extra = "".join([f" s{_one(stride)}" if stride != (1, 1) else "",
                         f" p{_one(padding)}" if padding != (0, 0) else "",
                         "" if module.bias is not None else " (no bias)"])
        return f"conv{kh}x{kw} {module.in_channels}->{module.out_channels}{extra}"
    if isinstance(module, nn.BatchNorm2d):
        return "BN"
    if isinstance(module, nn.MaxPool2d):
        (kh, kw), stride = _as_pair(module.kernel_size), _as_pair(module.stride)
        stride = f" s{_one(stride)}" if stride != (kh, kw) else ""
        return f"maxpool {kh}x{kw}{stride}" + (" ceil" if module.ceil_mode else "")
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "global avg pool" if _as_pair(module.output_size) == (1, 1) else f"avg pool to {module.output_size}"
    if isinstance(module, nn.Linear):
        return f"linear {module.in_features}->{module.out_features}"
    if isinstance(module, nn.Dropout):
        return f"dropout {module.p:g}"
    if isinstance(module, nn.Sequential):
        return " + ".join(describe(m) for m in module)
    return type(module).__name__.lower() if isinstance(module, (nn.Flatten,)) else type(module).__name__


def _window(module, in_hw):
    """(kernel, stride) per axis of a leaf that mixes neighbouring positions, or None if it is pointwise."""
    if isinstance(module, nn.Conv2d):
        return module.geometry()[:2]
    if isinstance(module, nn.MaxPool2d):
        return _as_pair(module.kernel_size), _as_pair(module.stride)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        # output i averages rows floor(i H / out) to ceil((i + 1) H / out) - 1, as PyTorch's: the widest
        # such window, starting every floor(H / out) rows (exact when out divides H)
        out_hw = module._output_size(*in_hw)          # (None in output_size: that side's input size)
        if 0 in out_hw:
            return None                                # an empty output: no window to speak of
        return (tuple(max(((i + 1) * h + o - 1) // o - i * h // o for i in range(o)) for h, o in zip(in_hw, out_hw)),
                tuple(max(h // o, 1) for h, o in zip(in_hw, out_hw)))
    if isinstance(module, nn.Flatten) and in_hw is not None:
        return in_hw, in_hw              # every output feature depends on every position
    return None


def _leaves(module):
    """The layers a Sequential runs, in order, flattening nested Sequentials."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def layer_names(model):
    """The name of each top-level child of ``model`` (an nn.Sequential; else the model itself), as
    the summary rows, the pictures and layers.csv call it: 'block1' ... for conv blocks, 'conv1' ...
    for bare convolutions, 'pool1' ..., 'fc1' ... for Linear layers, 'gap' for a global average
    pooling, else the layer's class name in lower case ('flatten', 'gelu', 'dropout')."""
    children = list(model) if isinstance(model, nn.Sequential) else [model]
    names, counts = [], {}
    for child in children:
        kind = ("block" if _is_conv_block(child) else "conv" if isinstance(child, nn.Conv2d)
                else "pool" if isinstance(child, nn.MaxPool2d) else "fc" if isinstance(child, nn.Linear)
                else None)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
            names.append(f"{kind}{counts[kind]}")
        elif isinstance(child, nn.AdaptiveAvgPool2d) and _as_pair(child.output_size) == (1, 1):
            names.append("gap")
        else:
            names.append(type(child).__name__.lower())
    return names


def summarize(model, input_shape=(1, 28, 28)):
    """Rows describing ``model`` (an nn.Sequential), computed from its layers.

    input_shape: (C, H, W) of one image. Returns a list of dicts, the first for the input:
      name             'input', 'block1', 'pool1', 'gap', 'fc1', ... (numbered per kind)
      key              the child's key in the Sequential ('0', '1', ...), as in state_dict keys
      layer            what it does, e.g. 'conv3x3 1->4 p1 (no bias) + BN + GELU'
      output_shape     output shape without the batch axis, e.g. (4, 28, 28) or (10,)
      params           number of trainable values
      receptive_field  unclipped RF in input pixels (an int; a (h, w) pair if they differ)
      jump             input pixels between neighbouring output units (the product of strides)
    """
    children = list(model) if isinstance(model, nn.Sequential) else [model]
    keys = list(model._modules) if isinstance(model, nn.Sequential) else [""]
    rf, jump = [1, 1], [1, 1]
    rows = [dict(name="input", key="", layer="image", output_shape=tuple(input_shape), params=0,
                 receptive_field=1, jump=1)]
    was_training = model.training
    model.eval()
    try:
        x = np.zeros((1, *input_shape), dtype=np.float32)
        for key, name, child in zip(keys, layer_names(model), children):
            for leaf in _leaves(child):
                in_hw = x.shape[2:] if x.ndim == 4 else None
                window = _window(leaf, in_hw)
                x = leaf(x)
                if window is not None:
                    for a in range(2):
                        rf[a] += (window[0][a] - 1) * jump[a]
                        jump[a] *= window[1][a]
            rows.append(dict(name=name, key=key, layer=describe(child), output_shape=tuple(x.shape[1:]),
                             params=int(sum(p.data.size for p in child.parameters())),
                             receptive_field=rf[0] if rf[0] == rf[1] else tuple(rf),
                             jump=jump[0] if jump[0] == jump[1] else tuple(jump)))
    finally:
        model.train(was_training)
    return rows


def _shape(shape):
    return " x ".join(str(d) for d in shape)


def _pair(v):
    return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v)


def format_summary(rows):
    """A plain-text table of ``summarize``'s rows with a total line."""
    header = ("#", "name", "layer", "output", "params", "RF", "jump")
    body = [(r["key"], r["name"], r["layer"], _shape(r["output_shape"]), f"{r['params']:,}",
             _pair(r["receptive_field"]), _pair(r["jump"]) if len(r["output_shape"]) == 3 else "-")
            for r in rows]
    total = sum(r["params"] for r in rows)
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    right = {0, 4, 5, 6}                          # numbers right-aligned

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(header))
    image = rows[0]["output_shape"][-1] if rows and rows[0]["name"] == "input" else None
    lines = [line(header), rule, *map(line, body), rule, f"total parameters: {total:,}"]
    if image:
        lines += [f"RF: receptive field in input pixels, unclipped (above {image}: the whole {image}x{image} "
                  "image plus zero padding)",
                  "jump: input pixels between neighbouring output units (the product of the strides)"]
    return "\n".join(lines)


def main(argv=None):
    import argparse
    from mnist.model import build_model
    argparse.ArgumentParser(prog="python -m mnist.summary", description=__doc__.splitlines()[0]).parse_args(argv)
    print(format_summary(summarize(build_model())))
    return 0


if __name__ == "__main__":
    run(main)
