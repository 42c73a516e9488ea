"""Time each convolution of the MNIST model under every implementation in IMPLEMENTATIONS.

    python -m benchmarks.conv_kernels [--quick] [--batch 4 128] [--threads N] [--impl NAME ...]
                                      [--out DIR] [--plot | --no-plot]

For each layer shape and batch size, each implementation's forward, grad-input and grad-weight
(or, for the nn.Conv2d layer, its whole backward) is first checked against the naive reference,
then timed (median of interleaved repeats). Reported: microseconds per call, GFLOP/s with
2*N*Cout*H*W*Cin*9 flops per op (twice that for a whole backward), and that rate as a percentage
of this machine's float32 SGEMM peak, measured at start with as many BLAS threads as --threads
(the timed kernels themselves run BLAS on one thread, as nanotorch does, and Numba and torch on
--threads).
Writes conv_kernels.csv (and conv_kernels.png) to --out, default benchmarks/results/.

To add an implementation, register a factory (see ``register``):

    @register("my_conv")
    def _mine(x, w, dout, padding):
        return {"forward": lambda: my_conv(x, w, padding), "grad_input": ..., "grad_weight": ...}

The SGEMM "peak" is what OpenBLAS reaches on a large product, not the CPU's theoretical peak:
a library with better small-matrix kernels (torch's oneDNN) can exceed 100%. It also depends on
which of OpenBLAS's kernels run, which the first line prints: an environment that sets
OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU (as this project's Zen 5 machine does) gets the AVX2
kernels at about half the AVX-512 ones' rate, and Numba's AVX-512 loops then pass 100%. So the
first line also prints one core's vector multiply-add peak (benchmarks.common.fma_peak): what no
kernel on that core can pass, whatever the library.
"""
import argparse
import os
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import threadpool_limits

from benchmarks.common import (RESULTS_DIR, check_out_dir, fma_peak, format_table, settle, sgemm_peak, threads,
                               timeit_many, try_import_torch, write_csv)
from nanotorch import nn
from nanotorch.threads import parallel, threads_for
from mnist.cli import check_counts, run
from mnist.files import write_atomic
from nanotorch.kernels import (col2im, conv3x3_same, conv3x3_same_grad_weight, conv3x3_winograd, flip_transpose, im2col,
                               pad_planes, winograd_weights)
from nanotorch.kernels.gemm import MULTIPLY_ADDS_PER_VALUE, product

# The seven 3x3 convolutions (padding 1) of mnist.model: (in channels, out channels, height = width).
LAYERS = [(1, 4, 28), (4, 8, 28), (8, 12, 28), (12, 16, 28), (16, 20, 14), (20, 24, 7), (24, 28, 4)]
KERNEL, PADDING = 3, 1
OPS = ("forward", "grad_input", "grad_weight", "backward")   # backward = grad_input and grad_weight together


# ----------------------------------------------------------------------------- the naive reference

def _pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def conv2d_naive(x, w, padding):
    """Stride-1 cross-correlation, x: (N, C, H, W), w: (OC, C, KH, KW) -> out: (N, OC, OH, OW).

    out[n, o, y, x] = sum over c, i, j of w[o, c, i, j] * xpad[n, c, y + i, x + j]; one NumPy
    expression per kernel offset (i, j) and output channel o.
    """
    oc, _, kh, kw = w.shape
    xp = _pad(x, padding)
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((x.shape[0], oc, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + oh, j:j + ow]                   # the pixels that w[:, :, i, j] meets
            for o in range(oc):
                out[:, o] += (patch * w[o, :, i, j, None, None]).sum(axis=1)
    return out


def conv2d_grad_input_naive(dout, w, x_shape, padding):
    """dout: (N, OC, OH, OW) -> dx: (N, C, H, W); each output pixel sends w * dout back to its patch."""
    oc, _, kh, kw = w.shape
    n, c, h, wd = x_shape
    oh, ow = dout.shape[2:]
    dxp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding), dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            for o in range(oc):
                dxp[:, :, i:i + oh, j:j + ow] += dout[:, o, None] * w[o, :, i, j, None, None]
    return dxp[:, :, padding:padding + h, padding:padding + wd]


