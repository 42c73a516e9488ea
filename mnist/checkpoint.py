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
    _check_config_types(path, state["config"])
    return state


# The type of each value of mnist.train's config (its flags, as config.json and the checkpoint
# record them), as JSON holds it: a hand-edited "4" for batch_size would otherwise reach the
# command line's checks as the string it is ("--batch-size 4 differs from the run's 4").
# Keys not listed here are not checked (tests/test_cli_errors.py checks that every flag is listed).
CONFIG_TYPES = {**dict.fromkeys(("epochs", "batch_size", "seed", "threads", "log_every", "checkpoint_every"), "int"),
                **dict.fromkeys(("lr", "momentum", "max_lr", "pct_start", "clip", "dropout"), "number"),
                "anneal_strategy": "str", "limit": "int or None", "data_dir": "str or None", "out": "str or None"}
_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", type(None): "null",
               list: "a list", dict: "an object"}
_EXPECTED = {"int": "an integer", "number": "a number", "str": "a string", "int or None": "an integer or null",
             "str or None": "a string or null"}


def _check_config_types(path, config):
    """A ValueError naming the first value of ``config`` whose type is not the one mnist.train writes
    (CONFIG_TYPES): the field, the value as JSON writes it, and its JSON type."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: its config {json.dumps(config)} is {_JSON_TYPES.get(type(config), 'not JSON')}, "
                         "not the object of flags that mnist.train writes")
    for key, kind in CONFIG_TYPES.items():
        if key not in config:
            continue
        value = config[key]
        ok = (value is None and kind.endswith("or None")
              or isinstance(value, str) and kind.startswith("str")
              or isinstance(value, int) and not isinstance(value, bool) and kind.startswith(("int", "number"))
              or isinstance(value, float) and kind == "number")
        if not ok:
            raise ValueError(f"{path}: its config's {key} {json.dumps(value)} is {_JSON_TYPES.get(type(value))}, "
                             f"not {_EXPECTED[kind]} as mnist.train writes it (a hand-edited checkpoint?)")


def _is_count(v):
    """An int >= 0 (JSON has no other kind of count; a bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# The entries of a scheduler's state that say how far along its schedule it is (a fresh one is at step 0).
SCHEDULER_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_is_initial")
# Entries of the scheduler's state that checkpoints written before 2026-11-27 lack (they came with Adam
# and the other schedulers); a fresh scheduler's values are the ones those runs had (SGD's momentum, and
# a scheduler past its construction).
SCHEDULER_ADDED_LATER = ("use_beta1", "_is_initial")


def check_schedule(path, arrays, scheduler):
    """A ValueError unless the scheduler state in ``arrays`` (a checkpoint's, keyed "scheduler.<path>")
    is the schedule that ``scheduler``, freshly built from the run's recipe and step count, follows,
    at some step: the same entries (each missing or extra one named), and the same values but for
    SCHEDULER_PROGRESS's. Loading a state is an update of the scheduler's attributes (PyTorch's
    load_state_dict too): a missing entry would keep the fresh value, an edited one would change
    the schedule, and the run would not be the one the checkpoint began."""
    fresh = flatten_state_dict(scheduler.state_dict(), prefix="scheduler.")
    saved = {k: v for k, v in arrays.items() if k.startswith("scheduler.")}

    def entry(key):                               # "scheduler._last_lr[]" -> "_last_lr"
        return key[len("scheduler."):].split(".")[0].split("[")[0].rstrip("~{}")
    missing = [k for k in fresh if k not in saved and entry(k) not in SCHEDULER_ADDED_LATER]
    extra = [k for k in saved if k not in fresh]
    if missing or extra:
        what = (f"lacks {listed(missing)}" if missing else
                f"holds {listed(extra)}, which this run's {type(scheduler).__name__} has not")
        raise ValueError(f"{path}: its scheduler state {what}: not a checkpoint that mnist.train wrote")
    _refuse_changed(path, saved, {k: v for k, v in fresh.items() if entry(k) not in SCHEDULER_PROGRESS})


# The entries of an optimizer's param group that change as it trains: the lr and momentum the scheduler
# writes at every step, and the parameters' indices. The rest (OneCycleLR's max_lr, min_lr, ..., which its
# phases read, and SGD's dampening, nesterov, maximize, ...) are the recipe's.
GROUP_PROGRESS = ("lr", "momentum", "params")


def check_optimizer_groups(path, arrays, optimizer):
    """A ValueError unless the saved param groups hold the recipe's values, as ``optimizer``, freshly
    built from the recipe (and its scheduler), holds them: an edited max_lr or nesterov would change the
    run as an edited schedule would (check_schedule). Entries missing from the file are left to
    optimizer.load_state_dict, which names them."""
    fresh = flatten_state_dict({"param_groups": optimizer.state_dict()["param_groups"]}, prefix="optimizer.")
    _refuse_changed(path, {k: v for k, v in arrays.items() if k.startswith("optimizer.param_groups")},
                    {k: v for k, v in fresh.items() if k.split("].", 1)[-1].split("[")[0] not in GROUP_PROGRESS})


def _refuse_changed(path, saved, fresh):
    """A ValueError naming the first entry of ``fresh`` (flattened state, key -> array) whose saved value differs."""
    for key, value in fresh.items():
        if key in saved and not np.array_equal(saved[key], value):
            raise ValueError(f"{path}: its {key} {_shown(saved[key])} is not the {_shown(value)} that its recipe "
                             "builds: not a checkpoint that mnist.train wrote (edited?), and the run would not "
                             "follow its recipe")


def _shown(array):
    """An array of a flattened state as its value reads (20, 'cos', [0.004])."""
    return repr(array.tolist())


def load_checkpoint(path, model, optimizer, scheduler):
    """Restore model, optimiser and scheduler in place from save_checkpoint's file; returns the JSON state.
    Weights holding NaN or inf are refused, as load_model refuses them (mnist.train never saves such),
    and so is a scheduler state that is not ``scheduler``'s schedule (check_schedule): everything is
    checked before anything is restored."""
    arrays = load_npz(path)
    state = _state_of(path, arrays)
    weights = model_state_from(arrays)
    refuse_nonfinite(path, weights, ": not a checkpoint to resume (start a new run)")
    check_schedule(path, arrays, scheduler)
    check_optimizer_groups(path, arrays, optimizer)
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
