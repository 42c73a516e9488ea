"""Train the seed recipe in nanotorch and in PyTorch on the same MNIST batches and compare speed.

    python -m benchmarks.epoch [--steps 300] [--repeats 5] [--threads 2] [--quick] [--out DIR]

Each repeat trains a fresh model (nanotorch's initial weights, copied into the torch model) for
--steps steps of the recipe: batch 4, SGD lr 0.001 momentum 0.9, OneCycleLR(max_lr 0.1, pct_start
0.25, cos, total_steps 15000), clip_grad_norm_ 1.0, dropout 0.15. nanotorch runs mnist.train's own
train_step; torch runs the standard zero_grad/forward/loss/backward/clip/step/scheduler.step loop.
Repeats alternate nanotorch, torch, nanotorch, ...; batches are normalised beforehand (not timed).

Reported: steps/s (median over repeats; also the fastest repeat), the ratio nanotorch time / torch
time (median of the per-repeat ratios), the projected time of a 15000-step epoch, the mean training
loss (a check that both ran the same recipe), evaluation images/s on the test set in eval mode at
batch sizes 16, 32, 64, 128 and 256 (torch under no_grad, nanotorch through mnist.evaluate.predict_logits;
the evaluation ratio compares each framework at its fastest batch size; and the arithmetic limit,
below), nanotorch's time per layer in forward and backward, the peak RSS, and the time from process
start to the end of the first nanotorch step (imports, data loading, Numba cache loads).

The arithmetic limit of evaluation: the multiply-adds of one image's forward through the model's
convolutions and Linear layers (forward_flops), done on every thread at one core's measured
multiply-add peak (benchmarks.common.fma_peak) and nothing else, give the most images/s this
machine allows. Counted as a direct convolution does them (9 multiply-adds an output for each
input channel of a 3x3 kernel) for PyTorch, and as nanotorch does them for nanotorch (4 in the
products of its Winograd layers, which evaluation uses: nanotorch/kernels/winograd.py; their
transforms' additions are not counted), which gives nanotorch a higher limit. Each framework's
evaluation is reported as a fraction of its limit, and so is the ratio nanotorch's evaluation
would have at its limit (that time over torch's).
Writes epoch.csv, epoch_profile.csv and epoch.json to --out (default benchmarks/results/).
"""
import argparse
import contextlib
import json
import os
import statistics
import time
from itertools import islice

import numpy as np

from benchmarks.common import (RESULTS_DIR, check_out_dir, fma_peak, format_table, peak_rss_mb,
                               seconds_since_process_start, settle, threads, torch_threads, try_import_torch, write_csv)
from nanotorch import get_num_threads, nn, no_grad
from nanotorch.nn.fused import winograd_pooled_kind
from mnist.cli import check_counts, run
from mnist.data import iterate_batches, load_mnist, normalize
from mnist.files import write_atomic
from mnist.evaluate import predict_logits
from mnist.model import CHANNELS
from mnist.train import RECIPE, build_trainer, train_step

EPOCH_STEPS = 15000                 # 60000 images / batch 4: the schedule's length and the projection's
EVAL_BATCH_SIZES = (16, 32, 64, 128, 256)   # 1000 (half the speed for both) took the process past 1 GB


# ----------------------------------------------------------------------------- nanotorch

def new_nanotorch(seed=0):
    """A fresh seed model (initial weights from ``seed``) with the recipe's loss, optimizer and schedule,
    built exactly as mnist.train builds them."""
    return build_trainer(argparse.Namespace(**{**RECIPE, "seed": seed}), EPOCH_STEPS)


def train_nanotorch(batches, trainer=None):
    """Run mnist.train.train_step on each (x, y) batch (a fresh ``new_nanotorch()`` unless given);
    returns (seconds, mean loss, model)."""
    model, criterion, optimizer, scheduler = trainer or new_nanotorch()
    losses = []
    start = time.perf_counter()
    for x, y in batches:
        losses.append(train_step(model, criterion, optimizer, scheduler, x, y, RECIPE["clip"])[0])
    return time.perf_counter() - start, statistics.fmean(losses), model


