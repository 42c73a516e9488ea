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
import zipfile

import numpy as np

from mnist.model import build_model


def write_atomic(path, write, mode="wb"):
    """Call write(file) on a temp file in path's folder, then os.replace it into place: readers see
    the old file or the new one, never half of one; on any error the temp file is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)           # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz_atomic(path, arrays):
    write_atomic(path, lambda f: np.savez(f, **arrays))


def save_json_atomic(path, obj):
    write_atomic(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def load_npz(path):
    """Every array of an .npz, loaded without pickle; a clear error for a missing or corrupt file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
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


def checkpoint_state(path):
    """The JSON state of a checkpoint.npz (step, scheduler, config, ...), without loading a model."""
    arrays = load_npz(path)
    if "state" not in arrays:
        raise ValueError(f"{path} holds model weights only (no optimiser or schedule state): "
                         "--resume needs a checkpoint.npz written by mnist.train")
    return json.loads(str(arrays["state"]))


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
