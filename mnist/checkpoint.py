"""Checkpoints as NumPy .npz files: written atomically (mnist/files.py), read with allow_pickle=False.

model.npz       the model's state_dict, keyed as PyTorch keys it ('0.0.weight', '0.1.running_mean', ...)
checkpoint.npz  everything a resumed run needs, under prefixes:
                  model/<key>         the model's state_dict
                  optimizer.<path>    the optimiser's state_dict (momentum buffers, param groups) and
                  scheduler.<path>    the scheduler's, flattened by nanotorch.optim.flatten_state_dict
                  state               JSON text: step, random generator, config (plain values, no pickle)
"""
import json
import os
import zipfile

import numpy as np

from nanotorch.nn import StateDictMismatch
from nanotorch.optim import flatten_state_dict, unflatten_state_dict
from mnist.cli import listed
from mnist.files import write_atomic
from mnist.model import build_model


def save_npz_atomic(path, arrays):
    write_atomic(path, lambda f: np.savez(f, **arrays))


def save_json_atomic(path, obj):
    write_atomic(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def load_npz(path):
    """Every array of an .npz, loaded without pickle; a clear error for a missing or corrupt file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.isdir(path):                     # (a run folder, as mnist.evaluate takes one)
        raise IsADirectoryError(f"{path} is a folder: give the file in it, its model.npz (or checkpoint.npz); "
                                "mnist.evaluate.model_path(folder) picks the one a run has")
    if not zipfile.is_zipfile(path):            # (else NumPy reads a text file as "pickled data")
        raise ValueError(f"{path} is not a readable .npz file: not the zip of arrays that np.savez writes "
                         "(as model.npz and checkpoint.npz are)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz checkpoint ({e})") from e


def nonfinite_keys(state):
    """The keys of a state_dict whose floating arrays hold NaN or inf (weights that would only predict one class)."""
    return [k for k, v in state.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]


def refuse_nonfinite(path, state, what_next=""):
    """A ValueError naming the keys of ``state`` (loaded from ``path``) that hold NaN or inf, if any."""
    bad = nonfinite_keys(state)
    if bad:
        raise ValueError(f"{path}: the weights hold NaN or inf ({', '.join(bad)}){what_next}")


def save_model(path, model):
    save_npz_atomic(path, model.state_dict())


def model_state_from(arrays):
    """The model's state_dict from either a model.npz or a checkpoint.npz."""
    if any(k.startswith("model/") for k in arrays):
        return {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    return arrays


def load_model(path, dropout=0.15):
    """Build the seed network and load weights from model.npz or checkpoint.npz (mismatches raise,
    and so do weights holding NaN or inf, which would only predict one class)."""
    model = build_model(dropout=dropout)
    state = model_state_from(load_npz(path))
    load_weights(path, model, state)
    refuse_nonfinite(path, state)
    return model.eval()


def load_weights(path, model, state):
    """model.load_state_dict(state), its mismatch error naming the file the state came from (in one
    line if the file holds none of the model's keys: then it is not this model's at all)."""
    own = list(model.state_dict())
    if not set(own) & set(state):
        raise StateDictMismatch(f"{path} holds none of the seed network's arrays ({listed(own)}); it holds "
                                f"{listed(state) or 'no arrays'}: not a model.npz or checkpoint.npz of mnist.train")
    try:
        model.load_state_dict(state)
    except StateDictMismatch as e:
        raise StateDictMismatch(f"{path}: {e}") from None


def save_checkpoint(path, model, optimizer, scheduler, state):
    """model, optimiser and scheduler state_dicts as arrays, plus JSON-able ``state`` (step, config, ...)."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update(flatten_state_dict(optimizer.state_dict(), prefix="optimizer."))
    arrays.update(flatten_state_dict(scheduler.state_dict(), prefix="scheduler."))
    arrays["state"] = np.array(json.dumps(state))
    save_npz_atomic(path, arrays)


def checkpoint_state(path):
    """The JSON state of a checkpoint.npz (step, config, ...), without loading a model."""
    return _state_of(path, load_npz(path))


STATE_KEYS = ("rng", "step", "total_steps", "train_seconds", "config")


def _state_of(path, arrays):
    if "state" not in arrays:
        raise ValueError(f"{path} holds model weights only (no optimiser or schedule state): "
                         "--resume needs a checkpoint.npz written by mnist.train")
    try:
        state = json.loads(str(arrays["state"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its 'state' entry is not the JSON that mnist.train writes ({e})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: its 'state' entry lacks {', '.join(missing)}: not a checkpoint of mnist.train")
    step, total = state["step"], state["total_steps"]
    if not (isinstance(step, int) and isinstance(total, int) and 0 <= step <= total):
        raise ValueError(f"{path}: step {step!r} of total_steps {total!r} is not a step of the run")
    seconds, switches, threads = state["train_seconds"], state.get("thread_switches", []), state.get("threads")
    if not (_is_count(seconds) or isinstance(seconds, float) and 0 <= seconds < float("inf")):
        raise ValueError(f"{path}: its train_seconds {seconds!r} is not a number of seconds")
    if not (isinstance(switches, list) and all(isinstance(s, list) and len(s) == 2 and all(map(_is_count, s))
                                               for s in switches)):
        raise ValueError(f"{path}: its thread_switches {switches!r} is not a list of [step, threads] pairs")
    if not (threads is None or _is_count(threads) and threads >= 1):
        raise ValueError(f"{path}: its threads {threads!r} is not a thread count")
    return state


def _is_count(v):
    """An int >= 0 (JSON has no other kind of count; a bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def load_checkpoint(path, model, optimizer, scheduler):
    """Restore model, optimiser and scheduler in place from save_checkpoint's file; returns the JSON state.
    Weights holding NaN or inf are refused, as load_model refuses them (mnist.train never saves such)."""
    arrays = load_npz(path)
    state = _state_of(path, arrays)
    weights = model_state_from(arrays)
    refuse_nonfinite(path, weights, ": not a checkpoint to resume (start a new run)")
    load_weights(path, model, weights)
    for name, part in (("optimizer", optimizer), ("scheduler", scheduler)):
        saved = unflatten_state_dict(arrays, prefix=f"{name}.")
        try:
            part.load_state_dict(saved)
        except (KeyError, TypeError, ValueError, NotImplementedError) as e:
            raise ValueError(f"{path}: the {name}'s state does not fit this run's {type(part).__name__} "
                             f"({type(e).__name__}: {e})") from None
    if scheduler.last_epoch != state["step"]:          # (each training step steps the schedule once)
        raise ValueError(f"{path}: its step {state['step']} is not its schedule's, which has taken "
                         f"{scheduler.last_epoch} steps: not a checkpoint that mnist.train wrote")
    return state