@contextlib.contextmanager
def profiled(model):
    """Time forward and backward of every module of ``model`` while the block runs.

    Yields {module: [forward, backward, forward self, backward self]} in seconds; "self" excludes the
    time spent in the module's own (timed) sub-modules. The wrappers are instance attributes that
    shadow the class's methods; they are removed on exit.
    """
    totals = {m: [0.0] * 4 for m in model.modules()}
    callees = [0.0]                                 # time in timed callees of each active call

    def timed(method, acc, slot):
        def wrapper(*args):
            callees.append(0.0)
            start = time.perf_counter()
            try:
                return method(*args)
            finally:
                elapsed = time.perf_counter() - start
                acc[slot] += elapsed
                acc[slot + 2] += elapsed - callees.pop()
                callees[-1] += elapsed
        return wrapper

    try:
        for m, acc in totals.items():
            object.__setattr__(m, "forward", timed(m.forward, acc, 0))
            object.__setattr__(m, "backward", timed(m.backward, acc, 1))
        yield totals
    finally:
        for m in totals:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("backward", None)


def describe(name, m):
    conv = next((c for c in m.modules() if isinstance(c, nn.Conv2d)), None)
    return f"{name} {type(m).__name__}" + (f" {conv.in_channels}->{conv.out_channels}" if conv else "")


def profile_nanotorch(batches, seed=0):
    """Train on the batches with every module timed. Returns rows (ms per step and % of the step):
    each top-level child of the model's Sequential (its whole forward and backward), then each
    layer type's own time (excluding its timed sub-layers; summed over all layers of that type),
    then the rest of the step (loss, zero_grad, clipping, SGD, scheduler).
    """
    trainer = new_nanotorch(seed)
    model = trainer[0]
    with profiled(model) as totals:
        step = train_nanotorch(batches, trainer)[0] / len(batches)
    per_type = {}
    for m, (_, _, f, b) in totals.items():
        acc = per_type.setdefault(type(m).__name__, [0.0, 0.0])
        acc[0], acc[1] = acc[0] + f, acc[1] + b
    children = {describe(str(i), m): totals[m][:2] for i, m in enumerate(model)}
    by_time = sorted(per_type.items(), key=lambda kv: -sum(kv[1]))
    n = len(batches)
    rows = [{"kind": kind, "part": key, "forward_ms": 1e3 * f / n, "backward_ms": 1e3 * b / n,
             "total_ms": 1e3 * (f + b) / n, "pct_step": 100 * (f + b) / n / step}
            for kind, parts in (("child", children.items()), ("type self", by_time)) for key, (f, b) in parts
            if f + b > 0]                           # layers run inside a fused one are never called
    rest = step - sum(totals[model][:2]) / n
    rows.append({"kind": "rest", "part": "loss + zero_grad + clip + SGD + scheduler", "forward_ms": "",
                 "backward_ms": "", "total_ms": 1e3 * rest, "pct_step": 100 * rest / step})
    rows.append({"kind": "total", "part": "whole step", "forward_ms": "", "backward_ms": "",
                 "total_ms": 1e3 * step, "pct_step": 100.0})
    return rows


# ----------------------------------------------------------------------------- PyTorch

def torch_seed_model(torch):
    """mnist.model.build_model as a torch.nn.Sequential: same layers, same state_dict keys."""
    tnn, c = torch.nn, CHANNELS

    def block(cin, cout):
        return tnn.Sequential(tnn.Conv2d(cin, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.GELU())

    return tnn.Sequential(
        block(c[0], c[1]), block(c[1], c[2]), block(c[2], c[3]), block(c[3], c[4]), tnn.MaxPool2d(2),
        block(c[4], c[5]), tnn.MaxPool2d(2),
        block(c[5], c[6]), tnn.MaxPool2d(2, ceil_mode=True),
        block(c[6], c[7]), tnn.MaxPool2d(2),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
        tnn.Linear(c[7], 2 * c[7]), tnn.GELU(), tnn.Dropout(RECIPE["dropout"]), tnn.Linear(2 * c[7], 10))


def train_torch(torch, batches, state):
    """Train the torch model from the state_dict ``state`` (NumPy arrays); returns (seconds, mean loss, model)."""
    model = torch_seed_model(torch)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.train()
    params, losses = list(model.parameters()), []
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(params, lr=RECIPE["lr"], momentum=RECIPE["momentum"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=RECIPE["max_lr"], total_steps=EPOCH_STEPS,
                                                    pct_start=RECIPE["pct_start"],
                                                    anneal_strategy=RECIPE["anneal_strategy"])
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, RECIPE["clip"])
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())                  # as train_step does, to check it is finite
    return time.perf_counter() - start, statistics.fmean(losses), model


