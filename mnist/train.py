"""Train the seed network on MNIST: python -m mnist.train [--epochs 1] [--seed 0] [--out DIR] ...

The recipe (every default below): batch 4; SGD with momentum, whose lr and momentum a OneCycle
schedule sets at every step (lr 0.004 = max_lr / 25 up to max_lr 0.1 over the first 25% of the
steps, then a cosine down to 4e-7; momentum 0.95 -> 0.85 -> 0.95); gradient-norm clipping at 1.0;
dropout 0.15; one epoch. SGD's own lr 0.001 and momentum 0.9 (--lr, --momentum) are overridden by
the schedule as soon as it is built, as in PyTorch. One training step reads like PyTorch's:

    logits = model(x); loss = criterion(logits, y)            # forward
    optimizer.zero_grad(); model.backward(criterion.backward())  # backward, by hand
    clip_grad_norm_(params, 1.0); optimizer.step(); scheduler.step()

The run directory (--out, or runs/<date-time>, with -2, -3, ... added if another run took that
name in the same second) gets model.npz, checkpoint.npz (for --resume), metrics.json, log.csv,
layers.csv (LayerWatch), config.json and the pictures of mnist.visualize. config.json and the
checkpoint record the folder as "out", named as the command line named it (runs/<date-time>,
--out, or --resume's folder): relative to the working directory unless given as an absolute path.
A new run never writes into a folder that holds a run: one run claims a folder by creating its
config.json, which only one process can. While a run trains, it also holds its folder
(mnist.files.FolderLock on RUN_DIR/train.lock, released as it ends, however it ends, even killed):
a --resume of that folder started meanwhile stops at once, naming the run that holds it.

--resume CHECKPOINT continues that run exactly as it was configured: the recipe flags (those of
RECIPE, and --limit) may be left out or repeated with the same values, but not changed (a new
run changes the recipe); output flags (--out, --threads, --log-every, ...) may differ. log.csv
and layers.csv are cut back to the checkpoint's step, then appended to (in another --out, each
starts with the checkpoint folder's rows up to that step, if that folder has the file; a run
from before layers.csv existed starts it at the checkpoint's step); a log whose header is not
the columns this run writes is refused before anything is written.
"""
import argparse
import contextlib
import csv
import json
import logging
import math
import os
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

import nanotorch as nt
from nanotorch import nn, optim
from nanotorch.nn.utils import clip_grad_norm_
from mnist.checkpoint import (checkpoint_state, load_checkpoint, nonfinite_keys, save_checkpoint, save_json_atomic,
                              save_model)
from mnist.cli import check_counts, keep_running_without_readers, listed
from mnist.data import iterate_batches, load_mnist, normalize, num_batches
from mnist.evaluate import evaluate, runs_inside
from mnist.files import FolderLock, csv_rows, write_atomic, write_new
from mnist.model import build_model, count_parameters
from mnist.summary import layer_names

RECIPE = dict(batch_size=4, lr=0.001, momentum=0.9, max_lr=0.1, pct_start=0.25, anneal_strategy="cos",
              clip=1.0, dropout=0.15, epochs=1, seed=0)