def conv2d_grad_weight_naive(x, dout, w_shape, padding):
    """-> dw: (OC, C, KH, KW), dw[o, c, i, j] = sum over n, y, x of dout[n, o, y, x] * xpad[n, c, y + i, x + j]."""
    oc, c, kh, kw = w_shape
    xp = _pad(x, padding)
    oh, ow = dout.shape[2:]
    dw = np.zeros(w_shape, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + oh, j:j + ow]
            for o in range(oc):
                dw[o, :, i, j] = (dout[:, o, None] * patch).sum(axis=(0, 2, 3))
    return dw


# ----------------------------------------------------------------------------- stride-trick im2col

def im2col_stride(x, kh, kw, padding):
    """x: (N, C, H, W) -> cols (N, C*kh*kw, OH*OW), one column matrix per image, from a sliding-window view."""
    win = sliding_window_view(_pad(x, padding), (kh, kw), axis=(2, 3))   # (N, C, OH, OW, kh, kw), no copy
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)   # the one copy


def col2im_stride(cols, x_shape, kh, kw, padding):
    """The adjoint of im2col_stride: add each kernel offset's slab back onto the padded image."""
    n, c, h, w = x_shape
    oh, ow = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    dxp = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + oh, j:j + ow] += cols[:, :, i, j]
    return dxp[:, :, padding:padding + h, padding:padding + w]


# ----------------------------------------------------------------------------- the registry

IMPLEMENTATIONS = {}
RUNTIME = {}        # name -> the thread pool it runs on; each runtime's implementations are timed in a block


def register(name, runtime="numpy"):
    """Decorator adding ``make(x, w, dout, padding)`` to IMPLEMENTATIONS under ``name``.

    ``make`` gets float32 x: (N, C, H, W), w: (OC, C, 3, 3), dout: (N, OC, H, W) and returns a dict
    op -> zero-argument callable, with ops from OPS: "forward" -> out, "grad_input" -> dx,
    "grad_weight" -> dw, "backward" -> (dx, dw); or None if the implementation is unavailable.
    Set-up done in ``make`` (conversions, a forward to fill a cache) is not timed. ``runtime``: the
    thread pool behind it ("numpy": OpenBLAS and Numba; "torch": PyTorch's OpenMP), see benchmarks.common.
    """
    def decorate(make):
        IMPLEMENTATIONS[name], RUNTIME[name] = make, runtime
        return make
    return decorate


@register("naive")
def _naive(x, w, dout, p):
    return {"forward": lambda: conv2d_naive(x, w, p),
            "grad_input": lambda: conv2d_grad_input_naive(dout, w, x.shape, p),
            "grad_weight": lambda: conv2d_grad_weight_naive(x, dout, w.shape, p)}


def _gemm_ops(x, w, dout, to_cols, from_cols, matrix_product=np.matmul):
    """im2col + GEMM as nn.Conv2d does it; grad_weight rebuilds the columns (the layer reuses its cache).

    Two column layouts are handled, told apart by ``to_cols(x).ndim``: per image, cols (N, K, OH*OW)
    and one batched matmul; or the whole batch side by side, cols (K, N*OH*OW) and a single GEMM
    (K = C*KH*KW). nanotorch's kernels moved from the first to the second. ``matrix_product(a, b)``:
    the batched layout's product, NumPy's or nanotorch's (kernels.gemm.product; then the weight's
    gradient is computed as (cols @ D^T)^T, as nn.Conv2d does).
    """
    n, oc = x.shape[0], w.shape[0]
    w2 = w.reshape(oc, -1)
    if to_cols(x).ndim == 3:
        d = dout.reshape(n, oc, -1)
        return {"forward": lambda: np.matmul(w2, to_cols(x)).reshape(dout.shape),
                "grad_input": lambda: from_cols(np.matmul(w2.T, d)),
                "grad_weight": lambda: np.matmul(d, to_cols(x).transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)}
    batch_last = (1, 0, 2, 3)                       # (N, OC, OH, OW) <-> (OC, N, OH, OW)
    z_shape = (oc, n, *dout.shape[2:])
    if matrix_product is not np.matmul:
        def channels_first():
            return np.ascontiguousarray(dout.transpose(batch_last).reshape(oc, -1))
        mm = matrix_product
        return {"forward": lambda: np.ascontiguousarray(mm(w2, to_cols(x)).reshape(z_shape).transpose(batch_last)),
                "grad_input": lambda: from_cols(mm(w2.T, channels_first())),
                "grad_weight": lambda: mm(to_cols(x), np.ascontiguousarray(channels_first().T)).T.reshape(w.shape)}
    return {"forward": lambda: np.ascontiguousarray((w2 @ to_cols(x)).reshape(z_shape).transpose(batch_last)),
            "grad_input": lambda: from_cols(w2.T @ dout.transpose(batch_last).reshape(oc, -1)),
            "grad_weight": lambda: (dout.transpose(batch_last).reshape(oc, -1) @ to_cols(x).T).reshape(w.shape)}