def eval_torch(torch, model, x, batch_size):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


# ----------------------------------------------------------------------------- the run

def forward_flops(model, input_shape=(1, 28, 28), as_run=False, batch=64):
    """FLOPs (2 a multiply-add) of one image's forward through the model's Conv2d and Linear layers:
    2 * in_channels * kh * kw for each convolution output, 2 * in_features for each Linear
    output, counted by forward hooks in an eval-mode pass (under no_grad) of a batch of blank
    images (as_run: which algorithm runs may depend on the batch; 64 is evaluation's). The
    rest (BatchNorm, GELU, pooling) is a few operations a value and not counted. ``as_run``: a
    convolution that runs Winograd F(2x2, 3x3) counts the 4 multiply-adds an output and input
    channel of its products instead of 9: those Conv2d runs so itself, and those its block runs so
    with the pooling after it (nn/fused.py: winograd_pooled_kind; in the seed model, a MaxPool2d(2)
    follows every block on planes narrower than 14)."""
    flops = []

    def count(layer, args, out):
        if isinstance(layer, nn.Conv2d):
            winograd = as_run and winograd_pooled_kind(layer, args[0].shape) is not None
            taps = 4 if winograd else layer.kernel_size[0] * layer.kernel_size[1]
            flops.append(2 * out.size // batch * layer.in_channels * taps)
        else:
            flops.append(2 * out.size // batch * layer.in_features)

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            model(np.zeros((batch, *input_shape), np.float32))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(flops)


def evaluation_limit(model, n_threads, images_per_s):
    """The arithmetic limits of evaluation (module docstring) and each framework's fraction of its
    own; images_per_s: framework -> its best evaluation images/s."""
    peak = fma_peak()
    limits = {}
    for name, as_run in (("direct", False), ("nanotorch", True)):
        flops = forward_flops(model, as_run=as_run)
        limits[name] = {"forward_mflop_per_image": flops / 1e6, "images_per_s": n_threads * peak * 1e9 / flops}
    most = {name: limits["nanotorch" if name == "nanotorch" else "direct"]["images_per_s"] for name in images_per_s}
    return {"fma_peak_gflops_per_core": peak, "threads": n_threads, **limits,
            "fraction": {name: ips / most[name] for name, ips in images_per_s.items()},
            "ratio_at_limit": (images_per_s["torch"] / limits["nanotorch"]["images_per_s"]   # nanotorch's limit's
                               if "torch" in images_per_s else None)}                       # time over torch's


def time_evaluation(evaluators, n_images, repeats, batch_sizes=EVAL_BATCH_SIZES):
    """evaluators: name -> f(batch_size) evaluating the test set. Times each framework at each batch
    size (median of ``repeats``, alternating frameworks); returns name -> {batch_size: images/s}.
    Each framework is then judged at its own fastest batch size: which one is fastest differs
    between them (PyTorch here: 64-256, nanotorch 32-256 from run to run; both half as fast at
    1000), and neither should be held to the other's."""
    seconds = {name: {b: [] for b in batch_sizes} for name in evaluators}
    for b in batch_sizes:                           # a first call per shape (set-up, caches) is not timed
        for evaluate in evaluators.values():
            evaluate(b)
    for r in range(repeats):
        for b in batch_sizes:
            names = list(evaluators)
            for name in names[r % 2:] + names[:r % 2]:   # alternate which framework goes first
                settle()
                start = time.perf_counter()
                evaluators[name](b)
                seconds[name][b].append(time.perf_counter() - start)
    return {name: {b: n_images / statistics.median(t) for b, t in per_batch.items()}
            for name, per_batch in seconds.items()}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.epoch", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps per repeat (default 300, quick 20)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each framework (default 5, quick 1)")
    ap.add_argument("--threads", type=int, default=2, help="threads for Numba and torch (BLAS stays at one)")
    ap.add_argument("--profile-steps", type=int, default=None,
                    help="steps of the per-layer profile (default 100, or --steps if fewer; quick 10)")
    ap.add_argument("--quick", action="store_true", help="20 steps, 1 repeat, 1000 test images (CI smoke)")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the MNIST files (default: $NANOTORCH_DATA/mnist or the cache)")
    ap.add_argument("--no-torch", action="store_true", help="measure nanotorch only")
    ap.add_argument("--out", default=str(RESULTS_DIR),
                    help="folder for the CSVs and epoch.json (default benchmarks/results/)")
    args = ap.parse_args(argv)
    check_counts(ap, args, ("steps", "repeats", "threads", "profile_steps"))
    check_out_dir(ap, args.out)
    if args.steps is None:
        args.steps = 20 if args.quick else 300
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.profile_steps is None:
        args.profile_steps = 10 if args.quick else min(100, args.steps)
    return args


def compare(args, torch, batches, test_x, rss):
    """Alternate timed repeats of the two frameworks; then time evaluation of each. Notes peak RSS in ``rss``."""
    torch_batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches] if torch else None
    fresh = new_nanotorch()[0]
    state = fresh.state_dict()                      # both start from nanotorch's initial weights
    train_nanotorch(batches[:10])                   # warm up
    if torch:
        train_torch(torch, torch_batches[:10], state)
    times = {"nanotorch": [], "torch": []}
    loss = {}
    for _ in range(args.repeats):
        settle()                                    # let the other library's threads stop spinning
        seconds, loss["nanotorch"], model = train_nanotorch(batches)
        times["nanotorch"].append(seconds)
        if torch:
            settle()
            seconds, loss["torch"], torch_model = train_torch(torch, torch_batches, state)
            times["torch"].append(seconds)

    rss["training"] = peak_rss_mb()
    test_t = torch.from_numpy(test_x) if torch else None
    evaluators = {"nanotorch": lambda b: predict_logits(model, test_x, batch_size=b, threads=args.threads)}
    if torch:
        evaluators["torch"] = lambda b: eval_torch(torch, torch_model, test_t, batch_size=b)
    evals = time_evaluation(evaluators, len(test_x), min(args.repeats, 3))

    frameworks = {}
    for name in ("nanotorch", "torch") if torch else ("nanotorch",):
        step = statistics.median(times[name]) / len(batches)
        frameworks[name] = {"steps_per_s": 1 / step, "ms_per_step": 1e3 * step,
                            "best_ms_per_step": 1e3 * min(times[name]) / len(batches),
                            "epoch_minutes": EPOCH_STEPS * step / 60,
                            "eval_images_per_s": max(evals[name].values()),
                            "eval_batch_size": max(evals[name], key=evals[name].get),
                            "mean_loss": loss[name], "repeat_seconds": times[name]}
    ratio = statistics.median(a / b for a, b in zip(times["nanotorch"], times["torch"])) if torch else None
    eval_ratio = (frameworks["torch"]["eval_images_per_s"] / frameworks["nanotorch"]["eval_images_per_s"]
                  if torch else None)
    settle()                                        # (torch's threads spin after its evaluation)
    limit = evaluation_limit(fresh, get_num_threads(),              # (--threads, capped at the cores)
                             {name: fw["eval_images_per_s"] for name, fw in frameworks.items()})
    return {"frameworks": frameworks, "nanotorch_over_torch": ratio, "eval_nanotorch_over_torch": eval_ratio,
            "eval_images_per_s": evals, "eval_limit": limit,
            "torch_version": torch.__version__ if torch else None}


