"""Pictures of a model and a training run, for the README and the course.

    python -m mnist.visualize RUN_DIR [--data-dir DIR] [--test-images N]

Each plot_* function writes one PNG at ``path`` (DPI dots per inch, a fixed figure size per
picture) and returns the path. ``visualize_run`` writes all of them into a run directory:

    architecture.png     one box per layer: output shape, parameters, receptive field
    parameters.png       parameters per layer, conv weights and BatchNorm stacked
    filters.png          the first convolution's 3x3 filters
    training_curves.png  loss, accuracy, learning rate and momentum against step
    gradient_flow.png    each layer's gradient norm and relative update against step (layers.csv)
    feature_maps.png     every conv block's output channels for one test digit
    confusion_matrix.png test-set confusion matrix and per-class accuracy
    misclassified.png    the test digits the model gets wrong, most confident first
"""
import argparse
import math
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle  # noqa: E402

from mnist.cli import run  # noqa: E402
from mnist.files import csv_rows, write_atomic  # noqa: E402
from mnist.summary import summarize  # noqa: E402
from nanotorch import nn  # noqa: E402

DPI = 150
FIGSIZE = {                                  # inches; the PNG is FIGSIZE * DPI pixels
    "parameters": (8.0, 4.5),
    "filters": (8.0, 2.6),
    "training_curves": (9.0, 7.5),
    "gradient_flow": (9.0, 7.0),
    "feature_maps": (10.0, 11.0),
    "confusion_matrix": (9.0, 6.0),
}
ARCH_WIDTH = 9.0                             # architecture.png: this wide, as tall as its rows need

COLORS = {"input": "#8c8c8c", "block": "#4c72b0", "pool": "#dd8452", "gap": "#8172b3",
          "fc": "#55a868", "other": "#937860", "accent": "#c44e52"}

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


def _figure(figsize):
    """A new figure in the house style, laid out by constrained_layout (nothing overlaps)."""
    with plt.rc_context(STYLE):
        return plt.figure(figsize=figsize, layout="constrained")


def _save(fig, path):
    """Write fig to path atomically (a reader never sees half a picture), in the format its
    extension names (PNG without one); close the figure either way."""
    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    try:
        with plt.rc_context(STYLE):
            write_atomic(path, lambda f: fig.savefig(f, dpi=DPI, format=fmt))
    finally:
        plt.close(fig)
    return path


def _kind(row):
    name = row["name"].rstrip("0123456789")
    return name if name in COLORS else "other"


def _shape(shape):
    return " × ".join(str(d) for d in shape)


def _rf(v):
    return f"{v[0]} × {v[1]}" if isinstance(v, tuple) else f"{v} × {v}"


def _conv_blocks(model):
    """(index, name) of the top-level children that are conv blocks, as summarize names them."""
    rows = summarize(model)[1:]
    return [(i, r["name"]) for i, r in enumerate(rows) if r["name"].startswith(("block", "conv"))]


# ----------------------------------------------------------------------------- architecture