RESUMED_AS_SAVED = (*RECIPE, "limit")      # what --resume takes from the checkpoint and won't let change


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Stopped(KeyboardInterrupt):
    """Training stopped by a signal; ``signum`` gives the exit status 128 + signum, as the shell's."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopAtStepBoundary:
    """Ctrl-C (or SIGTERM, as `kill` and `timeout` send) asks the loop to stop after the current step,
    so that a checkpoint is saved and never half-updated; a second one interrupts at once.
    ``after`` says what the first one waits for (the pictures at the end wait for the one being drawn),
    ``at_once`` what the second one means; either may change as the work under the handler does.
    A signal the process was started ignoring (``trap '' INT``, or a job a script starts with ``&``,
    which the shell starts ignoring SIGINT) stays ignored, as Python itself leaves it: no handler is
    installed for it."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, after="this step (or the evaluation under way), with a checkpoint",
                 at_once="stopping at once: what was not in a checkpoint is lost"):
        self.requested = None                      # the signal that asked, once one has
        self.after, self.at_once = after, at_once

    def __enter__(self):
        ignored = [s for s in self.SIGNALS if signal.getsignal(s) == signal.SIG_IGN]
        self.previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS if s not in ignored}
        return self

    def _handler(self, signum, frame):
        if self.requested:
            self._say(self.at_once)
            raise Stopped(signum)
        self.requested = signum
        self._say(f"{signal.Signals(signum).name}: stopping after {self.after}; again to stop at once")

    @staticmethod
    def _say(text):
        """Straight to stderr's file descriptor (a print here could interrupt one under way, which Python
        refuses); nothing if its reader has gone."""
        try:
            os.write(2, f"\n{text}\n".encode())
        except OSError:
            pass

    def __exit__(self, *exc):
        for s, previous in self.previous.items():
            signal.signal(s, previous)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m mnist.train", description="Train the seed CNN on MNIST.")
    r = RECIPE
    ap.add_argument("--epochs", type=int, default=r["epochs"])
    ap.add_argument("--batch-size", type=int, default=r["batch_size"])
    ap.add_argument("--lr", type=float, default=r["lr"], help="SGD's lr (the schedule overrides it)")
    ap.add_argument("--momentum", type=float, default=r["momentum"],
                    help="SGD's momentum (overridden by the schedule, which cycles it 0.95 -> 0.85 -> 0.95)")
    ap.add_argument("--max-lr", type=float, default=r["max_lr"], help="OneCycle peak learning rate")
    ap.add_argument("--pct-start", type=float, default=r["pct_start"], help="OneCycle warm-up fraction")
    ap.add_argument("--anneal-strategy", choices=("cos", "linear"), default=r["anneal_strategy"])
    ap.add_argument("--clip", type=float, default=r["clip"], help="max gradient norm (0 turns clipping off)")
    ap.add_argument("--dropout", type=float, default=r["dropout"])
    ap.add_argument("--seed", type=int, default=r["seed"])
    ap.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    ap.add_argument("--data-dir", default=None, help="folder with the MNIST files "
                    "(default: $NANOTORCH_DATA/mnist, else ~/.cache/nanotorch/mnist; downloaded if missing)")
    ap.add_argument("--out", default=None, help="run directory (default: runs/<timestamp>)")
    ap.add_argument("--resume", default=None, metavar="CHECKPOINT",
                    help="continue from a checkpoint.npz (or the run folder holding it)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="threads (default 2, or 1 on a 1-core machine): the big kernels spread over them "
                         "(nanotorch/threads.py); the same bits on any count, and a run moves to one thread "
                         "while another process holds a core")
    ap.add_argument("--log-every", type=int, default=50, help="steps between log.csv rows")
    ap.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoint.npz saves")
    ap.add_argument("--no-plots", action="store_true", help="skip the pictures at the end")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    resume = args.resume
    if resume and os.path.isdir(resume):                 # a run folder stands for its checkpoint, as in mnist.evaluate
        if not os.path.exists(os.path.join(resume, "checkpoint.npz")):
            finished = os.path.exists(os.path.join(resume, "model.npz"))
            inner = runs_inside(resume, ("checkpoint.npz",))      # runs/ itself, say
            hint = (" (its run finished: model.npz is there)" if finished else
                    f" (it holds {len(inner)} run folder(s): resume one of them, such as --resume {inner[-1]})"
                    if inner else "")
            ap.error(f"--resume {resume}: the folder holds no checkpoint.npz{hint}")
        resume = args.resume = os.path.join(resume, "checkpoint.npz")
    if args.resume:              # the run's own options; a recipe flag given again must repeat them
        try:
            saved = checkpoint_state(args.resume)["config"]
        except (ValueError, OSError, KeyError) as e:
            ap.error(f"--resume {args.resume}: {e}")
        missing = [f"--{k.replace('_', '-')}" for k in RESUMED_AS_SAVED if k not in saved]
        if missing:
            ap.error(f"--resume {args.resume}: the checkpoint does not record {', '.join(missing)} "
                     "(written by another program or an older mnist.train?), so the run cannot be continued exactly")
        # (not its --out: a resumed run writes next to its checkpoint unless --out says otherwise)
        ap.set_defaults(**{k: v for k, v in saved.items() if k in vars(args) and k != "out"})
        args = ap.parse_args(argv)
        args.resume = resume
        changed = [f"--{k.replace('_', '-')} {getattr(args, k)} differs from the run's {saved[k]}"
                   for k in RESUMED_AS_SAVED if getattr(args, k) != saved[k]]
        if changed:
            ap.error("--resume continues the run as it was configured: " + "; ".join(changed) +
                     " (start a new run to change the recipe)")
    check_counts(ap, args, ("epochs", "batch_size", "threads", "log_every", "checkpoint_every"))
    if args.seed < 0:                            # (NumPy's generators take non-negative seeds only)
        ap.error(f"--seed must be >= 0, got {args.seed}")
    if args.seed >= 2**64:                       # (nanotorch.manual_seed takes torch.manual_seed's seeds)
        ap.error(f"--seed must be < 2**64, got {args.seed}")
    for flag, ok, what in (("max_lr", lambda v: v > 0, "> 0"), ("lr", lambda v: v >= 0, ">= 0"),
                           ("momentum", lambda v: v >= 0, ">= 0"),
                           ("clip", lambda v: v >= 0, ">= 0 (0: no clipping)"),
                           ("pct_start", lambda v: 0 <= v < 1, "in [0, 1)"),
                           ("dropout", lambda v: 0 <= v <= 1, "in [0, 1]")):
        value = getattr(args, flag)              # (NaN fails every comparison, so it is refused too)
        if not (math.isfinite(value) and ok(value)):
            ap.error(f"--{flag.replace('_', '-')} must be a finite number {what}, got {value}")
    if args.out == "":
        ap.error("--out must name a folder (leave it out for runs/<date-time>)")
    if args.limit is not None and args.limit < args.batch_size:
        ap.error(f"--limit must be at least the batch size ({args.batch_size})")
    return args