def report(result, out):
    fw = result["frameworks"]
    rows = [{"framework": name, **{k: v for k, v in r.items() if k != "repeat_seconds"}} for name, r in fw.items()]
    print(f"{result['steps']} steps x {result['repeats']} repeats, threads {result['threads']}, "
          f"torch {result['torch_version'] or 'not installed'}")
    print(format_table(rows))
    if result["nanotorch_over_torch"] is not None:
        print(f"nanotorch time / torch time: {result['nanotorch_over_torch']:.2f} (median of per-repeat ratios)")
    evals = result["eval_images_per_s"]
    print("\nevaluation of the test set, images/s by batch size:")
    print(format_table([{"framework": name, **{f"batch {b}": v for b, v in per_batch.items()}}
                        for name, per_batch in evals.items()]))
    if result["eval_nanotorch_over_torch"] is not None:
        print(f"evaluation, nanotorch time / torch time: {result['eval_nanotorch_over_torch']:.2f} "
              f"(each at its fastest batch size)")
    limit = result["eval_limit"]
    print(f"arithmetic limit: the convolutions' and Linear layers' multiply-adds alone, at one core's peak "
          f"({limit['fma_peak_gflops_per_core']:.1f} GFLOP/s measured now) on {limit['threads']} thread(s):")
    fraction = limit["fraction"]
    for key, label, names in (("direct", "as a direct convolution does them", [n for n in fraction if n != "nanotorch"]),
                              ("nanotorch", "as nanotorch does them (Winograd layers)", ["nanotorch"])):
        print(f"  {label}, {limit[key]['forward_mflop_per_image']:.2f} MFLOP an image: at most "
              f"{limit[key]['images_per_s']:,.0f} images/s"
              + "".join(f"; {name} reaches {100 * fraction[name]:.0f}%" for name in names))
    if limit["ratio_at_limit"] is not None:
        print(f"  at its limit, nanotorch time / torch time would be {limit['ratio_at_limit']:.2f}")
    rss = result["peak_rss_mb"]
    print(f"process start -> first nanotorch step done: {result['seconds_to_first_nanotorch_step']:.2f} s")
    print(f"peak RSS: {rss['first_step']:.0f} MB at the first step (before torch is imported), "
          f"{rss['training']:.0f} MB after training, {rss['end']:.0f} MB after evaluation "
          f"(up to batch {max(EVAL_BATCH_SIZES)})")
    print("\nnanotorch per layer (ms per step):")
    print(format_table(result["profile"]))
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "epoch.csv"), rows)
    write_csv(os.path.join(out, "epoch_profile.csv"), result["profile"])
    write_atomic(os.path.join(out, "epoch.json"), lambda f: json.dump(result, f, indent=2), mode="w")
    print(f"wrote {out}/epoch.csv, epoch_profile.csv, epoch.json")


def main(argv=None):
    args = parse_args(argv)
    with threads(args.threads) as info:
        images, labels = load_mnist("train", data_dir=args.data_dir)
        batches = [(normalize(x), y.astype(np.int64)) for x, y in
                   islice(iterate_batches(images, labels, RECIPE["batch_size"], seed=0, epoch=0), args.steps)]
        train_nanotorch(batches[:1])                # the first step: Numba loads (or compiles) its kernels
        startup = seconds_since_process_start()
        rss = {"first_step": peak_rss_mb()}
        test_x, _ = load_mnist("test", data_dir=args.data_dir)
        test_x = normalize(test_x[:1000] if args.quick else test_x)

        torch = None if args.no_torch else try_import_torch()
        with torch_threads(torch, args.threads):
            info["torch"] = args.threads if torch else None
            result = compare(args, torch, batches, test_x, rss)
        result["profile"] = profile_nanotorch(batches[:args.profile_steps])
    rss["end"] = peak_rss_mb()
    result.update(seconds_to_first_nanotorch_step=startup, peak_rss_mb=rss, threads=info, steps=args.steps,
                  repeats=args.repeats)
    report(result, args.out)
    return 0


if __name__ == "__main__":
    run(main)