def _feature_glyph(ax, x, yc, shape, color, image_size):
    """A stack of sheets: side grows with the map's height, the number of sheets with its channels."""
    if len(shape) == 3:
        c, h, _ = shape
        side = 0.08 + 0.30 * h / image_size
        sheets = min(1 + c // 4, 8)
    else:                                     # a vector: a thin column as tall as its length allows
        c, h = shape[0], None
        side, sheets = 0.07, 1
    step = 0.028
    height = side if h is not None else min(0.08 + 0.3 * c / 56, 0.42)
    x0 = x - (side + step * (sheets - 1)) / 2
    y0 = yc - (height + step * (sheets - 1)) / 2
    for s in range(sheets):
        ax.add_patch(Rectangle((x0 + s * step, y0 + s * step), side, height, facecolor="white",
                               edgecolor=color, linewidth=0.9, zorder=2 + s))
        ax.add_patch(Rectangle((x0 + s * step, y0 + s * step), side, height, facecolor=color,
                               alpha=0.25, edgecolor="none", zorder=2 + s))


ARCH_BOX = (0.46, 0.32, 0.18, 0.8, 0.55)   # inches: layer box, parameter-free box, gap, top, bottom


def _box_heights(rows):
    big, slim = ARCH_BOX[:2]
    return [big if r["params"] or r["name"] == "input" else slim for r in rows]


def architecture_figsize(rows):
    """(width, height) in inches of architecture.png for summarize's rows."""
    _, _, gap, top, bottom = ARCH_BOX
    return ARCH_WIDTH, top + sum(_box_heights(rows)) + gap * (len(rows) - 1) + bottom


def plot_architecture(model, path, input_shape=(1, 28, 28)):
    """One box per summary row (conv blocks, pools, head layers) with arrows between.

    Each box: name and operation; output shape, parameters and receptive field. On the left a
    sketch of the output (sheets ~ channels, size ~ height). The figure is ARCH_WIDTH inches wide
    and as tall as the rows need.
    """
    rows = summarize(model, input_shape)
    image = input_shape[-1]
    heights = _box_heights(rows)
    big, gap, top = ARCH_BOX[0], ARCH_BOX[2], ARCH_BOX[3]
    total_h = architecture_figsize(rows)[1]
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(ARCH_WIDTH, total_h))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, ARCH_WIDTH)
        ax.set_ylim(0, total_h)
        ax.axis("off")
        total = sum(r["params"] for r in rows)
        ax.text(ARCH_WIDTH / 2, total_h - 0.38, f"MNIST CNN: {total:,} parameters",
                ha="center", va="center", fontsize=14, fontweight="bold")
        box_x0, box_x1, glyph_x = 1.35, ARCH_WIDTH - 0.25, 0.7
        y = total_h - top
        columns = (box_x1 - 2.05, box_x1 - 1.1, box_x1 - 0.15)      # right edges: output, params, RF
        for x, head in zip(columns, ("output", "params", "RF")):
            ax.text(x, y + 0.12, head, ha="right", va="center", fontsize=9, color="#666666",
                    fontstyle="italic")
        spans = []                     # (top, bottom) of each box, for the arrows
        for row, h in zip(rows, heights):
            color = COLORS[_kind(row)]
            yc = y - h / 2
            ax.add_patch(FancyBboxPatch((box_x0, y - h), box_x1 - box_x0, h,
                                        boxstyle="round,pad=0,rounding_size=0.08",
                                        facecolor=color, alpha=0.13, edgecolor="none"))
            ax.add_patch(FancyBboxPatch((box_x0, y - h), box_x1 - box_x0, h,
                                        boxstyle="round,pad=0,rounding_size=0.08",
                                        facecolor="none", edgecolor=color, linewidth=1.3))
            _feature_glyph(ax, glyph_x, yc, row["output_shape"], color, image)
            layer = re.sub(r"(\d)x(\d)", r"\1×\2", row["layer"])            # 3x3 -> 3×3
            layer = layer.replace("->", " → ").replace(" + ", " · ")
            ax.text(box_x0 + 0.15, yc, row["name"], ha="left", va="center", fontsize=10.5,
                    fontweight="bold", color=color)
            ax.text(box_x0 + 1.0, yc, layer, ha="left", va="center", fontsize=10 if h == big else 9.5)
            cells = [_shape(row["output_shape"]), f"{row['params']:,}" if row["params"] else "–",
                     _rf(row["receptive_field"])]
            for x, cell in zip(columns, cells):
                ax.text(x, yc, cell, ha="right", va="center", fontsize=9.5, color="#333333")
            spans.append((y, y - h))
            y -= h + gap
        mid = (box_x0 + box_x1) / 2
        for (_, bottom_prev), (top_next, _) in zip(spans, spans[1:]):
            ax.add_patch(FancyArrowPatch((mid, bottom_prev - 0.01), (mid, top_next + 0.01),
                                         arrowstyle="-|>", mutation_scale=11, color="#555555",
                                         linewidth=1.1, shrinkA=0, shrinkB=0))
        others = ", ".join(dict.fromkeys(r["name"].rstrip("0123456789") for r in rows if _kind(r) == "other"))
        kinds = [("input", "input"), ("block", "conv block"), ("pool", "max pooling"),
                 ("gap", "global avg pool"), ("fc", "linear"), ("other", others)]
        present = {_kind(r) for r in rows}
        handles = [Patch(facecolor=COLORS[k], alpha=0.35, edgecolor=COLORS[k], label=label)
                   for k, label in kinds if k in present]
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                  fontsize=9, handlelength=1.2, columnspacing=1.2,
                  title=f"RF: receptive field in input pixels, unclipped (above {image}: the whole "
                        f"image plus padding)", title_fontsize=8.5)
    return _save(fig, path)


# ----------------------------------------------------------------------------- parameters