def build_trainer(recipe, total_steps):
    """The seed model (initial weights from recipe.seed), its loss, and SGD under OneCycleLR.

    ``recipe`` has the attributes of parse_args(): seed, dropout, lr, momentum, max_lr, pct_start,
    anneal_strategy. The optimiser gets the model's parameters flattened into one vector (views of
    it, nn.utils.flatten_parameters), so SGD and clipping are single vector operations.
    """
    nt.manual_seed(recipe.seed)                    # initial weights, then dropout masks
    model = build_model(dropout=recipe.dropout)
    model[0][0].input_requires_grad = False        # the images need no gradient (nor do they in PyTorch)
    flat = nn.utils.flatten_parameters(model.parameters())
    optimizer = optim.SGD([flat], lr=recipe.lr, momentum=recipe.momentum)
    scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.max_lr, total_steps=total_steps,
                                              pct_start=recipe.pct_start, anneal_strategy=recipe.anneal_strategy)
    return model, nn.CrossEntropyLoss(), optimizer, scheduler


def train_step(model, criterion, optimizer, scheduler, x, y, clip):
    """One step of the recipe on a batch: x (N, 1, 28, 28) float32, y (N,) int64.

    Returns (loss, logits, grad_norm); raises TrainingDiverged before any update if the loss is not finite.
    """
    logits = model(x)
    loss = float(criterion(logits, y))
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss}")
    optimizer.zero_grad()
    model.backward(criterion.backward())
    grad_norm = float(clip_grad_norm_(optimizer.param_groups[0]["params"], clip)) if clip > 0 else float("nan")
    optimizer.step()
    scheduler.step()
    return loss, logits, grad_norm