@register("im2col_numba")
def _im2col_numba(x, w, dout, p):
    n, c, h, wd = x.shape
    k, (oh, ow) = w.shape[-1], dout.shape[2:]
    return _gemm_ops(x, w, dout, lambda a: im2col(a, k, k, 1, 1, p, p, oh, ow),
                     lambda cols: col2im(cols, n, c, h, wd, k, k, 1, 1, p, p, oh, ow))


@register("im2col_matmul")
def _im2col_matmul(x, w, dout, p):
    """Numba's im2col and col2im with kernels.gemm's products: what nn.Conv2d runs on planes
    narrower than the direct kernel's."""
    n, c, h, wd = x.shape
    k, (oh, ow) = w.shape[-1], dout.shape[2:]
    spreads = parallel(w.size * n * oh * ow // MULTIPLY_ADDS_PER_VALUE)     # as nn.Conv2d decides
    return _gemm_ops(x, w, dout, lambda a: im2col(a, k, k, 1, 1, p, p, oh, ow, parallel(a.size * 9)),
                     lambda cols: col2im(cols, n, c, h, wd, k, k, 1, 1, p, p, oh, ow),
                     lambda a, b: product(a, b, spreads))


@register("im2col_stride")
def _im2col_stride(x, w, dout, p):
    k = w.shape[-1]
    return _gemm_ops(x, w, dout, lambda a: im2col_stride(a, k, k, p),
                     lambda cols: col2im_stride(cols, x.shape, k, k, p))


@register("nanotorch")
def _nanotorch_layer(x, w, dout, p):
    layer = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=p, bias=False)
    layer.weight.data = w
    layer(x)                                        # fills the cache backward reads

    def backward():
        layer.weight.grad = None                    # as zero_grad would; otherwise grads accumulate
        return layer.backward(dout), layer.weight.grad
    return {"forward": lambda: layer(x), "backward": backward}


@register("direct3x3_numba")
def _direct3x3(x, w, dout, p):
    if w.shape[-2:] != (3, 3) or p != 1:
        return None
    h, wd = x.shape[2:]
    wt = flip_transpose(w)
    par = parallel(x.size)                     # on Numba's threads when --threads is 2 or more
    return {"forward": lambda: conv3x3_same(pad_planes(x), w, h, wd, False, par).reshape(dout.shape),
            "grad_input": lambda: conv3x3_same(pad_planes(dout), wt, h, wd, False, par).reshape(x.shape),
            "grad_weight": lambda: conv3x3_same_grad_weight(pad_planes(x), pad_planes(dout), h, wd, par)}


@register("winograd_numba")
def _winograd(x, w, dout, p):
    """The forward only: nanotorch runs it for inference (under no_grad), where nothing needs a backward.
    Its GFLOP/s count the direct convolution's multiply-adds, of which it does 4 in 9 (and additions
    in its transforms), so it can pass the peak."""
    h, wd = x.shape[2:]
    if w.shape[-2:] != (3, 3) or p != 1 or h % 2 or wd % 2:
        return None
    threads = threads_for(min(x.size, dout.size))                      # as nn.Conv2d decides
    return {"forward": lambda: np.ascontiguousarray(                        # (the copy to (N, OC, H, W) timed too)
        conv3x3_winograd(x, winograd_weights(w), w.shape[0], threads).transpose(1, 0, 2)).reshape(dout.shape)}