def plot_parameter_counts(model, path):
    """Bars of parameters per layer (only layers that have any), conv weights and BN stacked."""
    summary = summarize(model)
    rows = [r for r in summary[1:] if r["params"]]
    children = dict(zip([r["key"] for r in summary[1:]], list(model)))
    names, conv, norm, other = [], [], [], []
    for r in rows:
        child = children[r["key"]]
        c = sum(p.data.size for m in child.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
        b = sum(p.data.size for m in child.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
        names.append(r["name"])
        conv.append(c)
        norm.append(b)
        other.append(r["params"] - c - b)
    conv, norm, other = map(np.array, (conv, norm, other))
    total = sum(r["params"] for r in summary)
    fig = _figure(FIGSIZE["parameters"])
    with plt.rc_context(STYLE):
        ax = fig.add_subplot()
        x = np.arange(len(names))
        ax.bar(x, conv, color=COLORS["block"], label="conv weights")
        ax.bar(x, norm, bottom=conv, color="#a1c4e8", label="BatchNorm (γ, β)")
        ax.bar(x, other, bottom=conv + norm, color=COLORS["fc"], label="linear (weights + bias)")
        totals = conv + norm + other
        for xi, t in zip(x, totals):
            ax.text(xi, t + totals.max() * 0.015, f"{t:,}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, names)
        ax.set_ylabel("parameters")
        ax.set_ylim(0, totals.max() * 1.12)
        ax.grid(axis="x", visible=False)
        ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
        ax.legend(loc="upper left")
        ax.set_title(f"Parameters per layer: {total:,} in total", fontsize=13)
    return _save(fig, path)


# ----------------------------------------------------------------------------- filters

def plot_first_layer_filters(model, path):
    """The first Conv2d's filters, one panel per output channel, on one symmetric colour scale."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    w = conv.weight.data.astype(np.float64)                     # (OC, C, kh, kw)
    filters = w[:, 0] if w.shape[1] == 1 else w.mean(axis=1)
    n = len(filters)
    lim = float(np.abs(filters).max()) or 1.0
    fig = _figure(FIGSIZE["filters"])
    with plt.rc_context(STYLE):
        axes = fig.subplots(1, n, squeeze=False)[0]
        for i, (ax, f) in enumerate(zip(axes, filters)):
            im = ax.imshow(f, cmap="RdBu_r", vmin=-lim, vmax=lim)
            for (r, c), v in np.ndenumerate(f):
                ax.text(c, r, f"{v:+.2f}".replace("-", "−"), ha="center", va="center", fontsize=9,
                        color="white" if abs(v) > 0.6 * lim else "black")
            ax.set_title(f"filter {i + 1}")
            ax.set_axis_off()
        fig.colorbar(im, ax=list(axes), shrink=0.8, aspect=12, label="weight")
        mean_note = "" if w.shape[1] == 1 else f", mean over {w.shape[1]} input channels"
        fig.suptitle(f"First convolution: {n} filters of {w.shape[2]}×{w.shape[3]}{mean_note}", fontsize=13)
    return _save(fig, path)


# ----------------------------------------------------------------------------- training curves

class EmptyLog(ValueError):
    """A log.csv (or layers.csv) without rows (its run stopped before its first row)."""


def read_log(log_csv_path):
    """log.csv -> dict of float arrays keyed by column (step, epoch, loss, accuracy, lr, momentum, ...).

    Blank lines are skipped; the first other line is the header. A last row cut short (fewer values
    than the header, or no line end after it, as a run killed while writing it leaves it) is dropped,
    as mnist.train drops it on resume; another malformed row (a value that is not a number, a step
    that is not finite) raises a ValueError naming its line. No rows: EmptyLog."""
    return _read_numbers(log_csv_path, ("step", "loss", "accuracy", "lr", "momentum"),
                         "step,epoch,loss,accuracy,lr,momentum")


def _read_numbers(log_csv_path, required, expected):
    """A CSV of numbers written row by row (log.csv, layers.csv) -> dict of float arrays keyed by
    column, as read_log describes; ``required`` columns, else a ValueError saying ``expected``."""
    rows = csv_rows(log_csv_path)                # (a last line without its line end is dropped there)
    header, body = (rows[0][1], rows[1:]) if rows else ([], [])
    missing = set(required) - set(header)
    if header and missing:
        raise ValueError(f"{log_csv_path}: missing columns {sorted(missing)} (expected {expected})")
    values = []
    step = header.index("step") if "step" in header else None
    for i, (line, row) in enumerate(body):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} values")
            numbers = [float(v) for v in row]
            if step is not None and not math.isfinite(numbers[step]):    # (the plots count steps in ints)
                raise ValueError(f"step {row[step]} is not a finite number")
            values.append(numbers)
        except ValueError as e:
            if i == len(body) - 1 and len(row) < len(header):
                break                            # the last row, cut short: dropped
            raise ValueError(f"{log_csv_path}, line {line}: {e} (expected {len(header)} numbers: "
                             f"{','.join(header)})") from None
    if not values:
        raise EmptyLog(f"{log_csv_path} has no rows: its run stopped before its first --log-every steps")
    return dict(zip(header, np.array(values).T))


def read_layer_log(layers_csv_path):
    """layers.csv -> (step, epoch or None, layers, stats): ``layers`` the layer names in the file's
    order, ``stats`` a dict from each of grad_norm, weight_norm and update_ratio to a (rows, layers)
    array. Rows as read_log reads them (a last row cut short dropped; no rows: EmptyLog)."""
    from mnist.train import LayerWatch               # (the stats' names and order: one place)
    log = _read_numbers(layers_csv_path, ("step",), "step,epoch, then <layer>_<stat> for each stat "
                        f"({', '.join(LayerWatch.STATS)}) and layer (block1, ..., fc2)")
    layers = [c[:-len("_grad_norm")] for c in log if c.endswith("_grad_norm")]
    missing = [f"{name}_{stat}" for stat in LayerWatch.STATS for name in layers if f"{name}_{stat}" not in log]
    if not layers or missing:
        raise ValueError(f"{layers_csv_path}: no <layer>_grad_norm columns" if not layers else
                         f"{layers_csv_path}: missing columns {missing}")
    stats = {stat: np.stack([log[f"{name}_{stat}"] for name in layers], axis=1) for stat in LayerWatch.STATS}
    return log["step"], log.get("epoch"), layers, stats


def smooth(values, window):
    """Bias-corrected exponential moving average with time constant ``window`` samples."""
    alpha = 1.0 / max(window, 1)
    out = np.empty(len(values))
    avg = weight = 0.0
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = avg / weight
    return out


def centred_mean(values, half):
    """The mean of each value and the ``half`` values either side of it; at the ends, of as many on
    each side as there are on the shorter one (so the first and last values are their own mean)."""
    values = np.asarray(values, dtype=np.float64)
    n, sums = len(values), np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(n)
    h = np.minimum(half, np.minimum(i, n - 1 - i))
    return (sums[i + h + 1] - sums[i - h]) / (2 * h + 1)


def plot_training_curves(log, path, test_accuracy=None):
    """Loss (each log row's mean, faint, and smoothed), training accuracy, and lr / momentum, against step;
    ``test_accuracy`` (a fraction), if given, as a dashed line on the accuracy panel. ``log``: log.csv's
    path, or read_log's dict of it."""
    if isinstance(log, (str, os.PathLike)):
        log = read_log(log)
    step = log["step"]
    window = max(1, len(step) // 50)
    every = int(np.median(np.diff(step))) if len(step) > 1 else int(step[0])   # steps a row averages (--log-every)
    dots = dict(marker="o", markersize=4) if len(step) <= 20 else {}            # a short run: its few rows seen
    fig = _figure(FIGSIZE["training_curves"])
    with plt.rc_context(STYLE):
        ax_loss, ax_acc, ax_lr = fig.subplots(3, 1, sharex=True, height_ratios=(1.2, 1, 0.9))
        ax_loss.plot(step, log["loss"], color=COLORS["block"], alpha=0.25, linewidth=0.8, **dots,
                     label=f"mean of each {every} steps")
        ax_loss.plot(step, smooth(log["loss"], window), color=COLORS["block"], linewidth=2,
                     label=f"smoothed (EMA over ~{window * every} steps)")
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_loss.set_ylabel("training loss (log scale)")
        ax_loss.legend(loc="upper right")

        acc = 100 * log["accuracy"]
        ax_acc.plot(step, acc, color=COLORS["fc"], linewidth=2, **dots)
        ax_acc.set_ylabel(f"accuracy of each\n{every} steps (%)")
        lowest = acc.min() if test_accuracy is None else min(acc.min(), 100 * test_accuracy)
        ax_acc.set_ylim(max(0.0, min(lowest, 100) - 2), 100.5)
        if test_accuracy is not None:
            ax_acc.axhline(100 * test_accuracy, color=COLORS["accent"], linewidth=1.2, linestyle="--",
                           label=f"test accuracy of the saved model: {100 * test_accuracy:.2f}%")
            ax_acc.legend(loc="lower right")
        low = acc[-1] < 50                      # the label above a low point, below a high one
        last = int(step[-1] - step[-2]) if len(step) > 1 else int(step[0])    # the steps the last row averages
        ax_acc.annotate(f"last {last} steps: {acc[-1]:.2f}%", (step[-1], acc[-1]), xytext=(-4, 8 if low else -14),
                        textcoords="offset points", ha="right", va="bottom" if low else "top", fontsize=9,
                        color=COLORS["fc"])

        ax_lr.plot(step, log["lr"], color=COLORS["pool"], linewidth=2, label="learning rate", **dots)
        ax_lr.set_ylabel("learning rate", color=COLORS["pool"])
        ax_lr.tick_params(axis="y", colors=COLORS["pool"])
        ax_mom = ax_lr.twinx()
        ax_mom.plot(step, log["momentum"], color=COLORS["gap"], linewidth=2, linestyle="--", label="momentum", **dots)
        ax_mom.set_ylabel("momentum", color=COLORS["gap"])
        ax_mom.tick_params(axis="y", colors=COLORS["gap"])
        ax_mom.spines["right"].set_visible(True)
        ax_mom.grid(False)
        ax_lr.set_title("Schedule: learning rate (solid) and momentum (dashed)")
        ax_lr.set_xlabel("step")
        if step[-1] > step[0]:
            ax_lr.set_xlim(step[0], step[-1])
        else:                                   # one row: centred
            ax_lr.set_xlim(0, 2 * step[0])

        if "epoch" in log:
            _mark_epochs((ax_loss, ax_acc, ax_lr), step, log["epoch"])
        fig.suptitle("Training: loss, accuracy and schedule", fontsize=14)
    return _save(fig, path)


def _mark_epochs(axes, step, epoch):
    """Dotted lines where each epoch ends, on every one of ``axes``, numbered above the first."""
    ends = step[np.flatnonzero(np.diff(np.floor(epoch - 1e-9)) > 0)]
    if 0 < len(ends) <= 60:
        for ax in axes:
            for e in ends:
                ax.axvline(e, color="#999999", linewidth=0.6, linestyle=":", zorder=0)
        top = axes[0].secondary_xaxis("top")
        labelled = math.ceil(len(ends) / 20)      # every so many epoch ends numbered
        top.set_xticks(ends[labelled - 1::labelled], [str(k) for k in range(labelled, len(ends) + 1, labelled)])
        top.set_xlabel("end of epoch", fontsize=9, color="#666666")
        top.tick_params(labelsize=8.5, colors="#666666")


# ----------------------------------------------------------------------------- gradient flow

UPDATE_RATIO_RULE = 1e-3          # the usual rule of thumb for ||Δw|| / ||w|| per step


def _layer_colors(layers):
    """A colour per layer: the conv blocks from dark to light blue-green with depth, the Linear
    layers in warm colours, so that the order of the network reads off the lines."""
    blocks = [n for n in layers if n.rstrip("0123456789") in ("block", "conv")]
    heads = [n for n in layers if n not in blocks]
    colors = {n: plt.get_cmap("viridis")(0.9 * i / max(len(blocks) - 1, 1)) for i, n in enumerate(blocks)}
    warm = ["#dd8452", "#c44e52", "#937860", "#da8bc3"]
    colors.update({n: warm[i % len(warm)] for i, n in enumerate(heads)})
    return colors


def plot_gradient_flow(layers_log, path):
    """Each layer's gradient norm (after clipping) and relative update ||Δw|| / ||w|| against step,
    from layers.csv (mnist.train's LayerWatch): one line per layer, on log scales; the 1e-3 rule of
    thumb for the update drawn faintly. Each row is one step's (of a batch of 4, whose gradient may
    be ten thousand times smaller when the batch happens to be easy), so the values scatter: a faint
    line through the rows, and a solid one, their centred running geometric mean over about a
    twentieth of the run (the mean of their logarithms, as a log scale shows them: the typical
    step's size; an arithmetic mean follows the few largest rows in and out of its window, in
    steps; centred, so that it does not lag behind the update's fall as the learning rate anneals).
    Each panel shows down to a tenth of the means' lows (their 3rd percentile; the update panel of a
    short run, all): deeper dips, and the update's last fall as the learning rate reaches 0, run off.
    A short run (up to 20 rows) is drawn as its rows, dotted, unsmoothed. ``layers_log``: layers.csv's
    path, or read_layer_log's tuple of it."""
    if isinstance(layers_log, (str, os.PathLike)):
        layers_log = read_layer_log(layers_log)
    step, epoch, layers, stats = layers_log
    few = len(step) <= 20
    half = 0 if few else max(1, len(step) // 40)          # rows on each side of a mean
    every = int(np.median(np.diff(step))) if len(step) > 1 else int(step[0])
    colors = _layer_colors(layers)
    fig = _figure(FIGSIZE["gradient_flow"])
    with plt.rc_context(STYLE):
        ax_grad, ax_ratio = fig.subplots(2, 1, sharex=True)
        for ax, stat in ((ax_grad, "grad_norm"), (ax_ratio, "update_ratio")):
            values, lowest = stats[stat], np.inf
            for j, name in enumerate(layers):
                v = values[:, j]
                shown = np.isfinite(v) & (v > 0)             # (a log scale has no place for 0)
                if not shown.any():
                    continue
                if not few:
                    ax.plot(step[shown], v[shown], color=colors[name], alpha=0.15, linewidth=0.7)
                mean = np.exp(centred_mean(np.log(v[shown]), half))     # the geometric mean
                lowest = min(lowest, np.percentile(mean, 3))     # (not the last few rows')
                ax.plot(step[shown], mean, color=colors[name], linewidth=1.8, label=name,
                        **(dict(marker="o", markersize=4) if few else {}))
            ax.set_yscale("log")
            if np.isfinite(lowest) and (stat == "grad_norm" or not few):    # the easy batches' dips, and the
                ax.set_ylim(bottom=max(ax.get_ylim()[0], lowest / 10))   # update's last fall, run off the bottom
        ax_grad.set_ylabel("gradient norm ||g||")
        ax_grad.set_title("Gradient norm of each layer's weights, as the update used it (after clipping)")
        ax_ratio.axhline(UPDATE_RATIO_RULE, color="#666666", linewidth=1, linestyle="--", alpha=0.6, zorder=0)
        ax_ratio.annotate(f"rule of thumb: {UPDATE_RATIO_RULE:g}", (0, UPDATE_RATIO_RULE),
                          xycoords=("axes fraction", "data"), xytext=(4, -3), textcoords="offset points",
                          ha="left", va="top", fontsize=8.5, color="#555555")
        ax_ratio.set_ylabel("relative update ||Δw|| / ||w||")
        ax_ratio.set_title("Relative update of each layer's weights in one step (it follows the learning rate)")
        ax_ratio.set_xlabel(f"step (a row every {every} steps)" if few else
                            f"step (faint: the step of each row, one every {every}; "
                            f"solid: their geometric mean over ~{(2 * half + 1) * every} steps around)")
        if step[-1] > step[0]:
            ax_ratio.set_xlim(step[0], step[-1])
        else:                                   # one row: centred
            ax_ratio.set_xlim(0, 2 * step[0])
        if epoch is not None:
            _mark_epochs((ax_grad, ax_ratio), step, epoch)
        handles, labels = ax_grad.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", title="layer\n(input first)", title_fontsize=9)
        fig.suptitle("Gradient flow: how much each layer learns, step by step", fontsize=14)
        fig.supxlabel("weights: a conv block's kernel, a Linear layer's matrix "
                      "(BatchNorm's γ and β, and the biases, left out)", fontsize=8.5, color="#666666")
    return _save(fig, path)


# ----------------------------------------------------------------------------- feature maps

def feature_maps(model, image):
    """Activations of each conv block for one image: [(name, (C, H, W) array)], in eval mode.

    image: (28, 28) uint8. Runs the top-level children one by one and keeps each block's output.
    """
    from mnist.data import normalize
    blocks = dict(_conv_blocks(model))
    x = normalize(np.asarray(image)[None])
    out = []
    was_training = model.training
    model.eval()
    try:
        for i, child in enumerate(model):
            x = child(x)
            if i in blocks:
                out.append((blocks[i], x[0].copy()))
    finally:
        model.train(was_training)
    return out


def plot_feature_maps(model, image, path, columns=14):
    """The input digit, then each conv block's output channels (after conv + BN + GELU).

    image: (28, 28) uint8. Each map has its own colour scale (dark = low, bright = high).
    """
    maps = feature_maps(model, image)
    rows_per = [math.ceil(len(a) / columns) for _, a in maps]
    fig = _figure(FIGSIZE["feature_maps"])
    with plt.rc_context(STYLE):
        subs = fig.subfigures(len(maps) + 1, 1, height_ratios=[2.2] + [r + 0.45 for r in rows_per])
        ax = subs[0].subplots()
        ax.imshow(image, cmap="gray_r", interpolation="nearest")
        ax.set_axis_off()
        subs[0].suptitle(f"input digit ({_shape(np.shape(image))})", fontsize=11, fontweight="bold")
        for sub, (name, a), nrows in zip(subs[1:], maps, rows_per):
            axes = sub.subplots(nrows, columns, squeeze=False)
            per_row = math.ceil(len(a) / nrows)          # 16 channels: two rows of 8, not 14 + 2
            for (r, c), axj in np.ndenumerate(axes):
                axj.set_axis_off()
                j = r * per_row + c
                if c < per_row and j < len(a):
                    axj.imshow(a[j], cmap="magma", interpolation="nearest")
            sub.suptitle(f"{name}: {a.shape[0]} channels × {a.shape[1]}×{a.shape[2]}",
                         fontsize=10.5, fontweight="bold", ha="left", x=0.01)
        fig.suptitle("Feature maps after conv · BN · GELU (each map on its own colour scale)", fontsize=13)
    return _save(fig, path)


# ----------------------------------------------------------------------------- test-set results

def plot_confusion_matrix(confusion, path):
    """confusion: (10, 10) counts, [true, predicted]. Log colour scale, counts in the cells,
    per-class accuracy (recall) as bars beside the rows."""
    confusion = np.asarray(confusion)
    k = len(confusion)
    per_class = 100 * confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    overall = 100 * confusion.trace() / max(confusion.sum(), 1)
    fig = _figure(FIGSIZE["confusion_matrix"])
    with plt.rc_context(STYLE):
        ax, ax_acc = fig.subplots(1, 2, width_ratios=(1, 0.5), sharey=True)
        ax_acc.set_box_aspect(1 / 0.5)         # as tall as the square matrix, so the rows line up
        shown = np.ma.masked_equal(confusion, 0)
        cmap = plt.get_cmap("Blues").with_extremes(bad="white")
        vmax = max(int(confusion.max()), 2)
        ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=1, vmax=vmax))
        for (t, p), v in np.ndenumerate(confusion):
            if v:
                dark = np.log(v) > 0.6 * np.log(vmax)
                ax.text(p, t, str(v), ha="center", va="center", fontsize=8.5,
                        color="white" if dark else "black", fontweight="bold" if t == p else "normal")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xlabel("predicted digit")
        ax.set_ylabel("true digit")
        ax.grid(False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(True)
        ax.set_title(f"Confusion matrix: test accuracy {overall:.2f}%\n"
                     f"(colour: log of the count; diagonal = correct)", fontsize=11)

        # per-class accuracy: bars beside the matrix rows, on the same y axis
        y = np.arange(k)
        lo = max(0.0, np.floor(min(per_class.min(), 100) - 2))
        ax_acc.barh(y, per_class - lo, left=lo, color=COLORS["fc"], height=0.7)
        ax_acc.set_xlim(lo, 100)
        for yi, a in zip(y, per_class):
            inside = a - lo > 0.45 * (100 - lo)
            ax_acc.text(a - 0.02 * (100 - lo) if inside else a + 0.02 * (100 - lo), yi, f"{a:.1f}%",
                        ha="right" if inside else "left", va="center", fontsize=8.5,
                        color="white" if inside else "black", fontweight="bold")
        ax_acc.tick_params(axis="y", labelleft=False)
        ax_acc.set_xlabel("accuracy (%)")
        ax_acc.grid(axis="y", visible=False)
        ax_acc.set_title("Per-class accuracy\n(share of each digit's images)", fontsize=11)
    return _save(fig, path)


def misclassified_figsize(max_images=36):
    cols = math.ceil(math.sqrt(max_images))
    return 1.45 * cols + 0.2, 1.6 * math.ceil(max_images / cols) + 0.6


def plot_misclassified(images, labels, predictions, probabilities, path, max_images=36):
    """Up to ``max_images`` misclassified digits, most confident mistakes first.

    images: (N, 28, 28) uint8; labels, predictions: (N,); probabilities: (N, 10) softmax
    outputs, or (N,) the probability of the predicted class. The figure size depends only on
    max_images (see misclassified_figsize).
    """
    images, labels, predictions = np.asarray(images), np.asarray(labels), np.asarray(predictions)
    probabilities = np.asarray(probabilities)
    conf = probabilities
    if probabilities.ndim == 2:
        conf = probabilities[np.arange(len(predictions)), predictions]
    wrong = np.flatnonzero(labels != predictions)
    order = wrong[np.argsort(-conf[wrong], kind="stable")][:max_images]
    cols = math.ceil(math.sqrt(max_images))
    nrows = math.ceil(max_images / cols)
    fig = _figure(misclassified_figsize(max_images))
    with plt.rc_context(STYLE):
        axes = fig.subplots(nrows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, i in zip(axes, order):
            ax.imshow(images[i], cmap="gray_r", interpolation="nearest")
            ax.set_title(f"true {labels[i]}, predicted {predictions[i]}\nconfidence {100 * conf[i]:.1f}%",
                         fontsize=9, fontweight="normal",
                         color=COLORS["accent"] if conf[i] >= 0.5 else "#333333")
        n_wrong, n = len(wrong), len(labels)
        if n_wrong == 0:
            fig.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=13)
        shown = f"{len(order)} most confident shown" if n_wrong > len(order) else "all shown"
        fig.suptitle(f"Misclassified test digits: {n_wrong:,} of {n:,} ({shown})", fontsize=13)
    return _save(fig, path)


# ----------------------------------------------------------------------------- a whole run

def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def visualize_run(run_dir, data_dir=None, test_images=None, test_set=None, evaluation=None):
    """Write every picture into run_dir and return their paths.

    Needs run_dir/model.npz (from ``python -m mnist.train --out run_dir``; a run stopped before
    the end has its checkpoint.npz, which serves instead); run_dir/log.csv and layers.csv are
    optional (the curves, or the gradient flow, are skipped with a note without the file, or
    without rows in it). Everything is read and checked before the first picture is written (a
    log.csv that does not parse, or a test set that does not load, writes nothing). The test-set
    pictures load MNIST (data_dir: see mnist.data.resolve_data_dir); test_images limits them to the
    first N digits. A caller that has the test set and the model's ``mnist.evaluate.evaluate`` of it
    already (the training script) passes them as test_set=(images, labels) and evaluation, to skip both again.
    """
    return list(iter_pictures(run_dir, data_dir, test_images, test_set, evaluation))


def iter_pictures(run_dir, data_dir=None, test_images=None, test_set=None, evaluation=None):
    """visualize_run, one picture at a time: yields each path once written (a caller may stop between them)."""
    from mnist.checkpoint import load_model
    from mnist.data import load_mnist
    from mnist.evaluate import evaluate, model_path

    if not os.path.exists(run_dir):                  # (not model_path's message: a file is not taken here)
        raise FileNotFoundError(f"{run_dir}: no such folder (mnist.visualize takes a run folder, "
                                "one that python -m mnist.train wrote)")
    if os.path.isfile(run_dir):
        raise NotADirectoryError(f"{run_dir} is a file: mnist.visualize takes a run folder "
                                f"({os.path.dirname(run_dir) or '.'}, say)")
    model = load_model(model_path(run_dir))          # model.npz, or an unfinished run's checkpoint.npz

    def out(name):
        return os.path.join(run_dir, name)

    # Everything the pictures need, read and checked before the first is written: a failure leaves
    # the folder as it was (each picture is written whole, but a half-drawn set would mix two runs').
    logs = {}
    for log_name, picture, read in (("log.csv", "training_curves.png", read_log),
                                    ("layers.csv", "gradient_flow.png", read_layer_log)):   # (older runs: none)
        log_path = out(log_name)
        if not os.path.exists(log_path):
            print(f"note: {log_path} not found, skipping {picture}")
            continue
        try:
            logs[picture] = read(log_path)
        except EmptyLog as e:
            print(f"note: {e}; skipping {picture}")
    images, labels = test_set if test_set is not None else load_mnist("test", data_dir=data_dir)
    if test_images is not None:
        images, labels = images[:test_images], labels[:test_images]
    result = evaluation if evaluation is not None else evaluate(model, images, labels)
    test_accuracy = result["accuracy"] if test_images is None else None    # (drawn only if on the whole test set)

    yield plot_architecture(model, out("architecture.png"))
    yield plot_parameter_counts(model, out("parameters.png"))
    yield plot_first_layer_filters(model, out("filters.png"))
    if "training_curves.png" in logs:
        yield plot_training_curves(logs["training_curves.png"], out("training_curves.png"), test_accuracy)
    if "gradient_flow.png" in logs:
        yield plot_gradient_flow(logs["gradient_flow.png"], out("gradient_flow.png"))
    yield plot_feature_maps(model, images[0], out("feature_maps.png"))
    yield plot_confusion_matrix(result["confusion"], out("confusion_matrix.png"))
    yield plot_misclassified(images, labels, result["predictions"], _softmax(result["logits"]),
                             out("misclassified.png"))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m mnist.visualize", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run directory holding model.npz, or the checkpoint.npz of a run stopped "
                                    "before its end (and log.csv and layers.csv for the curves)")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the MNIST files (default: $NANOTORCH_DATA/mnist or the cache)")
    ap.add_argument("--test-images", type=int, default=None, metavar="N",
                    help="use only the first N test images (default: all 10,000)")
    args = ap.parse_args(argv)
    if args.test_images is not None and args.test_images < 1:
        ap.error(f"--test-images must be >= 1 (the feature maps show the first one), got {args.test_images}")
    try:
        paths = visualize_run(args.run_dir, args.data_dir, args.test_images)
    except (ValueError, OSError, RuntimeError) as e:  # no model.npz, a corrupt file, a bad log.csv,
        # an unwritable run directory, a failed download (mnist.data.MnistDownloadError)
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    run(main)