class LayerWatch:
    """What one step did to each layer's weights, for layers.csv: a row per logged step.

    The layers are the top-level children of ``model`` that have a weight tensor, named as the
    summary names them (block1..block7, fc1, fc2); a layer's weights are its tensors of two or more
    dimensions (a conv block's kernel, a Linear layer's matrix), without BatchNorm's gamma and beta
    or biases. (gamma starts at 1: counted in, it would outweigh the kernel in every block,
    ||gamma||^2 = 4 against 1.5 in block1 and 28 against 9 in block7, and the ratios below would
    mostly tell how gamma moves.) For each layer, with w the weights before the step and w' after it:

        grad_norm     ||g||, the gradient the update used (clip_grad_norm_ has scaled it in place)
        weight_norm   ||w||
        update_ratio  ||w' - w|| / ||w||   (NaN if ||w|| = 0), whatever the optimizer; ~1e-3 is the
                      usual rule of thumb (much lower: the layer hardly learns; much higher: unstable)

    L2 norms over all the layer's weights, summed in float64. ``before()`` copies the weights (only
    before a logged step: the other steps pay nothing); the gradients are read where the layers
    wrote them (views of the flat vector, nn.utils.flatten_parameters): nothing else is copied.
    """
    STATS = ("grad_norm", "weight_norm", "update_ratio")

    def __init__(self, model):
        children = list(model) if isinstance(model, nn.Sequential) else [model]
        self.layers = [(name, [p for p in child.parameters() if p.data.ndim >= 2 and p.requires_grad])
                       for name, child in zip(layer_names(model), children)]
        self.layers = [(name, weights) for name, weights in self.layers if weights]
        self.columns = ["step", "epoch"] + [f"{name}_{stat}" for stat in self.STATS for name, _ in self.layers]

    def before(self):
        """A copy of every watched weight, taken before the step."""
        return [[p.data.copy() for p in weights] for _, weights in self.layers]

    def after(self, before):
        """The values of a row after the step (grad norms, weight norms, update ratios, each per layer)."""
        def norm(arrays):
            return math.sqrt(sum(float(np.dot(a, a)) for a in (np.ravel(x).astype(np.float64) for x in arrays)))
        grads, weights, ratios = [], [], []
        for (_, params), old in zip(self.layers, before):
            w = norm(old)
            grads.append(norm([p.grad for p in params]))
            weights.append(w)
            ratios.append(norm([p.data.astype(np.float64) - o for p, o in zip(params, old)]) / w if w > 0
                          else float("nan"))
        return grads + weights + ratios


class CsvLog:
    """log.csv (or another ``columns``: layers.csv): one row every --log-every steps. log.csv's: the
    window's mean loss and accuracy, and the logged step's own lr, momentum and gradient norm
    (before clipping; NaN with --clip 0).

    resume_step: continue the log of a run resumed from that step. Rows past it (written after the
    checkpoint, before a crash) and a last row cut before its line end are dropped first,
    atomically, so the steps keep increasing and every row is whole. (The
    first row after a resume averages only the steps since the checkpoint: windows are not saved.)
    resumed_log: the resumed run's log, when it is not ``path`` (--resume into another --out):
    the new log starts with its rows up to resume_step, if it exists (else, as for a run from
    before the file existed, it starts at resume_step). Its header must be ``columns`` (else
    ValueError, before anything is written: the new rows would go under other names).
    """
    COLUMNS = ["step", "epoch", "loss", "accuracy", "lr", "momentum", "grad_norm"]

    def __init__(self, path, resume_step=None, resumed_log=None, columns=COLUMNS):
        rows, self.last_loss = [], None            # last_loss: the last kept row's, when resuming
        source = path if resumed_log is None else resumed_log   # (copied: the rows kept go into a new file at path)
        if resume_step is not None:
            rows = self.resumed_rows(source, resume_step, columns)
        if rows:
            header, kept = rows[0], rows[1:]
            # written afresh (atomically), so that no row past the step, nor a cut one, stays behind
            write_atomic(path, lambda f: csv.writer(f).writerows(rows), mode="w", newline="")
            try:                                   # (6 significant digits, as written)
                self.last_loss = float(kept[-1][header.index("loss")]) if kept else None
            except ValueError:                     # a log edited by hand (or without a loss column, layers.csv):
                pass                               # no final loss, not a failed resume
        self.file = open(path, "a" if rows else "w", newline="")
        self.writer = csv.writer(self.file)
        if not rows:
            self.writer.writerow(columns)

    @staticmethod
    def resumed_rows(source, resume_step, columns):
        """The header and the rows up to resume_step of the log ``source`` that a resumed run continues
        ([] if there is no such file, or it holds no header): whole rows only (not a last one cut
        before its line end). ValueError if its header is not ``columns``."""
        if not os.path.exists(source):
            return []
        rows = [row for _, row in csv_rows(source)]
        if not rows:
            return []
        header = rows[0]
        if header != list(columns):
            missing, extra = [c for c in columns if c not in header], [c for c in header if c not in columns]
            differs = []
            if missing:
                differs.append(f"it lacks {listed(missing)}")
            if extra:
                differs.append(f"it has {listed(extra)}, which this run does not write")
            differs = "; ".join(differs) or "the same columns in another order"
            raise ValueError(f"{source}: its header is not the {len(columns)} columns mnist.train writes "
                             f"({differs}), so the resumed run's rows cannot be added to it: move it aside "
                             f"(the run's {os.path.basename(source)} then starts after step {resume_step})")
        return [header] + [r for r in rows[1:] if len(r) == len(header) and r[0].isdigit()
                           and int(r[0]) <= resume_step]

    def write(self, *row):
        self.writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        self.file.flush()

    def close(self):
        self.file.close()