@register("torch", runtime="torch")
def _torch(x, w, dout, p):
    torch = try_import_torch()
    if torch is None:
        return None
    xt, wt, dt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dout)
    return {"forward": lambda: torch.nn.functional.conv2d(xt, wt, padding=p).numpy(),
            "grad_input": lambda: torch.nn.grad.conv2d_input(xt.shape, wt, dt, padding=p).numpy(),
            "grad_weight": lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, dt, padding=p).numpy()}


# ----------------------------------------------------------------------------- checking and timing

def reference(x, w, dout, padding):
    """The naive results in float64, op -> array (or (dx, dw) for "backward")."""
    x, w, dout = (a.astype(np.float64) for a in (x, w, dout))
    dx = conv2d_grad_input_naive(dout, w, x.shape, padding)
    dw = conv2d_grad_weight_naive(x, dout, w.shape, padding)
    return {"forward": conv2d_naive(x, w, padding), "grad_input": dx, "grad_weight": dw, "backward": (dx, dw)}


def check(name, op, got, ref, rtol=1e-4):
    """Raise unless ``got`` equals ``ref`` to float32 accuracy: max |got - ref| <= rtol * max |ref|."""
    for g, r in zip(got, ref) if op == "backward" else [(got, ref)]:
        g = np.asarray(g)
        if g.shape != r.shape or g.dtype != np.float32:
            raise AssertionError(f"{name} {op}: got {g.dtype}{g.shape}, expected float32{r.shape}")
        err = np.abs(g - r).max() / max(np.abs(r).max(), 1e-30)
        if not err <= rtol:
            raise AssertionError(f"{name} {op}: relative error {err:.2e} against the naive reference")


def inputs(batch, cin, cout, hw, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cin, hw, hw), dtype=np.float32)
    w = rng.standard_normal((cout, cin, KERNEL, KERNEL), dtype=np.float32) / np.float32(3 * np.sqrt(cin))
    dout = rng.standard_normal((batch, cout, hw, hw), dtype=np.float32)
    return x, w, dout


def bench_layer(batch, index, impls, repeats, min_time, peak):
    """Check and time every implementation on one layer; returns CSV rows."""
    cin, cout, hw = LAYERS[index]
    x, w, dout = inputs(batch, cin, cout, hw)
    ref = reference(x, w, dout, PADDING)
    fns = {}
    for name in impls:
        ops = IMPLEMENTATIONS[name](x, w, dout, PADDING)
        for op, fn in (ops or {}).items():
            check(name, op, fn(), ref[op])
            fns[name, op] = fn
    seconds = {}
    for runtime in dict.fromkeys(RUNTIME[name] for name in impls):   # one block per thread pool
        settle()
        seconds.update(timeit_many({k: f for k, f in fns.items() if RUNTIME[k[0]] == runtime}, repeats, min_time))
    for name in impls:                               # a backward of separate ops is their sum
        if (name, "grad_input") in seconds and (name, "grad_weight") in seconds:
            seconds[name, "backward"] = seconds[name, "grad_input"] + seconds[name, "grad_weight"]
    flops = 2 * batch * cout * hw * hw * cin * KERNEL * KERNEL
    rows = []
    for (name, op), s in sorted(seconds.items(), key=lambda kv: (impls.index(kv[0][0]), OPS.index(kv[0][1]))):
        gflops = flops * (2 if op == "backward" else 1) / s / 1e9
        rows.append({"batch": batch, "layer": f"conv{index + 1}", "cin": cin, "cout": cout, "hw": hw,
                     "impl": name, "op": op, "how": "measured" if (name, op) in fns else "grad_input + grad_weight",
                     "us": s * 1e6, "gflops": gflops, "pct_peak": 100 * gflops / peak})
    return rows


