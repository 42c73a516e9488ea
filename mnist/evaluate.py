"""Evaluate a trained model on the MNIST test set: overall and per-class accuracy, confusion matrix.

    python -m mnist.evaluate RUN_DIR_OR_CHECKPOINT [--data-dir DIR] [--batch-size 64] [--threads N]

A run directory is scored by its model.npz, or by its checkpoint.npz if the run was interrupted.
"""
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

import nanotorch as nt
from mnist.checkpoint import load_model
from mnist.cli import check_counts, run
from mnist.data import load_mnist, normalize


def predict_logits(model, x, batch_size=64, threads=None):
    """x: (N, 1, 28, 28) normalised float -> logits (N, 10), in eval mode (running BatchNorm stats).

    Under no_grad the layers keep nothing, so batches can go through the same model in several
    threads at once (``threads``, default: 2, or 1 on a 1-core machine), each with a one-thread BLAS
    and its kernels on its own core (only the thread that called nanotorch.set_num_threads spreads
    a kernel over threads: nanotorch/threads.py).
    The default of 64 is the fastest batch on the 2-core machine (two threads,
    ``python -m benchmarks.epoch --threads 2`` on the Zen 5, 2026-11-29: 28,161 images/s at 16,
    37,362 at 32, 44,350 at 64, 42,364 at 128, 37,717 at 256; about half the best speed at 1000
    in an earlier run): enough images to spread each call's overhead (about 150 us a batch) and
    to fill the vector lanes of the 7x7 and 4x4 blocks' pass (kernels/winograd_small.py: groups
    of 16 float32 images), few enough that each layer's output stays near the core.
    """
    threads = threads or min(2, os.cpu_count() or 1)
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    was_training = model.training
    model.eval()
    try:
        with nt.no_grad():
            if threads == 1 or len(batches) == 1:
                return np.concatenate([model(b) for b in batches])
            with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
                return np.concatenate(list(pool.map(model, batches)))
    finally:
        model.train(was_training)


def evaluate(model, images, labels, batch_size=64, threads=None):
    """images: (N, 28, 28) uint8, labels: (N,) -> dict with accuracy, per_class_accuracy, confusion, ...

    confusion[t, p] counts test images of true class t predicted as p.
    """
    logits = predict_logits(model, normalize(images), batch_size, threads)
    pred = logits.argmax(axis=1)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"accuracy": float((pred == labels).mean()), "per_class_accuracy": per_class.tolist(),
            "confusion": confusion, "predictions": pred, "logits": logits}


def model_path(path):
    """The file to score: path itself, or in a run directory its model.npz, else (a run that was
    interrupted before it finished) its checkpoint.npz."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder (a run folder, or its model.npz / checkpoint.npz)")
    if not os.path.isdir(path):
        return path
    model, checkpoint = os.path.join(path, "model.npz"), os.path.join(path, "checkpoint.npz")
    if os.path.exists(model):
        return model
    if os.path.exists(checkpoint):
        print(f"note: {path} has no model.npz (the run did not finish): using its checkpoint.npz", file=sys.stderr)
        return checkpoint
    inner = runs_inside(path)
    if inner:                                   # runs/ itself, say, where runs/<date-time> was meant
        hint = f"it holds {len(inner)} run folder(s): pass one of them, such as {inner[-1]}"
    elif not os.listdir(path):
        hint = f"train into it first with python -m mnist.train --out {path}"
    else:
        hint = "it is not a finished run, nor one stopped after a checkpoint"
    raise FileNotFoundError(f"{path} holds neither model.npz nor checkpoint.npz: {hint}")


def runs_inside(folder, files=("model.npz", "checkpoint.npz")):
    """The sub-folders of ``folder`` that hold one of ``files``, sorted by name: the runs in runs/."""
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if any(os.path.isfile(os.path.join(folder, name, f)) for f in files)]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m mnist.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("path", help="a run directory (its model.npz, else its checkpoint.npz) or an .npz file")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the MNIST files (default: $NANOTORCH_DATA/mnist or the cache)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads evaluating batches side by side (default: 2, or 1 on a 1-core machine)")
    args = ap.parse_args(argv)
    check_counts(ap, args, ("batch_size", "threads"))          # (threads None: the default)
    try:
        model = load_model(model_path(args.path))
        images, labels = load_mnist("test", data_dir=args.data_dir)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    r = evaluate(model, images, labels, args.batch_size, args.threads)
    print(f"test accuracy: {100 * r['accuracy']:.2f}% ({int((r['predictions'] == labels).sum())}/{len(labels)})")
    for digit, acc in enumerate(r["per_class_accuracy"]):
        print(f"  digit {digit}: {100 * acc:6.2f}%  ({int(r['confusion'][digit].sum())} images)")
    print("confusion matrix (rows: the true digit, columns: the predicted one):")
    print("     " + "".join(f"{d:>6}" for d in range(10)))
    for digit, row in enumerate(r["confusion"]):
        print(f"  {digit}  " + "".join(f"{int(v):>6}" for v in row))
    return 0


if __name__ == "__main__":
    run(main)
