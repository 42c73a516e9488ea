"""Checkpoints as NumPy .npz files: written atomically, read with allow_pickle=False.

model.npz       the model's state_dict, keyed as PyTorch keys it ('0.0.weight', '0.1.running_mean', ...)
checkpoint.npz  everything a resumed run needs, under prefixes:
                  model/<key>         the model's state_dict
                  optim/buffer/<i>    the SGD momentum buffer of parameter i
                  state               JSON text: optimiser hyper-parameters, scheduler state, step,
                                      epoch, seed, config (plain values, no pickle)
"""
import json
import os
import tempfile

import numpy as np

from mnist.model import build_model


def save_npz_atomic(path, arrays):
    """Write arrays to path via a temp file in the same folder and os.replace: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path):
    """Every array of an .npz, loaded without pickle; a clear error for a missing or corrupt file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz checkpoint ({e})") from e


def save_model(path, model):
    save_npz_atomic(path, model.state_dict())


def model_state_from(arrays):
    """The model's state_dict from either a model.npz or a checkpoint.npz."""
    if any(k.startswith("model/") for k in arrays):
        return {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    return arrays


def load_model(path, dropout=0.15):
    """Build the seed network and load weights from model.npz or checkpoint.npz (mismatches raise)."""
    model = build_model(dropout=dropout)
    model.load_state_dict(model_state_from(load_npz(path)))
    return model.eval()


def save_checkpoint(path, model, optimizer, state):
    """model + optimiser momentum buffers + JSON-able ``state`` (scheduler, step, config, ...)."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, s in opt["state"].items():
        if s.get("momentum_buffer") is not None:
            arrays[f"optim/buffer/{i}"] = np.asarray(s["momentum_buffer"])
    groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
    arrays["state"] = np.array(json.dumps({**state, "optim_param_groups": groups}))
    save_npz_atomic(path, arrays)


def load_checkpoint(path, model, optimizer):
    """Restore model and optimiser in place from save_checkpoint's file; returns the JSON state."""
    arrays = load_npz(path)
    if "state" not in arrays:
        raise ValueError(f"{path} holds model weights only (no optimiser or schedule state): "
                         "--resume needs a checkpoint.npz written by mnist.train")
    model.load_state_dict(model_state_from(arrays))
    state = json.loads(str(arrays["state"]))
    buffers = {int(k.split("/")[-1]): v for k, v in arrays.items() if k.startswith("optim/buffer/")}
    optimizer.load_state_dict({"state": {i: {"momentum_buffer": b} for i, b in buffers.items()},
                               "param_groups": state.pop("optim_param_groups")})
    return state