def summary_table(rows):
    """One line per (batch, layer, implementation): microseconds per op, then forward/backward GFLOP/s and % peak."""
    lines = {}
    for r in rows:
        line = lines.setdefault((r["batch"], r["layer"], r["impl"]), {
            "batch": r["batch"], "layer": f"{r['layer']} {r['cin']}->{r['cout']} {r['hw']}x{r['hw']}",
            "impl": r["impl"],
            **{f"{op}_us": "" for op in OPS}, "fwd_GF/s": "", "bwd_GF/s": "", "fwd_%pk": "", "bwd_%pk": ""})
        line[f"{r['op']}_us"] = round(r["us"], 1)
        if r["op"] in ("forward", "backward"):
            short = {"forward": "fwd", "backward": "bwd"}[r["op"]]
            line[f"{short}_GF/s"], line[f"{short}_%pk"] = round(r["gflops"], 2), round(r["pct_peak"], 1)
    return format_table(list(lines.values()))


def plot(rows, peak, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    batches = sorted({r["batch"] for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(len(batches), 2, figsize=(12, 3.6 * len(batches)), squeeze=False)
    width = 0.8 / len(impls)
    for (b, op), ax in zip([(b, op) for b in batches for op in ("forward", "backward")], axes.flat):
        for k, impl in enumerate(impls):
            got = {r["layer"]: r["gflops"] for r in rows if (r["batch"], r["impl"], r["op"]) == (b, impl, op)}
            xs = [i + (k - (len(impls) - 1) / 2) * width for i, layer in enumerate(layers) if layer in got]
            ax.bar(xs, [got[layer] for layer in layers if layer in got], width, label=impl)
        ax.axhline(peak, color="k", ls="--", lw=1, label=f"SGEMM peak {peak:.0f}")
        ax.set(yscale="log", ylabel="GFLOP/s", title=f"{op}, batch {b}", xticks=range(len(layers)),
               xticklabels=layers)
    handles, labels = axes[0, 0].get_legend_handles_labels()       # one legend, below the panels
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(batches), 1, 1))
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.conv_kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 4, two layers, few repeats, no plot (CI smoke)")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 4 128)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for Numba's kernels, torch and the SGEMM peak (BLAS inside the kernels: one)")
    ap.add_argument("--impl", nargs="+", default=None, choices=sorted(IMPLEMENTATIONS), help="default: all")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per op (default 7, quick 3)")
    ap.add_argument("--out", default=str(RESULTS_DIR),
                    help="folder for the CSV and the plot (default benchmarks/results/)")
    ap.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None, help="default: on unless --quick")
    args = ap.parse_args(argv)
    check_counts(ap, args, ("batch", "threads", "repeats"))
    check_out_dir(ap, args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    batches = args.batch if args.batch is not None else ([4] if args.quick else [4, 128])
    layer_ids = [0, 4] if args.quick else range(len(LAYERS))
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    min_time = 0.002 if args.quick else 0.02
    impls = args.impl or list(IMPLEMENTATIONS)
    started = time.perf_counter()
    with threads(args.threads, try_import_torch()) as info:
        with threadpool_limits(limits=args.threads, user_api="blas"):
            peak = sgemm_peak()
        print(f"threads {info}; float32 SGEMM peak, measured with {args.threads} BLAS thread(s) "
              f"(1024^3 np.matmul): {peak:.1f} GFLOP/s; one core's vector multiply-add peak (independent "
              f"chains, benchmarks.common.fma_peak): {fma_peak():.1f} GFLOP/s")
        if try_import_torch() is None and "torch" in impls:
            print("torch is not installed: its rows are skipped")
        rows = []
        for batch in batches:
            for i in layer_ids:
                rows += bench_layer(batch, i, impls, repeats, min_time, peak)
    print(summary_table(rows))
    path = write_csv(os.path.join(args.out, "conv_kernels.csv"), rows)
    print(f"wrote {path}")
    if (not args.quick) if args.plot is None else args.plot:
        print(f"wrote {plot(rows, peak, os.path.join(args.out, 'conv_kernels.png'))}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    run(main)