RUN_FILES = ("config.json", "log.csv", "layers.csv", "checkpoint.npz", "model.npz", "metrics.json")


def check_run_dir(run_dir, resumed_dir):
    """A run directory is a new or empty folder, or, when resuming, the checkpoint's own folder:
    a new run into another run's folder would mix its files with the old run's. Checked at the
    start, before the data loads; claim_run_dir settles a race between two runs started at once."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"--out {run_dir} is a file, not a folder")
    if resumes_in_place(run_dir, resumed_dir):
        return
    held = [f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f))]
    if held:
        ckpt = os.path.join(run_dir, "checkpoint.npz")
        hint = f"continue it with --resume {ckpt}, or " if "checkpoint.npz" in held else ""
        raise ValueError(f"{run_dir} already holds a run ({', '.join(held)}): {hint}give another --out "
                         "(or delete that folder)")


def resumes_in_place(run_dir, resumed_dir):
    """Whether run_dir is resumed_dir, the folder of the checkpoint being resumed (None for a new run),
    which holds its run already."""
    return resumed_dir is not None and os.path.isdir(run_dir) and os.path.samefile(resumed_dir, run_dir)


def claim_run_dir(run_dir, config):
    """Make the run folder and claim it by creating its config.json, complete, which only one
    process can do (mnist.files.write_new): of two runs started into one folder at once, one gets
    it. Returns False if a run already holds the folder."""
    return write_new(os.path.join(run_dir, "config.json"), lambda f: json.dump(config, f, indent=2), mode="w")


LOCK_FILE = "train.lock"


def hold_run_dir(held, run_dir):
    """Hold run_dir until ``held`` (an ExitStack) closes: FolderInUse (a RuntimeError naming the run
    that holds it) if another run does. Where the folder cannot be locked, a note says so."""
    lock = held.enter_context(FolderLock(run_dir, "python -m mnist.train", LOCK_FILE))
    if not lock.held:
        print(f"note: {lock.why}: a second run into {run_dir} at the same time would not be stopped",
              file=sys.stderr)


def train(args):
    """Run the recipe described by ``args``; returns (run_dir, metrics dict). The run holds its folder
    while it runs (hold_run_dir), released as it returns or raises."""
    with contextlib.ExitStack() as held:
        return _train(args, held)


def _train(args, held):
    nt.set_num_threads(args.threads)
    threads = nt.get_num_threads()                       # set_num_threads caps n at Numba's thread count
    if threads < args.threads:
        print(f"note: --threads {args.threads}, but Numba has {threads} thread(s) here (the cores, "
              f"NUMBA_NUM_THREADS, or a forked process's one): running on {threads}, with the same results",
              file=sys.stderr)
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "quiet", "no_plots")}
    # The checkpoint's folder, named as the command line named it (relative if it was), as --out and
    # runs/<date-time> are: config.json and the checkpoint record the run folder so ("." from inside it).
    resumed_dir = (os.path.dirname(args.resume) or os.curdir) if args.resume else None
    default_dir = not args.out and not args.resume      # runs/<date-time>, or -2, -3, ... if that is taken
    run_dir = args.out or resumed_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if not default_dir:
        check_run_dir(run_dir, resumed_dir)
    if resumes_in_place(run_dir, resumed_dir):           # held before its checkpoint and logs are read (a
        hold_run_dir(held, run_dir)                      # second resume stops here, having written nothing)

    train_x, train_y = load_mnist("train", data_dir=args.data_dir)
    test_x, test_y = load_mnist("test", data_dir=args.data_dir)
    if args.limit:
        if args.limit > len(train_x):
            raise ValueError(f"--limit {args.limit} asks for more training images than the {len(train_x)} there are")
        train_x, train_y = train_x[:args.limit], train_y[:args.limit]

    steps_per_epoch = num_batches(len(train_x), args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    if args.pct_start * total_steps == 1:        # (a warm-up ending at step 0: PyTorch's formula divides by 0)
        raise ValueError(f"--pct-start {args.pct_start} of {total_steps} steps is a warm-up of one step, which "
                         "OneCycleLR cannot anneal over: choose another --pct-start")
    model, criterion, optimizer, scheduler = build_trainer(args, total_steps)
    step, train_seconds, switches, threads_before = 0, 0.0, [], None
    if args.resume:
        trained_for = checkpoint_state(args.resume)["total_steps"]
        if trained_for != total_steps:           # (checked first: load_checkpoint compares the schedules)
            raise ValueError(f"{args.resume} was trained for {trained_for} steps in all; with the same recipe "
                             f"this data gives {total_steps}: resume with the training set the run used (--data-dir)")
        state = load_checkpoint(args.resume, model, optimizer, scheduler)
        try:
            nt.default_generator().bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{args.resume}: its rng is not the state of nanotorch's random generator ({e})") from None
        step, train_seconds = state["step"], state["train_seconds"]
        switches = state.get("thread_switches", [])       # (checkpoints before they were saved: none)
        threads_before = state.get("threads")              # the count the run was on (older checkpoints: none)
    else:
        from mnist.summary import format_summary, summarize
        print(format_summary(summarize(model)))
    watch = LayerWatch(model)
    log_columns = {"log.csv": CsvLog.COLUMNS, "layers.csv": watch.columns}
    if args.resume:                                      # a log it cannot continue: refused before anything is written
        for name, columns in log_columns.items():
            CsvLog.resumed_rows(os.path.join(resumed_dir, name), step, columns)
    # Claim the folder only now (a run that fails its checks leaves none behind).
    in_place = resumes_in_place(run_dir, resumed_dir)
    if in_place:                                         # the checkpoint's folder: rewrite its config,
        config["out"] = run_dir                          # naming it (not the folder a copied run began in)
        save_json_atomic(os.path.join(run_dir, "config.json"), config)
    elif default_dir:                                    # runs/<date-time>, or -2, -3, ... if taken
        base, n = run_dir, 1
        while not claim_run_dir(run_dir, dict(config, out=run_dir)):   # the config names the folder taken
            n += 1
            run_dir = f"{base}-{n}"
        config["out"] = run_dir
    elif not claim_run_dir(run_dir, config):             # --out: another run took it since the check
        check_run_dir(run_dir, resumed_dir)              # (raises, naming what the folder holds)
        raise ValueError(f"{run_dir} was taken by another run as this one started: give another --out")
    if not in_place:                                     # (a resume in place holds its folder already)
        hold_run_dir(held, run_dir)
    if step == total_steps:                        # resumed from the checkpoint of a finished run
        print(f"{run_dir}: the run's {total_steps} steps are done; scoring it and writing its results")
    else:
        print(f"training on {len(train_x)} images, batch {args.batch_size}, {total_steps} steps, into {run_dir}")

    last_saved = (args.resume, step) if args.resume else None     # (path, step) of the last good checkpoint

    def checkpoint():
        """Save checkpoint.npz unless the model holds NaN or inf."""
        nonlocal last_saved
        if nonfinite_keys(model.state_dict()):
            print(f"\nnot saving a checkpoint at step {step}: the model holds NaN or inf", file=sys.stderr)
            return
        save_checkpoint(os.path.join(run_dir, "checkpoint.npz"), model, optimizer, scheduler, {
            "rng": nt.default_generator().bit_generator.state,
            "step": step, "total_steps": total_steps, "train_seconds": train_seconds, "config": config,
            "thread_switches": fallback.switches, "threads": fallback.settled})
        last_saved = (os.path.join(run_dir, "checkpoint.npz"), step)

    def stop_here():
        """After a Ctrl-C or SIGTERM, once the checkpoint is saved: say where to resume, and stop."""
        close_logs()
        if last_saved is None:
            print(f"\ninterrupted at step {step}/{total_steps}; no checkpoint was saved, "
                  "so there is nothing to resume", file=sys.stderr)
        else:
            ckpt, at = last_saved
            saved = f"saved {ckpt}" if at == step else f"the last checkpoint saved is {ckpt} (step {at})"
            print(f"\ninterrupted at step {step}/{total_steps}; {saved}\n"
                  f"resume with: python -m mnist.train --resume {ckpt}", file=sys.stderr)
        raise Stopped(stop.requested)

    # Resumed into another --out: the new log.csv and layers.csv start with the checkpoint folder's rows.
    def resumed_log(name):
        return os.path.join(resumed_dir, name) if args.resume and not in_place else None
    resume_step = step if args.resume else None
    log, layer_log = (CsvLog(os.path.join(run_dir, name), resume_step, resumed_log(name), columns)
                      for name, columns in log_columns.items())

    def close_logs():
        log.close()
        layer_log.close()

    def logged(s):
        """Whether step s (counted from 1) gets a row in log.csv and layers.csv."""
        return s % args.log_every == 0 or s == total_steps

    history, result = [], None
    # On a machine where another process holds a core, n threads run many times slower than one:
    # the run then goes on one thread, with the same results (nanotorch/threads.py).
    fallback = nt.threads.BusyFallback(threads, say=lambda note: tqdm.write(note, file=sys.stderr), step=step,
                                       switches=switches, threads_before=threads_before)
    model.train()
    with StopAtStepBoundary() as stop:
        for epoch in range(step // steps_per_epoch, args.epochs):
            bar = tqdm(total=steps_per_epoch, initial=step % steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                       disable=args.quiet, unit="step", mininterval=0.5)
            window_loss = window_correct = window_seen = 0
            started = time.perf_counter()
            fallback.restart()                     # (the last epoch's evaluation is not a step)
            for images, labels in iterate_batches(train_x, train_y, args.batch_size, args.seed, epoch,
                                                  start_batch=step % steps_per_epoch):
                group = optimizer.param_groups[0]
                lr, momentum = group["lr"], group["momentum"]    # this step's (the schedule moves on after it)
                weights_before = watch.before() if logged(step + 1) else None
                try:
                    loss, logits, grad_norm = train_step(model, criterion, optimizer, scheduler,
                                                         normalize(images), labels.astype(np.int64), args.clip)
                except TrainingDiverged as e:
                    close_logs()
                    kept = (f"the last good checkpoint is {last_saved[0]} (step {last_saved[1]})"
                            if last_saved else "no checkpoint had been saved yet")
                    raise TrainingDiverged(f"{e} at step {step + 1}. Training stopped; {kept}. "
                                           "Start a new run with a lower --max-lr, or with --clip on "
                                           "(--resume continues the same recipe).") from None
                step += 1
                fallback.step()
                bar.update(1)

                window_loss += loss * len(labels)
                window_correct += int((logits.argmax(axis=1) == labels).sum())
                window_seen += len(labels)
                if logged(step):
                    loss_avg, acc = window_loss / window_seen, window_correct / window_seen
                    log.write(step, epoch + 1, loss_avg, acc, lr, momentum, grad_norm)
                    layer_log.write(step, epoch + 1, *watch.after(weights_before))
                    history.append((step, loss_avg, acc))
                    rate = bar.format_dict["rate"]           # steps/s, recent; None before the bar's first refresh
                    speed = {} if rate is None else {"img_s": f"{rate * args.batch_size:.0f}"}
                    bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc:.3f}", lr=f"{lr:.4f}", **speed, refresh=False)
                    window_loss = window_correct = window_seen = 0
                if step % args.checkpoint_every == 0 or stop.requested:
                    now = time.perf_counter()
                    train_seconds, started = train_seconds + now - started, now
                    checkpoint()
                    fallback.restart()             # (saving is not a step)
                if stop.requested:
                    bar.close()
                    stop_here()
            train_seconds += time.perf_counter() - started
            bar.close()
            result = evaluate(model, test_x, test_y, threads=threads)
            print(f"epoch {epoch + 1}: test accuracy {100 * result['accuracy']:.2f}%")
            checkpoint()
            if stop.requested:                     # it came during the evaluation
                stop_here()
        if result is None:                         # resumed from the checkpoint of a finished run: score it
            result = evaluate(model, test_x, test_y, threads=threads)
            if not in_place:                       # another --out: a run folder holds its checkpoint.npz too
                checkpoint()
            if stop.requested:
                stop_here()
        close_logs()

        # A signal from here on lets the model and metrics be saved, then stops (before the pictures).
        stop.after = "the model and metrics are saved"
        save_model(os.path.join(run_dir, "model.npz"), model)
        images = args.epochs * len(train_x)        # (not step * batch size: an epoch's last batch may be short)
        metrics = {"test_accuracy": result["accuracy"], "per_class_accuracy": result["per_class_accuracy"],
                   "train_seconds": round(train_seconds, 3),
                   "images_per_second": round(images / max(train_seconds, 1e-9), 1),
                   "params": count_parameters(model), "epochs": args.epochs, "steps": step, "seed": args.seed,
                   "final_train_loss": history[-1][1] if history else log.last_loss,   # (a resumed finished run)
                   "thread_switches": fallback.switches}   # [step, threads] for each switch of the run
        save_json_atomic(os.path.join(run_dir, "metrics.json"), metrics)
        if stop.requested:
            pictures = "" if args.no_plots else f" (python -m mnist.visualize {run_dir} draws the pictures)"
            print(f"\ninterrupted as the run ended; the model and metrics are saved{pictures}", file=sys.stderr)
            raise Stopped(stop.requested)
        if not args.no_plots:                      # (its own handler, in place of this one until it returns)
            draw_pictures(run_dir, test_set=(test_x, test_y), evaluation=result)
    return run_dir, metrics


def draw_pictures(run_dir, test_set, evaluation):
    """The pictures of a saved run (mnist.visualize), from the test set and its evaluation at hand.

    A failure is a warning (the run itself is saved). Ctrl-C or SIGTERM stops after the picture being
    drawn, then raises Stopped. (Caught by a handler, the first signal is never raised inside matplotlib,
    which may turn a KeyboardInterrupt into a ValueError, or swallow it in a callback.)"""
    stop = StopAtStepBoundary(after="the picture being drawn (the model and metrics are saved)",
                              at_once="stopping at once (the model and metrics are saved)")
    try:
        with stop:
            from mnist.visualize import iter_pictures     # (matplotlib: half a second to load)
            if not stop.requested:
                for _ in iter_pictures(run_dir, test_set=test_set, evaluation=evaluation):
                    if stop.requested:
                        break
    except Stopped:                              # a second signal: stopped at once
        pass
    except (ValueError, OSError, RuntimeError) as e:
        if not stop.requested:                   # (else it may be the second signal, turned into an error)
            print(f"warning: the pictures were not drawn ({e}); python -m mnist.visualize {run_dir} "
                  "draws them again", file=sys.stderr)
    if stop.requested:
        print(f"\ninterrupted while drawing the pictures; the model and metrics are saved "
              f"(python -m mnist.visualize {run_dir} draws them)", file=sys.stderr)
        raise Stopped(stop.requested)


def main(argv=None):
    args = parse_args(argv)
    try:
        run_dir, m = train(args)
    except KeyboardInterrupt as e:                       # 130 for Ctrl-C, 143 for SIGTERM
        return 128 + getattr(e, "signum", signal.SIGINT)
    except (ValueError, OSError, RuntimeError) as e:    # TrainingDiverged, bad data, an unwritable --out, ...
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: test accuracy {100 * m['test_accuracy']:.2f}% after {m['epochs']} epoch(s), "
          f"{m['train_seconds']:.1f} s of training ({m['images_per_second']:.0f} images/s), "
          f"{m['params']} parameters, seed {m['seed']} -> {run_dir}")
    return 0


def exit_with(status):
    """sys.exit(status), except after a stop by Ctrl-C or SIGTERM (status 128 + the signal): then the
    process ends by that signal, as Python itself does after an uncaught Ctrl-C, so that a shell
    loop running several trainings stops too (a shell shows the status 128 + the signal either way).
    Everything is written by then (the log closed, the checkpoint saved); the streams are flushed."""
    signum = status - 128
    if signum in (signal.SIGINT, signal.SIGTERM):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(status)


if __name__ == "__main__":
    keep_running_without_readers()         # (`... | head` drops the rest of the output, not the run)
    exit_with(main())
